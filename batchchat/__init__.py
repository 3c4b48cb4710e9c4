"""batchchat: answer every row of a prompt table with a chat model, as fast as the rate limit allows.

``run``/``arun`` run a job (a job file, or settings such as ``input=``, ``model=``);
``run_frame``/``arun_frame`` take and return a pandas DataFrame, and work in notebooks;
``dry_run`` plans a job and estimates its tokens and cost without sending anything;
``overview`` sums up an output after the fact, and ``report`` writes its HTML report.

The heavy parts (aiohttp, pyarrow, pandas) load on first use, so ``import batchchat`` and
``batchchat --help`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .core.errors import BatchchatError, FatalAPIError, Interrupted, JobError, RequestError

if TYPE_CHECKING:
    from .core.version import __version__
    from .execute.pipeline import RunResult
    from .job.jobfile import load_job
    from .job.spec import Job
    from .reports.htmlreport import write_report as report
    from .reports.survey import Overview, overview
    from .runs.dryrun import DryRun, dry_run
    from .runs.frames import arun_frame, run, run_frame
    from .runs.runfile import arun

__all__ = [
    "BatchchatError",
    "DryRun",
    "FatalAPIError",
    "Interrupted",
    "Job",
    "JobError",
    "Overview",
    "RequestError",
    "RunResult",
    "__version__",
    "arun",
    "arun_frame",
    "dry_run",
    "load_job",
    "overview",
    "report",
    "run",
    "run_frame",
]

# name -> (module, the name there): loaded on first use
_LAZY = {"RunResult": ("execute.pipeline", "RunResult"), "arun": ("runs.runfile", "arun"), "run": ("runs.frames", "run"),
         "arun_frame": ("runs.frames", "arun_frame"), "run_frame": ("runs.frames", "run_frame"),
         "DryRun": ("runs.dryrun", "DryRun"), "dry_run": ("runs.dryrun", "dry_run"), "Job": ("job.spec", "Job"),
         "load_job": ("job.jobfile", "load_job"), "__version__": ("core.version", "__version__"),
         "report": ("reports.htmlreport", "write_report"), "overview": ("reports.survey", "overview"),
         "Overview": ("reports.survey", "Overview")}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attribute)
    raise AttributeError(f"module 'batchchat' has no attribute {name!r}")
