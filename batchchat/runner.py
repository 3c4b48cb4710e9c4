"""One job from start to finish: validate, send what is not yet answered, write the table.

This is the glue between the stages; each stage lives in its own module. Everything that can be
checked is checked before the first request: the job, the input's columns and every row's
messages (one cheap pass over the file), the output's columns.

A file run holds the output's lock for its whole length and keeps every finished request in the
journal beside the output. The output table is assembled from the input and the journal at the
end, so a run that was killed and started again writes exactly what one uninterrupted run would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .answers import AnswerCheck, Derived
from .client import ChatClient
from .cost import Budget
from .errors import AUTH, REDIRECT, FatalAPIError, InputChanged, Interrupted, JobError, RequestError, StorageError
from .files import OutputFiles
from .job import Endpoint, Job, load_job, shown_url
from .journal import Journal, MemoryStore, Scope
from .lock import OutputLock
from .passes import Plan, Rows, derived_columns, row_outcomes
from .passes import plan as make_plan
from .progress import Bar
from .prompts import RequestBuilder
from .records import ERROR, OK, PENDING, ChatRequest, RowOutcome
from .report import plural
from .scheduler import run_requests
from .sink import check_columns, output_batches, output_schema, to_frame, typed_output, write_output
from .source import ArrowSource, FileSource, TableSource, open_source
from .stats import RowTally, Stats, Summary
from .throttle import Throttle

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    Store = Journal | MemoryStore

T = TypeVar("T")
SHOWN_INVALID_ROWS = 5


@dataclass(frozen=True)
class RunResult:
    """What a run did: its summary, and the output file it wrote, or the frame (``run`` of a
    DataFrame)."""

    output: Path | None
    summary: Summary
    frame: pd.DataFrame | None = None

    @property
    def exit_code(self) -> int:
        """0 when every row is ok, 1 when some rows ended in error or were left pending (the
        cost cap stopped the run)."""
        return 0 if self.summary.errors == 0 and self.summary.pending == 0 else 1


class Observer(Protocol):
    """Receives a run's progress; the CLI draws a progress bar from it. Library code prints nothing."""

    def started(self, plan: Plan) -> None: ...

    def row_done(self, outcome: RowOutcome, stats: Stats) -> None: ...

    def stopping(self, grace_s: float) -> None: ...


class _Silent:
    def started(self, plan: Plan) -> None:
        pass

    def row_done(self, outcome: RowOutcome, stats: Stats) -> None:
        pass

    def stopping(self, grace_s: float) -> None:
        pass


def as_job(job: Job | str | os.PathLike[str] | None, settings: dict[str, Any]) -> Job:
    if isinstance(job, Job):
        if settings:
            raise TypeError("pass either a Job or settings, not both; load_job(path, **settings) merges them")
        return job
    return load_job(job, **settings)


# --- public API ---------------------------------------------------------------------------------


async def arun(
    job: Job | str | os.PathLike[str] | None = None, /, *, observer: Observer | None = None, **settings: Any
) -> RunResult:
    """Run a job: a ``Job``, a job file path, or settings such as ``input=``, ``model=``.

    Raises ``JobError`` before sending anything if the job cannot run, ``FatalAPIError`` if the API
    refuses every request, ``Interrupted`` after Ctrl-C or SIGTERM (finished work is kept).
    """
    job = as_job(job, settings)
    if job.input is None:
        raise JobError(f"no input: give the table with {job.names('input')} (or 'input' in a job file)")
    if job.output is None:
        raise JobError(f"no output: give a file with {job.names('output')} (or 'output' in a job file)")
    source = open_source(job.input, job.limit)
    typed = typed_output(job.output)
    schema = output_schema(source, derived_columns(job), typed)
    builder = RequestBuilder(job, source.columns, source.name)
    files = OutputFiles.of(job.output, job.names("output"))
    files.check()
    with OutputLock(job.output, job.names("output")):
        files.remove_stale_temps()
        if job.resume.restart:
            files.journal.unlink(missing_ok=True)
        journal = Journal(files.journal, journal_scope(job))
        try:
            return await _run_file(job, source, builder, journal, files, schema, observer or _Silent())
        finally:
            journal.close()


