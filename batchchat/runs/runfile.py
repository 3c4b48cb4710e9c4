"""Running a job on files: check everything, send what is not yet answered, write the table.

Everything that can be checked is checked before the first request: the job, the input's columns
and every row's messages (the plan's one cheap pass over the file), the output's columns.

A file run holds the output's lock for its whole length and keeps every finished request in the
journal beside the output. The output table is assembled from the input and the journal at the
end, so a run that was killed and started again writes exactly what one uninterrupted run would.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any

from ..core.errors import FatalAPIError, Interrupted, JobError, MissingKey
from ..core.records import PENDING
from ..core.sync import run_sync
from ..core.words import plural
from ..execute.base import Elsewhere, Ending, Executor
from ..execute.pipeline import RunResult, Stages, finished, open_store
from ..input.source import FileSource, TableSource, open_source
from ..job.jobfile import load_job
from ..job.spec import Job
from ..output.progress import Observer, Silent
from ..output.sink import Sink, output_batches, output_schema, sink_for
from ..plan.plan import Setup
from ..store.files import OutputFiles
from ..store.journal import JournalSet
from ..store.lock import OutputLock
from ..store.stats import RowTally
from .engines import executor_for

if TYPE_CHECKING:
    import pyarrow as pa


def as_job(job: Job | str | os.PathLike[str] | None, settings: dict[str, Any]) -> Job:
    if job is not None and not isinstance(job, Job | str | os.PathLike):
        kind = type(job).__name__
        if kind == "DataFrame":
            raise TypeError("arun takes a job file's path or a Job; for a DataFrame, await arun_frame(df, ...) "
                            "(or batchchat.run(df, ...))")  # fmt: skip
        raise TypeError(
            f"run takes a job file's path, a Job or a pandas DataFrame, not a {kind}; for a list of prompts, "
            "run(pd.DataFrame({'prompt': prompts}), ...); for a Series, series.to_frame('prompt')"
        )
    if isinstance(job, Job):
        if settings:
            raise TypeError("pass either a Job or settings, not both; load_job(path, **settings) merges them")
        return job
    return load_job(job, **settings)


def every_problem(missing: MissingKey, job: Job) -> JobError:
    """A missing key, with what is wrong with the input (``job`` was loaded without the key):
    a user who fixed one should not then meet the other."""
    try:
        source = open_source(job.required("input"), job.limit)
        Setup.of(job, source.columns, source.name)
    except JobError as problem:
        return JobError(f"this job has 2 problems:\n  - {problem}\n  - {missing}")
    return missing


async def arun(job: Job | str | os.PathLike[str] | None = None, /, *, observer: Observer | None = None,
               executor: Executor | None = None, **settings: Any) -> RunResult:  # fmt: skip
    """Run a job: a ``Job``, a job file path, or settings such as ``input=``, ``model=``.

    ``executor`` answers the requests (by default the live engine, from this process). Raises
    ``JobError`` before sending anything if the job cannot run, ``FatalAPIError`` if the API
    refuses every request, ``Interrupted`` after Ctrl-C or SIGTERM (finished work is kept).
    """
    try:
        job = as_job(job, settings)
    except MissingKey as missing:  # raised only in loading a job file or settings, never by a Job given
        path = job if not isinstance(job, Job) else None
        raise every_problem(missing, load_job(path, check_key=False, **settings)) from None
    source = open_source(job.required("input"), job.limit)
    output = job.required("output")
    setup = Setup.of(job, source.columns, source.name)
    files = OutputFiles.of(output, job.names("output"))
    sink = sink_for(files)
    schema = output_schema(source, setup.derived, sink.typed)
    files.check()
    with OutputLock(output, job.names("output")):
        files.remove_stale_temps()
        if job.resume.restart:
            # before anything is deleted: it opens the store as the run will, so a --reuse the
            # restart would break (the output's own journal) is refused here too
            _no_batches_left_running(job, files)
            files.journal.unlink(missing_ok=True)
            shutil.rmtree(files.parts, ignore_errors=True)
        journal = open_store(job, files.journal, files.parts)
        try:
            executor = executor or executor_for(job, handle_signals=True)
            return await _run_file(job, source, setup, journal, files, sink, schema, observer or Silent(), executor)
        finally:
            journal.close()


def run(job: Job | str | os.PathLike[str] | None = None, /, *, observer: Observer | None = None,
        **settings: Any) -> RunResult:  # fmt: skip
    """``arun`` for code without an event loop, and for notebooks, whose loop is already running.
    (``batchchat.run`` takes a DataFrame too: ``frames.run``.)"""
    return run_sync(arun(job, observer=observer, **settings))


def _keep_whole_output(job: Job, sink: Sink, output: object, rows: int) -> None:
    """A trial on the first rows (``limit``) must not replace an output that holds more rows: the
    rows it would drop were paid for. (One batchchat cannot read holds no rows of ours.)"""
    held = sink.count_rows()
    if held is not None and held > rows:
        raise JobError(
            f"the output {output} holds {plural(held, 'row')}, and this run, limited to the first input rows "
            f"({job.names('limit')}), would write {rows:,}: it would drop rows already answered. Run without "
            f"{job.names('limit')} (what is answered is not sent again), or write the trial elsewhere "
            f"({job.names('output')})"
        )


def _no_batches_left_running(job: Job, files: OutputFiles) -> None:
    """Forgetting the journal must not leave provider batches running, billed and unwatched."""
    if not files.journal.exists():
        return
    journal = open_store(job, files.journal, None, read_only=True)
    try:
        running = Elsewhere.of(journal).running
    finally:
        journal.close()
    if running:
        names = job.names
        raise JobError(
            f"{names('restart')} would forget {plural(len(running), 'provider batch', 'provider batches')} still "
            f"running for this output (billed, and then unwatched): collect them with {names('batch_api')}, or "
            f"cancel them with {names('batch_api')} {names('cancel')}, first"
        )


def _again(job: Job) -> str:
    """How to resume, said to whoever made the job: a command line, or a library call."""
    again = "run the same command again" if job.names("restart").startswith("-") else "call again with the same settings"
    if job.resume.restart:  # with it, the journal would be discarded again and everything paid twice
        again += f" without {job.names('restart')}"
    return again


async def _run_file(job: Job, source: TableSource, setup: Setup, journal: JournalSet, files: OutputFiles, sink: Sink,
                    schema: pa.Schema, observer: Observer, executor: Executor) -> RunResult:  # fmt: skip
    output = files.output
    if isinstance(source, FileSource):
        source.seal()  # what every pass must read again
    stages = Stages(job, setup, source, journal, observer)
    plan = stages.plan(output)
    if job.limit is not None:
        _keep_whole_output(job, sink, output, plan.rows)
    observer.started(plan)
    fanout = setup.builder.fanout

    def write() -> RowTally:
        tally = RowTally()
        restore = source.for_output if sink.typed else None
        unchanged = source.verify if isinstance(source, FileSource) else None  # before it replaces the output
        sink.replace(output_batches(stages.assemble(tally), schema, fanout, restore), schema, unchanged)
        return tally

    try:
        ending = await stages.execute(executor)
    except FatalAPIError as fatal:
        if len(journal):
            tally = write()
            kept = (f"{finished(tally):,} of {plural(tally.rows, 'row')} finished and are in {output}; the others "
                    "have status 'pending'")  # fmt: skip
        else:
            kept = "no row finished, so nothing was written"
        raise FatalAPIError(f"stopped: {job.endpoint.refusal(fatal.error, job.names)}; {kept}", fatal.error) from None
    resume = f"{_again(job)} to resume: what {journal.path} holds is not sent again"
    if ending is Ending.AT_ONCE:
        raise Interrupted(f"stopped at once; the output was not written; {resume}",
                          RunResult(None, stages.summary(RowTally()), ending=ending))  # fmt: skip
    tally = write()
    summary = stages.summary(tally)
    if ending is Ending.STOPPED:
        if job.batch.enabled:
            resume = f"the provider's batches keep running: {_again(job)} to collect them"
        raise Interrupted(
            f"stopped: {finished(tally):,} of {plural(tally.rows, 'row')} finished and are in {output}; "
            f"the other {tally.statuses[PENDING]:,} have status 'pending'; {resume}",
            RunResult(output, summary, ending=ending),
        )
    return RunResult(output, summary, ending=ending)
