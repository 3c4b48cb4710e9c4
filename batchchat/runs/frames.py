"""Running a job on a pandas DataFrame, in a script or a notebook: the frame comes back with the
outcome columns added, and the run's summary in its ``attrs["batchchat"]``.

Only the columns the prompts need are converted to Arrow; the rest of the frame is never touched.
Answers are kept in memory, or in a journal file when one is named, so calling again resumes.
An interrupt (Ctrl-C in a script, a notebook's stop button) stops the run as it stops a file
run: no new requests, and those in flight have the grace period to finish, since they are paid
for; the frame then comes back with what was answered (``Interrupted.result.frame``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from ..core.errors import FatalAPIError, Interrupted, JobError
from ..core.records import RowOutcome
from ..core.sync import run_sync
from ..core.words import plural
from ..execute.base import Ending, Executor
from ..execute.pipeline import RunResult, Stages, finished, open_store
from ..input.source import ArrowSource
from ..job.jobfile import load_job
from ..job.spec import Job
from ..output.progress import Bar, Observer, Silent
from ..output.sink import to_frame
from ..plan.plan import Setup
from ..store.journal import JournalSet, MemoryStore, Store
from ..store.lock import OutputLock
from ..store.stats import RowTally
from . import runfile
from .engines import executor_for

if TYPE_CHECKING:
    import pandas as pd

SOURCE_NAME = "the DataFrame"


def run(job: Job | str | os.PathLike[str] | pd.DataFrame | None = None, /, *, observer: Observer | None = None,
        **settings: Any) -> RunResult:  # fmt: skip
    """``batchchat.run``: a job on files (``runfile.run``); or, given a DataFrame, its rows answered
    and the frame returned with the summary (``result.frame``)."""
    if is_frame(job):
        return run_sync(frame_result(job, observer=observer, **settings))
    return runfile.run(job, observer=observer, **settings)  # type: ignore[arg-type]


def is_frame(value: object) -> TypeGuard[pd.DataFrame]:
    pandas = sys.modules.get("pandas")  # a DataFrame means pandas is loaded; importing it costs 0.1-0.2 s
    return pandas is not None and isinstance(value, pandas.DataFrame)


async def arun_frame(frame: pd.DataFrame, /, *, observer: Observer | None = None, progress: bool = False,
                     journal: str | os.PathLike[str] | None = None, **settings: Any) -> pd.DataFrame:  # fmt: skip
    """Answer every row of a DataFrame; returns a copy with the outcome columns added, the run's
    summary in its ``attrs["batchchat"]``.

    ``progress=True`` draws a bar (in a notebook too). ``journal=PATH`` keeps every answer in that
    file as it comes, so calling again with the same settings resumes, paying nothing twice. An
    interrupt (Ctrl-C, the notebook's stop button) raises ``Interrupted`` carrying the rows
    answered so far: ``e.result.frame``.
    """
    result = await frame_result(frame, observer=observer, progress=progress, journal=journal, **settings)
    assert result.frame is not None
    return result.frame


def run_frame(frame: pd.DataFrame, /, *, observer: Observer | None = None, progress: bool = False,
              journal: str | os.PathLike[str] | None = None, **settings: Any) -> pd.DataFrame:  # fmt: skip
    """``arun_frame`` that works in scripts and inside a running loop (a Jupyter cell) alike."""
    return run_sync(arun_frame(frame, observer=observer, progress=progress, journal=journal, **settings))


async def frame_result(frame: pd.DataFrame, /, *, observer: Observer | None = None, progress: bool = False,
                       journal: str | os.PathLike[str] | None = None, executor: Executor | None = None,
                       **settings: Any) -> RunResult:  # fmt: skip
    """The run of a DataFrame, its frame in ``result.frame``."""
    if not is_frame(frame):
        kind = type(frame).__name__
        raise TypeError(
            f"run_frame takes a pandas DataFrame, not a {kind}; for a list of prompts, "
            "pd.DataFrame({'prompt': prompts}); for a Series, series.to_frame('prompt')"
        )
    for key in ("input", "output"):
        if settings.get(key) is not None:
            raise JobError(f"{key}= is not used with a DataFrame, which is the input and comes back with the answers; "
                           "to run files, pass input= (and output=) without a DataFrame")  # fmt: skip
    job = load_job(None, **settings)
    if job.limit is not None:  # a trial on the first rows: they come back, as a file run writes only them
        frame = frame.iloc[: job.limit]
    setup = Setup.of(job, [str(c) for c in frame.columns], SOURCE_NAME)
    source = ArrowSource.from_frame(frame, setup.builder.columns, SOURCE_NAME)
    bar = Bar(notebook=True) if progress else None
    watcher = observer or bar or Silent()
    if job.batch.enabled and journal is None:
        raise JobError("batch_api= needs journal=PATH: the provider's batches outlive this call, and the journal is "
                       "how a later call collects them rather than paying for them again")  # fmt: skip
    executor = executor or executor_for(job, handle_signals=True)  # Ctrl-C in a script: a graceful stop
    if journal is None:
        return await _frame_rows(job, frame, source, setup, MemoryStore(), watcher, bar, executor)
    journal_path = Path(journal)
    with OutputLock(journal_path, "journal="):  # journal.lock beside it
        store = open_store(job, journal_path, journal_path.with_name(journal_path.name + ".parts"))
        try:
            return await _frame_rows(job, frame, source, setup, store, watcher, bar, executor)
        finally:
            store.close()


async def _frame_rows(job: Job, frame: pd.DataFrame, source: ArrowSource, setup: Setup, store: Store,
                      observer: Observer, bar: Bar | None, executor: Executor) -> RunResult:  # fmt: skip
    stages = Stages(job, setup, source, store, observer)
    stopped = False
    planned = False
    try:
        if len(frame):
            observer.started(stages.plan(None))
            planned = True
            stopped = await stages.execute(executor) in (Ending.STOPPED, Ending.AT_ONCE)
    except FatalAPIError as fatal:
        raise FatalAPIError(f"stopped: {job.endpoint.refusal(fatal.error, job.names)}", fatal.error) from None
    except (asyncio.CancelledError, KeyboardInterrupt):
        stopped = True  # the rows answered so far are the caller's all the same
    finally:
        if bar is not None:
            bar.close()
    tally = RowTally()
    derived = setup.derived
    outcomes: list[RowOutcome] = []
    extras: dict[str, list[Any]] = {name: [] for name, _ in derived.columns()}
    if planned:
        for _, batch_outcomes, batch_extras in stages.assemble(tally):
            outcomes += batch_outcomes
            for name, values in batch_extras.items():
                extras[name] += values
    summary = stages.summary(tally)
    answers = to_frame(frame, outcomes, extras, derived, setup.builder.fanout)
    answers.attrs["batchchat"] = summary
    result = RunResult(None, summary, answers, ending=stages.ending)
    if stopped:
        raise Interrupted(
            f"interrupted: {finished(tally):,} of {plural(tally.rows, 'row')} answered; the frame with them (the "
            "others pending) is e.result.frame" + (", and the journal keeps them" if isinstance(store, JournalSet) else ""),
            result,
        )
    return result