def run(
    job: Job | str | os.PathLike[str] | pd.DataFrame | None = None, /, *, observer: Observer | None = None,
    **settings: Any,
) -> RunResult:
    """``arun`` for code without an event loop, and for notebooks, whose loop is already running.
    Given a DataFrame, answers its rows and returns the frame with the summary (``result.frame``)."""
    if _is_frame(job):
        return run_sync(_run_frame(job, observer=observer, **settings))
    return run_sync(arun(job, observer=observer, **settings))  # type: ignore[arg-type]


async def arun_frame(frame: pd.DataFrame, /, *, observer: Observer | None = None, progress: bool = False,
                     journal: str | os.PathLike[str] | None = None, **settings: Any) -> pd.DataFrame:  # fmt: skip
    """Answer every row of a DataFrame; returns a copy with the outcome columns added, the run's
    summary in its ``attrs["batchchat"]``.

    ``progress=True`` draws a bar (in a notebook too). ``journal=PATH`` keeps every answer in that
    file as it comes, so calling again with the same settings resumes, paying nothing twice. An
    interrupt (Ctrl-C, the notebook's stop button) raises ``Interrupted`` carrying the rows
    answered so far: ``e.result.frame``.
    """
    result = await _run_frame(frame, observer=observer, progress=progress, journal=journal, **settings)
    assert result.frame is not None
    return result.frame


def run_frame(frame: pd.DataFrame, /, *, observer: Observer | None = None, progress: bool = False,
              journal: str | os.PathLike[str] | None = None, **settings: Any) -> pd.DataFrame:  # fmt: skip
    """``arun_frame`` that works in scripts and inside a running loop (a Jupyter cell) alike."""
    return run_sync(arun_frame(frame, observer=observer, progress=progress, journal=journal, **settings))


def _is_frame(value: object) -> bool:
    import pandas as pd

    return isinstance(value, pd.DataFrame)


async def _run_frame(frame: pd.DataFrame, /, *, observer: Observer | None = None, progress: bool = False,
                     journal: str | os.PathLike[str] | None = None, **settings: Any) -> RunResult:  # fmt: skip
    if not _is_frame(frame):
        kind = type(frame).__name__
        raise TypeError(
            f"run_frame takes a pandas DataFrame, not a {kind}; for a list of prompts, "
            "pd.DataFrame({'prompt': prompts}); for a Series, series.to_frame('prompt')"
        )
    for key in ("input", "output"):
        if settings.get(key) is not None:
            raise JobError(f"{key}= is not used by run_frame, which reads and returns a DataFrame; use run() for files")
    job = load_job(None, **settings)
    derived = derived_columns(job)
    columns = [str(c) for c in frame.columns]
    check_columns(columns, "the DataFrame", [name for name, _ in derived.columns()])
    builder = RequestBuilder(job, columns, "the DataFrame")
    source = ArrowSource(_frame_table(frame, builder.columns), "the DataFrame")
    bar = Bar(notebook=True) if progress else None
    watcher = observer or bar or _Silent()
    if journal is None:
        return await _frame_rows(job, frame, source, builder, derived, MemoryStore(), watcher, bar)
    journal_path = Path(journal)
    with OutputLock(journal_path, "journal="):  # journal.lock beside it
        store = Journal(journal_path, journal_scope(job))
        try:
            return await _frame_rows(job, frame, source, builder, derived, store, watcher, bar)
        finally:
            store.close()


