"""A dry run: everything a run checks and plans, and what it would cost, with nothing sent.

It reads the journal without locking or changing it, so it can look at a job while another run
of it is going.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .cost import estimate, likely
from .errors import JobError
from .files import OutputFiles
from .job import Job, build_job
from .jobparts import Price
from .journal import Journal, MemoryStore
from .passes import Plan, derived_columns
from .passes import plan as make_plan
from .prompts import RequestBuilder
from .records import ChatRequest
from .runner import endpoint_name, journal_scope
from .sink import output_schema
from .source import open_source


@dataclass(frozen=True)
class GroupEstimate:
    """The requests one model and variant would send, and their estimated tokens and cost."""

    model: str
    variant: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int  # max_tokens per answer (or the default estimate): an upper bound
    cost: float | None  # US dollars; None when the model has no price


@dataclass(frozen=True)
class DryRun:
    plan: Plan
    groups: tuple[GroupEstimate, ...]
    first_request: ChatRequest | None  # what the first request would send
    missing_key: str | None  # the API key variable a real run needs and that is not set
    messages_from: str = ""  # which settings and columns make each row's messages
    likely_prompt_tokens: int = 0  # characters / 4: what typical text takes (the groups hold upper bounds)
    completion_bounded: bool = True  # max_tokens is set, so completion estimates are upper bounds
    prices: tuple[tuple[str, Price], ...] = ()  # of the models asked

    @property
    def prompt_tokens(self) -> int:
        return sum(g.prompt_tokens for g in self.groups)

    @property
    def completion_tokens(self) -> int:
        return sum(g.completion_tokens for g in self.groups)

    @property
    def cost(self) -> float | None:
        """The whole run's estimate, when every model sending something has a price."""
        costs = [g.cost for g in self.groups if g.requests]
        return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)


def dry_run(job: Job | str | os.PathLike[str] | None = None, /, **settings: Any) -> DryRun:
    """Validate a job and plan it as a run would (input, every row, journal, resume, dedup), and
    estimate its tokens and cost. Sends nothing and writes nothing."""
    if not isinstance(job, Job):  # a dry run needs no API key, only says that a real run would
        job = build_job(job, settings, lambda key: f"{key}=", check_key=False)
    elif settings:
        raise TypeError("pass either a Job or settings, not both")
    if job.input is None:
        raise JobError(f"no input: give the table with {job.names('input')} (or 'input' in a job file)")
    source = open_source(job.input, job.limit)
    output_schema(source, derived_columns(job))  # input columns that clash with output columns
    builder = RequestBuilder(job, source.columns, source.name)
    store: Journal | MemoryStore = MemoryStore()
    if job.output is not None:
        files = OutputFiles.of(job.output, job.names("output"))
        files.check()  # what a run would find only after paying
        if not job.resume.restart and files.journal.exists():
            store = Journal(files.journal, journal_scope(job), read_only=True)
    try:
        plan, rows = make_plan(job, source, builder, store, job.output, endpoint_name(job))
    finally:
        store.close()
    totals: dict[tuple[str, str | None], list[int]] = {(s.model, s.variant): [0, 0, 0] for s in builder.slots}
    first = None
    likely_tokens = 0
    bounded = True
    for request in builder.requests(source, rows.keys, rows.sends):
        first = first or request
        tokens = estimate(request)
        likely_tokens += likely(request).prompt_tokens
        bounded = bounded and "max_tokens" in dict(request.params)
        total = totals[(request.model, builder.slots[request.row % builder.fanout].variant)]
        total[0] += 1
        total[1] += tokens.prompt_tokens
        total[2] += tokens.completion_tokens
    groups = []
    for (model, variant), (count, prompt, completion) in totals.items():
        price = job.price(model)
        cost = price.cost(prompt, completion) if price is not None else None
        groups.append(GroupEstimate(model, variant, count, prompt, completion, cost))
    return DryRun(plan, tuple(groups), first, job.endpoint.missing_key, builder.describe(), likely_tokens, bounded,
                  job.prices)  # fmt: skip
