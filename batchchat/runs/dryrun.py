"""A dry run: everything a run checks and plans, and what it would cost, with nothing sent.

It reads the journal without locking or changing it, so it can look at a job while another run
of it is going.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..core.records import ChatRequest
from ..execute.batchfiles import Limits, dialect_of, split
from ..execute.pipeline import open_store, under_way, with_waiting
from ..input.source import open_source
from ..job.jobfile import build_job
from ..job.money import Estimates, GroupEstimate, estimate_all
from ..job.spec import NO_PRICES, Job, Prices
from ..plan.plan import Plan, Setup
from ..providers import BATCH_WIRES, dialect
from ..store.files import OutputFiles
from ..store.journal import MemoryStore, Store


@dataclass(frozen=True)
class BatchPlan:
    """How a ``batch_api`` run would submit the requests: files (one batch each) within the
    provider's limits, one model each."""

    files: int
    requests: int
    limits: Limits
    cost: float | None  # at batch prices
    inline: bool = False  # the requests go in the create call (one batch a file), not uploaded


@dataclass(frozen=True)
class DryRun:
    plan: Plan
    estimates: Estimates
    first_request: ChatRequest | None  # what the first request would send
    missing_key: str | None  # the API key variable a real run needs and that is not set
    messages_from: str = ""  # which settings and columns make each row's messages
    prices: Prices = field(default_factory=lambda: NO_PRICES)  # of the models asked
    batch: BatchPlan | None = None  # with batch_api: the files and what they would cost
    dialect: str = "openai"  # the wire format the requests are sent in

    @property
    def groups(self) -> tuple[GroupEstimate, ...]:
        return self.estimates.groups

    @property
    def prompt_tokens(self) -> int:
        return self.estimates.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.estimates.completion_tokens

    @property
    def likely_prompt_tokens(self) -> int:
        """Characters / 4: what typical text takes (the groups hold upper bounds)."""
        return self.estimates.likely_prompt_tokens

    @property
    def completion_bounded(self) -> bool:
        """max_tokens is set, so completion estimates are upper bounds."""
        return self.estimates.completion_bounded

    @property
    def cost(self) -> float | None:
        """The whole run's estimate, when every model sending something has a price."""
        return self.estimates.cost


def dry_run(job: Job | str | os.PathLike[str] | None = None, /, **settings: Any) -> DryRun:
    """Validate a job and plan it as a run would (input, every row, journal, resume, dedup), and
    estimate its tokens and cost. Sends nothing and writes nothing."""
    if not isinstance(job, Job):  # a dry run needs no API key, only says that a real run would
        job = build_job(job, settings, lambda key: f"{key}=", check_key=False)
    elif settings:
        raise TypeError("pass either a Job or settings, not both")
    source = open_source(job.required("input"), job.limit)
    setup = Setup.of(job, source.columns, source.name)
    store: Store = MemoryStore()
    if job.output is not None:
        files = OutputFiles.of(job.output, job.names("output"))
        files.check()  # what a run would find only after paying
        store = open_store(job, files.journal, files.parts, read_only=True, forget=job.resume.restart)
    try:
        elsewhere = under_way(job, store)  # refused as the run would be, or its batches counted
        plan, rows = setup.plan(source, store, job.output)
    finally:
        store.close()
    plan = with_waiting(plan, rows, elsewhere)
    builder = setup.builder

    def new() -> Iterator[ChatRequest]:
        """The requests the run would send: what waits in provider batches is collected, neither
        sent nor submitted again."""
        return (r for r in builder.requests(source, rows.keys, rows.sends) if r.key not in elsewhere.waiting)

    requests = new()
    first = next(requests, None)
    slots = builder.spec.groups
    everything = itertools.chain([first] if first is not None else [], requests)
    sent = dialect(job.endpoint.dialect).max_tokens_sent
    estimates = estimate_all(everything, lambda r: slots[r.row % builder.fanout], slots, job.prices, sent)
    batch = None
    if job.batch.enabled:
        speaks = dialect_of(job.endpoint, job.simulator)
        limits = Limits.of(speaks, job.simulator if job.endpoint.provider == "sim" else None)
        count = sum(1 for _ in split(new(), limits, BATCH_WIRES[speaks]))
        batch = BatchPlan(count, plan.to_send - plan.waiting, limits, estimates.cost_at(job.paid_prices),
                          BATCH_WIRES[speaks].inline)
    return DryRun(plan, estimates, first, job.endpoint.missing_key, builder.describe(), job.prices, batch,
                  job.endpoint.dialect)