async def _frame_rows(job: Job, frame: pd.DataFrame, source: TableSource, builder: RequestBuilder, derived: Derived,
                      store: Store, observer: Observer, bar: Bar | None) -> RunResult:  # fmt: skip
    started = time.perf_counter()
    stats = Stats(0, dict(job.prices))
    stopped = False
    rows: Rows | None = None
    try:
        if len(frame):
            plan, rows = make_plan(job, source, builder, store, None, endpoint_name(job))
            observer.started(plan)
            stats.total = plan.to_send
            if plan.to_send:
                if isinstance(store, Journal):
                    store.begin()
                await _send(job, source, builder, rows, store, stats, observer, handle_signals=False)
    except FatalAPIError as fatal:
        raise FatalAPIError(f"stopped: {fatal}", fatal.error) from None
    except (asyncio.CancelledError, KeyboardInterrupt):
        stopped = True  # the rows answered so far are the caller's all the same
    finally:
        if bar is not None:
            bar.close()
    tally = RowTally()
    outcomes: list[RowOutcome] = []
    extras: dict[str, list[Any]] = {name: [] for name, _ in derived.columns()}
    if rows is not None:
        for _, batch_outcomes, batch_extras in row_outcomes(source, rows, builder, store, tally, derived):
            outcomes += batch_outcomes
            for name, values in batch_extras.items():
                extras[name] += values
    summary = stats.summary(time.perf_counter() - started, tally, streamed=job.stream)
    answers = to_frame(frame, outcomes, extras, derived, builder.fanout)
    answers.attrs["batchchat"] = summary
    result = RunResult(None, summary, answers)
    if stopped:
        raise Interrupted(
            f"interrupted: {_finished(tally):,} of {plural(tally.rows, 'row')} answered; the frame with them (the "
            "others pending) is e.result.frame" + (", and the journal keeps them" if isinstance(store, Journal) else ""),
            result,
        )
    return result


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even where a loop already runs.

    Inside a running loop (Jupyter) the coroutine gets a fresh loop on a worker thread: blocking
    the notebook's own loop would deadlock it, and nesting loops is not allowed. Interrupting the
    notebook then cancels that loop's work, so no request goes on being sent (and paid) unseen.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    loops: list[asyncio.AbstractEventLoop] = []

    def in_thread() -> T:
        with asyncio.Runner() as runner:
            loops.append(runner.get_loop())
            return runner.run(coroutine)

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batchchat") as pool:
        future = pool.submit(in_thread)
        try:
            return future.result()
        except KeyboardInterrupt:
            if loops:
                loops[0].call_soon_threadsafe(_cancel_all, loops[0])
            concurrent.futures.wait([future])
            stopped = future.exception()
            if isinstance(stopped, Interrupted):  # the run kept what it had: hand that over
                raise stopped from None
            raise


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()


def journal_scope(job: Job) -> Scope:
    """A stored answer is reused only for a request to the same endpoint, judged by the same checks."""
    return Scope(job.endpoint.identity, job.answers.signature)


# --- a file run ---------------------------------------------------------------------------------


async def _run_file(
    job: Job,
    source: TableSource,
    builder: RequestBuilder,
    journal: Journal,
    files: OutputFiles,
    schema: pa.Schema,
    observer: Observer,
) -> RunResult:
    output = files.output
    if isinstance(source, FileSource):
        source.seal()  # what every pass must read again
    plan, rows = make_plan(job, source, builder, journal, output, endpoint_name(job))
    observer.started(plan)
    stats = Stats(plan.to_send, dict(job.prices))
    derived = derived_columns(job)

    def write() -> RowTally:
        tally = RowTally()
        assembled = row_outcomes(source, rows, builder, journal, tally, derived)
        restore = source.for_output if typed_output(files.target) else None
        unchanged = source.verify if isinstance(source, FileSource) else None  # before it replaces the output
        write_output(files, output_batches(assembled, schema, builder.fanout, restore), schema, unchanged)
        return tally

    started = time.perf_counter()
    try:
        ending = "done"
        if plan.to_send:
            journal.begin()
            ending = await _send(job, source, builder, rows, journal, stats, observer, handle_signals=True)
    except FatalAPIError as fatal:
        if len(journal):
            tally = write()
            kept = f"{_finished(tally):,} of {plural(tally.rows, 'row')} finished and are in {output}; the others have status 'pending'"
        else:
            kept = "no row finished, so nothing was written"
        raise FatalAPIError(f"stopped: {fatal}; {kept}", fatal.error) from None
    wall = time.perf_counter() - started
    resume = f"run the same command again to resume: what {journal.path} holds is not sent again"
    if ending == "at once":
        raise Interrupted(f"stopped at once; the output was not written; {resume}",
                          RunResult(None, stats.summary(wall, RowTally(), streamed=job.stream)))  # fmt: skip
    tally = write()
    summary = stats.summary(wall, tally, cost_cap=job.max_cost, budget_stopped=ending == "budget", streamed=job.stream)
    if ending == "stopped":
        raise Interrupted(
            f"stopped: {_finished(tally):,} of {plural(tally.rows, 'row')} finished and are in {output}; "
            f"the other {tally.statuses[PENDING]:,} have status 'pending'; {resume}",
            RunResult(output, summary),
        )
    return RunResult(output, summary)


