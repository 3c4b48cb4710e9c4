"""batchchat: answer every row of a prompt table with a chat model, as fast as the rate limit allows.

``run``/``arun`` run a job (a job file, or settings such as ``input=``, ``model=``);
``run_frame``/``arun_frame`` take and return a pandas DataFrame, and work in notebooks;
``dry_run`` plans a job and estimates its tokens and cost without sending anything.

The heavy parts (aiohttp, pyarrow, pandas) load on first use, so ``import batchchat`` and
``batchchat --help`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import BatchchatError, FatalAPIError, Interrupted, JobError, RequestError

if TYPE_CHECKING:
    from .dryrun import DryRun, dry_run
    from .frames import arun_frame, run_frame
    from .jobfile import load_job
    from .pipeline import RunResult
    from .runfile import arun, run
    from .spec import Job
    from .version import __version__

__all__ = [
    "BatchchatError",
    "DryRun",
    "FatalAPIError",
    "Interrupted",
    "Job",
    "JobError",
    "RequestError",
    "RunResult",
    "__version__",
    "arun",
    "arun_frame",
    "dry_run",
    "load_job",
    "run",
    "run_frame",
]

_LAZY = {"RunResult": "pipeline", "arun": "runfile", "run": "runfile", "arun_frame": "frames", "run_frame": "frames",
         "DryRun": "dryrun", "dry_run": "dryrun", "Job": "spec", "load_job": "jobfile",
         "__version__": "version"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'batchchat' has no attribute {name!r}")
