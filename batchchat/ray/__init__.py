"""batchchat on Ray Data: a job's rows answered by a cluster's workers, under one shared set of
limits (``pip install 'batchchat[ray]'``).

``chat(ds, job)`` takes a ``ray.data.Dataset`` and gives one with the output columns, block by
block: each block planned, answered and assembled as a local run does a file, so the pure
per-batch functions that turn rows into requests and answers into cells do the work. Requests
that several blocks ask are asked once (the blocks claim them). With ``journal=FOLDER`` each
worker keeps its answers in a part there as they finish, and a later call sends only what no
part holds; that folder must be one every worker can reach (a shared disk or mount).

For a file in and a file out, ``batchchat run --ray`` runs the job's plan and output on the
driver and only the requests on the cluster (``engine.RayExecutor``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray

from ..execute.pipeline import journal_scope
from ..job.jobfile import load_job
from ..job.spec import Job, RayCluster
from .engine import connect, sizes
from .limits import SharedLimits
from .workers import Blocks, Claims, Storage

__all__ = ["chat"]


def chat(ds: ray.data.Dataset, job: Job | str | os.PathLike[str] | None = None, /, *,
         journal: str | os.PathLike[str] | None = None, **settings: Any) -> ray.data.Dataset:  # fmt: skip
    """``ds`` with batchchat's output columns added to every row (one row per model and variant
    in a fan-out), answered by Ray workers: ``job`` is a ``Job``, a job file, or settings such
    as ``model=`` (``ray_workers=`` sets how many). Lazy, like every Ray Data transform: nothing
    is sent until the dataset is consumed (``write_parquet``, ``take``...)."""
    if isinstance(job, Job):
        if settings:
            raise TypeError("pass either a Job or settings, not both; load_job(path, **settings) merges them")
    else:
        job = load_job(job, **{"ray": True, **settings})  # on Ray: ray_workers= may be given alone
    cluster = job.ray if job.ray.enabled else RayCluster(address="local")
    workers, share = sizes(job, connect(cluster))
    folder = Path(journal) if journal is not None else None
    storage = Storage(folder, None, journal_scope(job.endpoint, job.answers))
    shared = SharedLimits.options(num_cpus=0).remote(job.limits, job.max_cost, job.paid_prices)
    claims = Claims.options(num_cpus=0).remote() if folder is not None else None  # answers to share need a folder
    return ds.map_batches(Blocks, fn_constructor_kwargs={"job": job, "shared": shared, "claims": claims,
                                                         "share": share, "storage": storage},
                          batch_format="pyarrow", concurrency=workers, num_cpus=0.01)  # fmt: skip