def _finished(tally: RowTally) -> int:
    return tally.statuses[OK] + tally.statuses[ERROR]


# --- sending ------------------------------------------------------------------------------------


async def _send(
    job: Job,
    source: TableSource,
    builder: RequestBuilder,
    rows: Rows,
    store: Store,
    stats: Stats,
    observer: Observer,
    *,
    handle_signals: bool,
) -> str:
    """Send what is still to send. Returns "done", "budget" (the cost cap stopped dispatching;
    in-flight requests finished), "stopped" (Ctrl-C or SIGTERM: in-flight requests had a grace
    period) or "at once" (a second signal); raises FatalAPIError.

    Each finished request goes to the store at once (the journal flushes it), so whatever
    happens next, it is never sent again.
    """

    def on_outcome(outcome: RowOutcome) -> None:
        store.add(outcome)
        stats.add(outcome)
        observer.row_done(outcome, stats)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signalled = at_once = False
    budget = Budget(job.max_cost, dict(job.prices), stats.counters) if job.max_cost is not None else None
    judge = AnswerCheck(job.answers)
    check = judge if job.answers.checked else None

    def prior(key: str) -> RowOutcome | None:
        """A stored answer the checks reject, with re-asks to go: they start from it."""
        if not (store.stale(key) or store.unfinished(key)):
            return None
        stored = store.get_many((key,)).get(key)
        return stored if stored is not None and judge.rejudge(stored).status == PENDING else None

    changed: list[InputChanged] = []

    def requests() -> Iterator[ChatRequest]:
        """An input that changes stops the taking of requests: those in flight finish and are
        journaled, then the run raises."""
        try:
            yield from builder.requests(source, rows.keys, rows.sends)
        except InputChanged as e:
            changed.append(e)
            stop.set()

    limits = job.limits
    throttle = Throttle(limits.concurrency, rpm=limits.rpm, tpm=limits.tpm)
    async with open_client(job) as client:
        sending = asyncio.ensure_future(
            run_requests(
                requests(),
                client.complete,
                throttle=throttle,
                max_attempts=job.retry.max_attempts,
                on_outcome=on_outcome,
                counters=stats.counters,
                describe_fatal=partial(_fatal_message, job),
                stop=stop,
                check=check,
                invalid_retries=job.answers.invalid_retries,
                budget=budget,
                recall=lambda key: store.get_many((key,)).get(key),
                keep=store.add,
                prior=prior,
                turn_key=builder.turn_key,
            )
        )

        def on_signal() -> None:
            nonlocal at_once, signalled
            if signalled:  # the second: stop now
                at_once = True
                sending.cancel()
                return
            signalled = True
            stop.set()
            observer.stopping(job.resume.grace_s)
            loop.call_later(job.resume.grace_s, sending.cancel)

        installed = _catch_signals(loop, on_signal) if handle_signals else []
        try:
            try:
                await sending
            except* FatalAPIError as group:
                raise group.exceptions[0] from None
            except* StorageError as group:  # the journal could not keep an answer: stop at once
                raise group.exceptions[0] from None
        except asyncio.CancelledError:
            if not signalled:
                raise  # cancelled from outside: not ours to handle
        finally:
            _restore_signals(loop, installed)
    if changed:
        raise changed[0]
    if at_once:
        return "at once"
    if signalled:
        return "stopped"
    return "budget" if budget is not None and budget.exhausted else "done"


