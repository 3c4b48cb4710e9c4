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

from .errors import BatchchatError, FatalAPIError, Interrupted, JobError, RequestError

if TYPE_CHECKING:
    from .dryrun import DryRun, dry_run
    from .frames import arun_frame, run_frame
    from .htmlreport import write_report as report
    from .jobfile import load_job
    from .pipeline import RunResult
    from .runfile import arun, run
    from .spec import Job
    from .survey import Overview, overview
    from .version import __version__

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
_LAZY = {"RunResult": ("pipeline", "RunResult"), "arun": ("runfile", "arun"), "run": ("runfile", "run"),
         "arun_frame": ("frames", "arun_frame"), "run_frame": ("frames", "run_frame"), "DryRun": ("dryrun", "DryRun"),
         "dry_run": ("dryrun", "dry_run"), "Job": ("spec", "Job"), "load_job": ("jobfile", "load_job"),
         "__version__": ("version", "__version__"), "report": ("htmlreport", "write_report"),
         "overview": ("survey", "overview"), "Overview": ("survey", "Overview")}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attribute)
    raise AttributeError(f"module 'batchchat' has no attribute {name!r}")
