"""The engines that answer a run's requests, behind one interface (``base.Executor``): the live
engine (requests from this process) and provider batches. The engines load their HTTP client
only when chosen, so importing the interface costs nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..spec import Job
    from .base import Executor


def executor_for(job: Job, *, handle_signals: bool) -> Executor:
    """The engine the job asks for; ``handle_signals``: it may take over Ctrl-C and SIGTERM."""
    if job.batch.enabled:
        from .batch import BatchExecutor

        return BatchExecutor.for_job(job, handle_signals=handle_signals)
    from .live import LiveExecutor

    return LiveExecutor.for_job(job, handle_signals=handle_signals)