def _catch_signals(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> list[tuple[int, Any]]:
    """Ctrl-C and SIGTERM stop the run gracefully, where this thread may handle signals. Returns
    each signal with the handler it had, which ``_restore_signals`` puts back."""
    if threading.current_thread() is not threading.main_thread():
        return []
    installed = []
    for number in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(number)
        try:
            loop.add_signal_handler(number, callback)
        except (NotImplementedError, RuntimeError):  # not on this platform or loop
            continue
        installed.append((number, previous))
    return installed


def _restore_signals(loop: asyncio.AbstractEventLoop, installed: list[tuple[int, Any]]) -> None:
    """asyncio resets a signal to its default on removal; the caller's handler (the CLI's, which
    turns SIGTERM into a clean stop while the output is written) is put back instead."""
    for number, previous in installed:
        loop.remove_signal_handler(number)
        if previous is not None:
            signal.signal(number, previous)


def endpoint_name(job: Job) -> str:
    endpoint = job.endpoint
    if endpoint.provider == "sim":
        return "the built-in simulator"
    shown = shown_url(str(endpoint.base_url))
    return f"{shown} (from {endpoint.base_url_env})" if endpoint.base_url_env else shown


def auth_problem(endpoint: Endpoint, error: RequestError) -> str:
    """What a 401 means and what to do: a key was refused, or none was sent."""
    variable = endpoint.api_key_env
    if endpoint.api_key() is None:
        ask = f"set the variable {variable}" if variable else "name the variable holding a key with --api-key-env"
        return f"wants an API key, and none was sent ({error.message}); {ask}"
    fix = f"set a valid key in {variable}" if variable else "pass a valid key"
    return f"refused the API key ({error.message}); {fix}"


def _fatal_message(job: Job, error: RequestError) -> str:
    where = endpoint_name(job)
    if error.unreachable:
        return (
            f"nothing answers at {where} ({error.message}); check the URL ({job.names('base_url')}, "
            f"{job.names('provider')}) and that the server is running, then run again"
        )
    if error.error_type == REDIRECT:
        return f"{where} {error.message.split(': ', 1)[-1]}"
    if error.error_type == AUTH:
        return f"{where} {auth_problem(job.endpoint, error)} and run again"
    return f"{where} says the account has no credit ({error.message}); add credit or raise the spending limit, then run again"


@asynccontextmanager
async def open_client(job: Job) -> AsyncIterator[ChatClient]:
    """The client for the job's endpoint; provider ``sim`` first starts a simulator in this loop."""
    simulator = None
    base_url = job.endpoint.base_url
    if job.endpoint.provider == "sim":
        from .simulator import Simulator  # the web server is imported only when it is used

        config = job.simulator
        if job.answers.labels and not config.labels:  # a simulated labeler answers from the job's labels
            config = replace(config, labels=job.answers.labels)
        simulator = Simulator(config)
        base_url = await simulator.start()
    assert base_url is not None
    try:
        async with ChatClient(
            base_url,
            job.endpoint.api_key(),
            concurrency=job.limits.concurrency,
            timeout_s=job.retry.timeout_s,
            stream=job.stream,
            stream_usage=job.endpoint.stream_usage,
        ) as client:
            yield client
    finally:
        if simulator is not None:
            await simulator.close()


def _frame_table(frame: pd.DataFrame, columns: list[str]) -> Any:
    """The columns the prompts need, as Arrow; the rest of the frame is never converted."""
    import pyarrow as pa

    arrays = []
    for name in columns:
        series = frame[next(c for c in frame.columns if str(c) == name)]
        try:
            arrays.append(pa.array(series, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise JobError(f"DataFrame column '{name}' cannot be read as prompts: {e}") from None
    return pa.table(arrays, names=columns)
