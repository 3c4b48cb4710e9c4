"""One job from start to finish: validate, send every row, write the table, summarise.

This is the glue between the stages; each stage lives in its own module. Everything that can be
checked is checked before the first request: the job, the input's columns and every row's
messages (one cheap pass over the file), the output's columns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .client import ChatClient
from .errors import AUTH, FatalAPIError, JobError, RequestError
from .job import Job, load_job
from .prompts import RequestBuilder
from .records import ChatRequest, InvalidRow, RowOutcome
from .scheduler import run_requests
from .simulator import Simulator
from .sink import Outcomes, check_columns, output_batches, output_schema, to_frame, write_output
from .source import ArrowSource, TableSource, open_source
from .stats import Stats, Summary
from .throttle import Throttle

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")
SHOWN_INVALID_ROWS = 5


@dataclass(frozen=True)
class Plan:
    """What a job is about to do, known before its first request."""

    source: str
    rows: int
    invalid_rows: int
    first_invalid: tuple[int, ...]  # 1-based row numbers of the first few
    endpoint: str
    output: Path | None


@dataclass(frozen=True)
class RunResult:
    output: Path | None
    summary: Summary

    @property
    def exit_code(self) -> int:
        """0 when every row is ok, 1 when some rows ended in error."""
        return 0 if self.summary.errors == 0 else 1


class Observer(Protocol):
    """Receives a run's progress; the CLI draws a progress bar from it. Library code prints nothing."""

    def started(self, plan: Plan) -> None: ...

    def row_done(self, outcome: RowOutcome, stats: Stats) -> None: ...


class _Silent:
    def started(self, plan: Plan) -> None:
        pass

    def row_done(self, outcome: RowOutcome, stats: Stats) -> None:
        pass


def as_job(job: Job | str | os.PathLike[str] | None, settings: dict[str, Any]) -> Job:
    if isinstance(job, Job):
        if settings:
            raise TypeError("pass either a Job or settings, not both; load_job(path, **settings) merges them")
        return job
    return load_job(job, **settings)


async def arun(
    job: Job | str | os.PathLike[str] | None = None, /, *, observer: Observer | None = None, **settings: Any
) -> RunResult:
    """Run a job: a ``Job``, a job file path, or settings such as ``input=``, ``model=``."""
    job = as_job(job, settings)
    if job.input is None:
        raise JobError("no input: pass -i/--input FILE or set 'input' in the job file")
    if job.output is None:
        raise JobError("no output: pass -o/--output FILE or set 'output' in the job file")
    source = open_source(job.input)
    schema = output_schema(source)
    output = job.output

    def write(outcomes: Outcomes) -> None:
        write_output(output, output_batches(source, outcomes, schema), schema)

    outcomes, summary = await _execute(job, source, output, observer or _Silent(), keep_finished=write)
    write(outcomes)
    return RunResult(output, summary)


def run(
    job: Job | str | os.PathLike[str] | None = None, /, *, observer: Observer | None = None, **settings: Any
) -> RunResult:
    """``arun`` for code without an event loop, and for notebooks, whose loop is already running."""
    return run_sync(arun(job, observer=observer, **settings))


async def arun_frame(frame: pd.DataFrame, /, *, observer: Observer | None = None, **settings: Any) -> pd.DataFrame:
    """Answer every row of a DataFrame; returns a copy with the outcome columns added."""
    for key in ("input", "output"):
        if settings.get(key) is not None:
            raise JobError(f"{key}= is not used by run_frame, which reads and returns a DataFrame; use run() for files")
    job = load_job(None, **settings)
    columns = [str(c) for c in frame.columns]
    check_columns(columns, "the DataFrame")
    builder = RequestBuilder(job, columns, "the DataFrame")
    source = ArrowSource(_frame_table(frame, builder.columns), "the DataFrame")
    outcomes, _ = await _execute(job, source, None, observer or _Silent(), builder)
    return to_frame(frame, outcomes)


