"""Running totals of a job: what the progress bar shows while it runs and the summary after.

Two kinds of count: requests this run sent and how they went (tokens, latency, retries), and
rows in the output and how they ended (which includes rows answered by earlier runs, and rows
sharing one request).
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..core.compact import ordered
from ..core.records import ERROR, OK, PENDING, RowOutcome, Usage
from ..job.money import Estimate, spending
from ..job.spec import NO_PRICES, Prices


class Counters:
    """Live request counters the executors update as attempts happen (not only as rows finish)."""

    __slots__ = ("busy", "busy_statuses", "cancelled", "cap_stop", "crowded", "extra_batches", "invalid", "last_cut", "notes",
                 "paced", "rate", "rate_limited", "repeated", "requests", "retries", "uncancelled", "unreported",
                 "unreported_bound", "usage", "waiting_until")  # fmt: skip

    def __init__(self) -> None:
        self.usage: dict[str, list[int]] = {}  # model -> [prompt, completion] tokens of every answer received
        self.unreported = 0  # answers that came without (complete) usage
        # model -> [prompt, completion]: upper bounds of the tokens those answers did not report,
        # so a cost cap stays kept against servers that never say (llama.cpp's streams)
        self.unreported_bound: dict[str, list[int]] = {}
        self.invalid = 0  # answers that were not the JSON or label asked for (each re-asked while re-asks last)
        self.requests = 0  # HTTP attempts sent
        self.rate_limited = 0  # of which answered 429
        self.busy = 0  # ... and answered 503 (a provider short of capacity, or a crowded server), or 529
        self.busy_statuses: set[str] = set()  # how they were said: "503", Anthropic's "529", "overloaded" in a stream
        self.retries = 0  # attempts after a request's first
        self.rate: float | None = None  # the departure rate the throttle allows now, requests/s
        self.waiting_until = 0.0  # epoch time: every request waits for the server's limit until then
        self.crowded: str | None = None  # why fewer requests went at once than asked
        self.paced: str | None = None  # each cut of the rate, when and why
        self.last_cut: str | None = None  # the latest of them, for the progress lines
        self.notes: Counter[str] = Counter()  # answers with odd values, by how they were read (``reading``)
        self.repeated: Counter[str] = Counter()  # provider batch -> result lines for a request it answered already
        self.extra_batches = 0  # batches the provider made of a file already made one of (found this run)
        self.uncancelled = 0  # batches --cancel left running: perhaps someone else's (``Steps.presumed``)
        self.cancelled = 0  # batches this run asked the provider to cancel (--cancel, or an extra batch)
        # when the cost cap stopped the run: (what it counted as spent, the bound of the request it refused)
        self.cap_stop: tuple[float, float] | None = None

    def merge(self, other: Counters) -> None:
        """Another process's counts (a Ray worker's), added to these."""
        for mine, theirs in ((self.usage, other.usage), (self.unreported_bound, other.unreported_bound)):
            for model, tokens in theirs.items():
                total = mine.setdefault(model, [0, 0])
                total[0] += tokens[0]
                total[1] += tokens[1]
        self.unreported += other.unreported
        self.notes.update(other.notes)
        self.repeated.update(other.repeated)
        self.extra_batches += other.extra_batches
        self.uncancelled += other.uncancelled
        self.cancelled += other.cancelled
        self.invalid += other.invalid
        self.requests += other.requests
        self.rate_limited += other.rate_limited
        self.busy += other.busy
        self.busy_statuses |= other.busy_statuses
        self.retries += other.retries
        self.rate = other.rate if other.rate is not None else self.rate
        self.waiting_until = max(self.waiting_until, other.waiting_until)
        self.crowded = other.crowded or self.crowded
        self.paced = other.paced or self.paced
        self.last_cut = other.last_cut or self.last_cut
        self.cap_stop = other.cap_stop if other.cap_stop is not None else self.cap_stop

    def add_usage(self, model: str, usage: Usage) -> None:
        """An answer arrived and is paid for, whatever becomes of it (a re-ask, a conversation's turn)."""
        tokens = self.usage.setdefault(model, [0, 0])
        tokens[0] += usage.prompt_tokens or 0
        tokens[1] += usage.completion_tokens or 0

    def add_unreported(self, model: str, usage: Usage, bound: Estimate) -> None:
        """An answer whose usage is missing (in part): the missing part counts at its estimate."""
        self.unreported += 1
        tokens = self.unreported_bound.setdefault(model, [0, 0])
        tokens[0] += bound.prompt_tokens if usage.prompt_tokens is None else 0
        tokens[1] += bound.completion_tokens if usage.completion_tokens is None else 0


# Who paid for an output row's request (its ``paid`` cell): the run that wrote the table, an earlier
# run whose answer it reused, or another row of the table that asked the very same request.
PAID_RUN = "this_run"
PAID_EARLIER = "earlier_run"
PAID_SHARED = "shared"
PAID = (PAID_RUN, PAID_EARLIER, PAID_SHARED)


class GroupTally:
    """The rows of one model and variant: how they ended, their scores, latency, tokens and cost."""

    def __init__(self) -> None:
        self.statuses: Counter[str] = Counter()
        self.scored = 0
        self.score_sum = 0.0
        self.latencies = array("d")
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = 0.0
        self.unpriced = 0  # rows whose cost counts but is unknown
        self.priced = 0  # rows with a cost cell (a model without a price has none, even pending)


class RowTally:
    """The totals of an output's rows, from exactly the cells the output table holds.

    Every figure a user sees about an output (the run's summary, ``show``, the report,
    ``overview()``) is counted here, row by row, so they agree: the run feeds it the rows it
    writes, and ``survey`` the rows it reads back. Tokens and cost count each request once: a
    row whose ``paid`` is ``shared`` took the answer another row paid for, so it is left out of
    the sums (its cells still say what the answer took).
    """

    def __init__(self) -> None:
        self.rows = 0
        self.statuses: Counter[str] = Counter()
        self.error_types: Counter[str] = Counter()
        self.groups: dict[tuple[str, str | None], GroupTally] = {}
        self.earlier_without_ttft = 0  # ok rows an earlier run answered without time to first token
        self.labels: Counter[str] = Counter()  # rows by their label
        self.paid: Counter[str] = Counter()  # rows by who paid for their request
        # who paid -> [prompt tokens, completion tokens, cost, rows whose cost is unknown]
        self._by_payer: dict[str, list[float]] = {}
        self.priced = 0  # rows with a cost cell

    def add(self, status: str, error_type: str | None) -> None:
        self.rows += 1
        self.statuses[status] += 1
        if error_type:
            self.error_types[error_type] += 1

    def add_row(self, status: str, error_type: str | None, model: str, variant: str | None, *,
                prompt_tokens: int | None = None, completion_tokens: int | None = None, cost: float | None = None,
                paid: str | None = None, score: float | None = None, label: str | None = None,
                latency_s: float | None = None) -> None:  # fmt: skip
        """One output row, as its cells read."""
        self.add(status, error_type if status == ERROR else None)
        if label is not None:
            self.labels[label] += 1
        tally = self.groups.get((model, variant))
        if tally is None:
            tally = self.groups[(model, variant)] = GroupTally()
        tally.statuses[status] += 1
        if score is not None:
            tally.scored += 1
            tally.score_sum += score
        if status == OK and latency_s is not None:
            tally.latencies.append(latency_s)
        if paid is not None:
            self.paid[paid] += 1
        if cost is not None:
            tally.priced += 1
            self.priced += 1
        if paid == PAID_SHARED or (paid is None and status == PENDING):
            return  # paid by another row, or not asked yet
        payer = self._by_payer.setdefault(paid or "", [0, 0, 0.0, 0])
        payer[0] += prompt_tokens or 0
        payer[1] += completion_tokens or 0
        tally.prompt_tokens += prompt_tokens or 0
        tally.completion_tokens += completion_tokens or 0
        if cost is None:
            payer[3] += 1
            tally.unpriced += 1
        else:
            payer[2] += cost
            tally.cost += cost

    def _sum(self, index: int) -> float:
        return sum(payer[index] for payer in self._by_payer.values())

    @property
    def prompt_tokens(self) -> int:
        """Of every request the rows asked, once each (earlier runs' included)."""
        return int(self._sum(0))

    @property
    def completion_tokens(self) -> int:
        return int(self._sum(1))

    @property
    def cost(self) -> float | None:
        """The cost column's sum over the rows that paid (earlier runs' included); None when a
        row's cost is unknown (no price, or no usage reported)."""
        return None if self._sum(3) or not self.priced else self._sum(2)

    def tokens_paid_by(self, payer: str) -> int:
        """Prompt and completion tokens of the rows ``payer`` paid for."""
        found = self._by_payer.get(payer)
        return int(found[0] + found[1]) if found is not None else 0

    @property
    def payers(self) -> tuple[tuple[str, int], ...]:
        """Rows by who paid for their request (``PAID``), in that order, those with any."""
        return tuple((payer, self.paid[payer]) for payer in PAID if self.paid[payer])

    def group_summaries(self) -> tuple[GroupSummary, ...]:
        summaries = []
        for (model, variant), t in self.groups.items():
            latencies = ordered(t.latencies)
            summaries.append(GroupSummary(
                model=model,
                variant=variant,
                rows=sum(t.statuses.values()),
                ok=t.statuses[OK],
                errors=t.statuses[ERROR],
                pending=t.statuses[PENDING],
                scored=t.scored,
                accuracy=t.score_sum / t.scored if t.scored else None,
                latency_p50_s=percentile(latencies, 50),
                latency_p95_s=percentile(latencies, 95),
                prompt_tokens=t.prompt_tokens,
                completion_tokens=t.completion_tokens,
                cost=None if t.unpriced or not t.priced else t.cost,
            ))  # fmt: skip
        return tuple(summaries)


@dataclass(frozen=True, slots=True)
class BatchTimes:
    """Provider batches, as the journal's steps record them: submitted, collected and still
    waiting (each with its requests), and how long each collected one took from submission
    (its file's upload) to collection. What a batch run's summary and ``show`` say instead of a
    rate of requests, which batches do not have."""

    submitted: int = 0
    submitted_requests: int = 0
    collected: int = 0
    collected_requests: int = 0
    waiting: int = 0
    waiting_requests: int = 0
    waits: tuple[float, ...] = ()  # seconds from submission to collection, shortest first

    @property
    def any(self) -> bool:
        return bool(self.submitted or self.collected or self.waiting)


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """One model and variant over every row of the output (earlier runs' answers included)."""

    model: str
    variant: str | None
    rows: int
    ok: int
    errors: int
    pending: int
    scored: int  # rows with a score: an expected answer, and an answer (or an invalid one)
    accuracy: float | None  # mean score of the scored rows
    latency_p50_s: float | None
    latency_p95_s: float | None
    prompt_tokens: int
    completion_tokens: int
    cost: float | None  # US dollars, when the model has a price

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Summary:
    rows: int  # rows in the output
    ok: int
    errors: int
    pending: int  # rows not finished (the run was interrupted)
    error_types: tuple[tuple[str, int], ...]  # of error rows, most frequent first
    answered: int  # requests this run finished (ok or error)
    prompt_tokens: int  # this run's
    completion_tokens: int
    wall_s: float
    latency_p50_s: float | None
    latency_p95_s: float | None
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    requests: int = 0
    rate_limited: int = 0
    busy: int = 0  # attempts answered 503 (or 529)
    busy_as: str = "503"  # the statuses they were answered with: "503", "529", "503/529"
    retries: int = 0
    invalid_answers: int = 0  # answers that were not the JSON or label asked for
    cost: float | None = None  # US dollars this run spent, when every model asked has a price
    cost_cap: float | None = None  # --max-cost, when set
    budget_stopped: bool = False  # the cap stopped the run; the rows not sent are pending
    cap_stop: tuple[float, float] | None = None  # (spent as the cap counts it, the bound it refused): how close
    groups: tuple[GroupSummary, ...] = ()
    earlier_without_ttft: int = 0  # in a streamed run, ok rows answered by earlier runs that did not stream
    output_cost: float | None = None  # the cost of the output's requests (earlier runs' included), when all priced
    output_prompt_tokens: int = 0  # of the output's requests, each once (earlier runs' included)
    output_completion_tokens: int = 0
    paid: tuple[tuple[str, int], ...] = ()  # rows by who paid for their request (``PAID``)
    # the this_run rows' tokens less this run's: more where those rows count answers an earlier run
    # paid for (asked again now), fewer where this run paid for answers no row counts (re-asks to go)
    rows_beyond_run: int = 0
    batches: BatchTimes | None = None  # a provider batch run's batches: this run's, and those still waiting
    labels: tuple[tuple[str, int], ...] = ()  # rows by label, most frequent first
    unreported: int = 0  # answers this run whose server did not report usage
    crowded: str | None = None  # when and why fewer requests went at once than asked
    paced: str | None = None  # when and why the rate was cut, and what it was allowed at the end
    notes: tuple[tuple[str, int], ...] = ()  # answers with odd values, by how they were read, most frequent first
    unreported_cost: float | None = None  # at most what the answers that reported no usage cost, priced
    repeated: tuple[tuple[str, int], ...] = ()  # (provider batch, result lines repeating a request)
    extra_batches: int = 0  # batches the provider made of a file it had made one of already
    uncancelled: int = 0  # batches --cancel left running, as perhaps someone else's
    cancelled: int = 0  # batches this run asked the provider to cancel

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def requests_per_s(self) -> float:
        return self.answered / self.wall_s if self.wall_s > 0 else 0.0


class Stats:
    """This run's requests, updated once per finished request; cheap enough for the hot path."""

    def __init__(self, total: int, prices: Prices = NO_PRICES) -> None:
        self.total = total  # requests this run is to send
        self.prices = prices
        self.done = 0
        self.ok = 0
        self.errors = 0
        self.counters = Counters()
        self._latencies = array("d")
        self._ttfts = array("d")

    def add(self, outcome: RowOutcome) -> None:
        self.done += 1
        if outcome.status == OK:
            self.ok += 1
            if outcome.latency_s is not None:
                self._latencies.append(outcome.latency_s)
            if outcome.ttft_s is not None:
                self._ttfts.append(outcome.ttft_s)
        else:
            self.errors += 1

    @property
    def prompt_tokens(self) -> int:
        return sum(tokens[0] for tokens in self.counters.usage.values())

    @property
    def completion_tokens(self) -> int:
        return sum(tokens[1] for tokens in self.counters.usage.values())

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost(self) -> float | None:
        """US dollars this run spent, when every model that answered has a price."""
        return spending(self.prices, self.counters.usage) if self.prices else None

    def summary(self, wall_s: float, rows: RowTally, *, cost_cap: float | None = None, budget_stopped: bool = False,
                streamed: bool = False, batches: BatchTimes | None = None) -> Summary:  # fmt: skip
        latencies = ordered(self._latencies)
        ttfts = ordered(self._ttfts)
        return Summary(
            rows=rows.rows,
            ok=rows.statuses[OK],
            errors=rows.statuses[ERROR],
            pending=rows.statuses[PENDING],
            error_types=tuple(rows.error_types.most_common()),
            answered=self.done,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            wall_s=wall_s,
            latency_p50_s=percentile(latencies, 50),
            latency_p95_s=percentile(latencies, 95),
            ttft_p50_s=percentile(ttfts, 50),
            ttft_p95_s=percentile(ttfts, 95),
            requests=self.counters.requests,
            rate_limited=self.counters.rate_limited,
            busy=self.counters.busy,
            busy_as="/".join(sorted(self.counters.busy_statuses)) or "503",
            retries=self.counters.retries,
            invalid_answers=self.counters.invalid,
            cost=self.cost,
            cost_cap=cost_cap,
            budget_stopped=budget_stopped,
            cap_stop=self.counters.cap_stop,
            groups=rows.group_summaries(),
            earlier_without_ttft=rows.earlier_without_ttft if streamed else 0,
            output_cost=rows.cost,
            output_prompt_tokens=rows.prompt_tokens,
            output_completion_tokens=rows.completion_tokens,
            paid=rows.payers,
            rows_beyond_run=rows.tokens_paid_by(PAID_RUN) - self.tokens,
            labels=tuple(rows.labels.most_common()),
            unreported=self.counters.unreported,
            crowded=self.counters.crowded,
            paced=self.counters.paced,
            notes=tuple(self.counters.notes.most_common()),
            unreported_cost=spending(self.prices, self.counters.unreported_bound) if self.prices else None,
            repeated=tuple(sorted(self.counters.repeated.items())),
            extra_batches=self.counters.extra_batches,
            uncancelled=self.counters.uncancelled,
            cancelled=self.counters.cancelled,
            batches=batches,
        )


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks over sorted values (numpy's default)."""
    if len(values) == 0:
        return None
    position = (len(values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return float(values[low] + (values[high] - values[low]) * (position - low))
