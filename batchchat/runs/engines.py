"""Which engine answers a job: the live one, provider batches, or a Ray cluster. Each is loaded
only when chosen, so choosing costs no import of an HTTP client or of Ray."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.errors import JobError

if TYPE_CHECKING:
    from ..execute.base import Executor
    from ..job.spec import Job


def executor_for(job: Job, *, handle_signals: bool) -> Executor:
    """The engine the job asks for; ``handle_signals``: it may take over Ctrl-C and SIGTERM."""
    if job.batch.enabled:
        from ..execute.batch import BatchExecutor

        return BatchExecutor.for_job(job, handle_signals=handle_signals)
    if job.ray.enabled:
        try:
            from ..ray.engine import RayExecutor
        except ModuleNotFoundError as missing:
            if missing.name != "ray" and not (missing.name or "").startswith("ray."):
                raise
            raise JobError(f"{job.names('ray')} needs Ray, which is not installed here: pip install "
                           "'batchchat[ray]'") from None  # fmt: skip

        return RayExecutor.for_job(job, handle_signals=handle_signals)
    from ..execute.live import LiveExecutor

    return LiveExecutor.for_job(job, handle_signals=handle_signals)