def run_frame(frame: pd.DataFrame, /, *, observer: Observer | None = None, **settings: Any) -> pd.DataFrame:
    """``arun_frame`` that works in scripts and inside a running loop (a Jupyter cell) alike."""
    return run_sync(arun_frame(frame, observer=observer, **settings))


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even where a loop already runs.

    Inside a running loop (Jupyter) the coroutine gets a fresh loop on a worker thread: blocking
    the notebook's own loop would deadlock it, and nesting loops is not allowed.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batchchat") as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _execute(
    job: Job,
    source: TableSource,
    output: Path | None,
    observer: Observer,
    builder: RequestBuilder | None = None,
    keep_finished: Callable[[Outcomes], None] | None = None,
) -> tuple[Outcomes, Summary]:
    """Send every row. If cancelled (Ctrl-C) or stopped by a fatal API error, ``keep_finished``
    gets the rows finished so far, so that paid-for answers are never thrown away."""
    builder = builder or RequestBuilder(job, source.columns, source.name)
    plan = _plan(job, source, builder, output)
    observer.started(plan)
    outcomes = Outcomes(plan.rows)
    stats = Stats(plan.rows)

    def on_outcome(outcome: RowOutcome) -> None:
        outcomes.add(outcome)
        stats.add(outcome)
        observer.row_done(outcome, stats)

    started = time.perf_counter()
    limits = job.limits
    throttle = Throttle(limits.concurrency, rpm=limits.rpm, tpm=limits.tpm)
    try:
        try:
            async with open_client(job) as client:
                await run_requests(
                    _requests(source, builder),
                    client.complete,
                    throttle=throttle,
                    max_attempts=job.retry.max_attempts,
                    on_outcome=on_outcome,
                    counters=stats.counters,
                    describe_fatal=partial(_fatal_message, job),
                )
        except* FatalAPIError as group:
            fatal = group.exceptions[0]
            assert isinstance(fatal, FatalAPIError)
            if keep_finished is not None and stats.done:
                keep_finished(outcomes)
            raise FatalAPIError(_kept_message(fatal, stats.done, plan.rows, output), fatal.error) from None
    except asyncio.CancelledError:
        if keep_finished is not None:
            keep_finished(outcomes)
        raise
    return outcomes, stats.summary(time.perf_counter() - started)


def _fatal_message(job: Job, error: RequestError) -> str:
    where = "the built-in simulator" if job.endpoint.provider == "sim" else job.endpoint.base_url
    if error.error_type == AUTH:
        key = job.endpoint.api_key_env
        fix = f"set a valid key in {key}" if key else "pass a key with --api-key-env NAME"
        return f"{where} refused the API key ({error.message}); {fix} and run again"
    return f"{where} says the account has no credit ({error.message}); add credit or raise the spending limit, then run again"


def _kept_message(fatal: FatalAPIError, done: int, rows: int, output: Path | None) -> str:
    if output is None:
        return f"stopped: {fatal}"
    if done:
        return f"stopped: {fatal}. {done:,} of {rows:,} rows finished and are in {output}; the others have status 'pending'"
    return f"stopped: {fatal}. No row finished, so nothing was written"


def _plan(job: Job, source: TableSource, builder: RequestBuilder, output: Path | None) -> Plan:
    """One pass over every row: finds bad messages cells and empty prompts before any request."""
    rows = 0
    invalid: list[int] = []
    for batch in source.batches():
        for item in builder.build(batch, rows, with_keys=False):
            if isinstance(item, InvalidRow):
                invalid.append(item.row + 1)
        rows += batch.num_rows
    if rows == 0:
        raise JobError(f"{source.name} has no rows (only a header, or nothing); there is nothing to send")
    endpoint = "the built-in simulator" if job.endpoint.provider == "sim" else str(job.endpoint.base_url)
    return Plan(source.name, rows, len(invalid), tuple(invalid[:SHOWN_INVALID_ROWS]), endpoint, output)


def _requests(source: TableSource, builder: RequestBuilder) -> Iterator[ChatRequest | InvalidRow]:
    start = 0
    for batch in source.batches():
        yield from builder.build(batch, start)
        start += batch.num_rows


@asynccontextmanager
async def open_client(job: Job) -> AsyncIterator[ChatClient]:
    """The client for the job's endpoint; provider ``sim`` first starts a simulator in this loop."""
    simulator: Simulator | None = None
    base_url = job.endpoint.base_url
    if job.endpoint.provider == "sim":
        simulator = Simulator(job.simulator)
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
