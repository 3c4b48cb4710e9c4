"""Running totals of a job: what the progress bar shows while it runs and the summary after."""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .records import OK, RowOutcome


class Counters:
    """Live request counters the scheduler updates as attempts happen (not only as rows finish)."""

    __slots__ = ("rate", "rate_limited", "requests", "retries")

    def __init__(self) -> None:
        self.requests = 0  # HTTP attempts sent
        self.rate_limited = 0  # of which answered 429
        self.retries = 0  # attempts after a row's first
        self.rate: float | None = None  # the departure rate the throttle allows now, requests/s


@dataclass(frozen=True, slots=True)
class Summary:
    rows: int
    ok: int
    errors: int
    error_types: tuple[tuple[str, int], ...]  # most frequent first
    prompt_tokens: int
    completion_tokens: int
    wall_s: float
    latency_p50_s: float | None
    latency_p95_s: float | None
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    requests: int = 0
    rate_limited: int = 0
    retries: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s > 0 else 0.0


class Stats:
    """Updated once per finished row; cheap enough to sit on the hot path."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.ok = 0
        self.errors = 0
        self.error_types: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
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
            self.error_types[outcome.error_type or "unknown"] += 1
        self.prompt_tokens += outcome.prompt_tokens or 0
        self.completion_tokens += outcome.completion_tokens or 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def summary(self, wall_s: float) -> Summary:
        ordered = sorted(self._latencies)
        ttfts = sorted(self._ttfts)
        return Summary(
            rows=self.done,
            ok=self.ok,
            errors=self.errors,
            error_types=tuple(self.error_types.most_common()),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            wall_s=wall_s,
            latency_p50_s=percentile(ordered, 50),
            latency_p95_s=percentile(ordered, 95),
            ttft_p50_s=percentile(ttfts, 50),
            ttft_p95_s=percentile(ttfts, 95),
            requests=self.counters.requests,
            rate_limited=self.counters.rate_limited,
            retries=self.counters.retries,
        )


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks over sorted values (numpy's default)."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
