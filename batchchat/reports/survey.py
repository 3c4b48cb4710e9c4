"""A look at an output after the fact: what ``batchchat show`` prints and a report draws, worked
out from the output table and its journal alone, without the job or a rerun.

The table is read batch by batch and only aggregates are kept (counts, per-group figures, the
numbers the plots need, and a few sample rows), so a million-row output gives an overview of a
few megabytes at most.
"""

from __future__ import annotations

import json
import math
import os
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..core import jsonio
from ..core.errors import JobError
from ..core.records import ERROR, OK, OUTPUT_COLUMNS, PENDING
from ..execute.base import Elsewhere
from ..input.source import TableSource
from ..output.sink import sink_for
from ..store.files import OutputFiles, open_nofollow
from ..store.stats import PAID, BatchTimes, GroupSummary, RowTally
from ..store.stored import valid_record

SHOWN = 20  # rows in each sample table
FOLD = 300  # characters of a cell shown before the rest is folded
ADDED = (*OUTPUT_COLUMNS, "variant", "label", "score", "transcript", "cost")


@dataclass(frozen=True)
class Timeline:
    """When each request of an output finished, and how: what a report plots over time."""

    at: list[float]  # epoch seconds, in the order written
    attempts: list[int]  # every attempt, the re-asks' included
    retries: list[int]  # attempts after the first of each ask (re-asks of invalid answers are not retries)
    limited: list[int]  # attempts answered 429
    failed: list[bool]
    job: dict[str, Any] | None  # the latest run's settings
    steps: list[dict[str, Any]] = field(default_factory=list)  # provider batch steps, in order


def read_timeline(paths: Sequence[Path]) -> Timeline:
    """The finished requests the journals (and parts) at ``paths`` record with a time, oldest
    first; records from before times were recorded are left out."""
    rows: list[tuple[float, int, int, int, bool]] = []
    job: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = []
    for path in paths:
        if not path.is_file():
            continue
        with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as f:
            for line in f:
                try:
                    record = jsonio.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                    continue
                if not isinstance(record, dict):
                    continue
                if isinstance(record.get("job"), dict):
                    job = record["job"]
                if isinstance(record.get("batch_step"), dict):
                    steps.append(record["batch_step"])
                at = record.get("at")
                if isinstance(at, int | float) and valid_record(record) and record.get("status") != PENDING:
                    attempts, asks = int(record.get("attempts") or 0), int(record.get("answers") or 1)
                    rows.append((float(at), attempts, max(0, attempts - asks), int(record.get("rate_limited") or 0),
                                 record.get("status") == ERROR))  # fmt: skip
    rows.sort()
    return Timeline(at=[r[0] for r in rows], attempts=[r[1] for r in rows], retries=[r[2] for r in rows],
                    limited=[r[3] for r in rows], failed=[r[4] for r in rows], job=job, steps=steps)  # fmt: skip


@dataclass
class Distribution:
    """An ``out_`` field's values: a count of each (text, true/false), or the numbers."""

    counts: Counter[str] = field(default_factory=Counter)
    numbers: array[float] = field(default_factory=lambda: array("d"))


@dataclass
class Overview:
    """An output, summed up; ``groups`` is per model and variant, over every row."""

    output: Path
    fields: dict[str, Distribution] = field(default_factory=dict)
    latencies: array[float] = field(default_factory=lambda: array("d"))
    ttfts: array[float] = field(default_factory=lambda: array("d"))
    tokens_per_row: array[float] = field(default_factory=lambda: array("d"))
    errors: list[dict[str, Any]] = field(default_factory=list)
    slowest: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    timeline: Timeline = field(default_factory=lambda: Timeline([], [], [], [], [], None))
    tally: RowTally = field(default_factory=RowTally)  # the rows' totals, as the run's summary counts them
    counted_once: bool = True  # False for a table from before the paid column: shared rows count again
    shown_column: str | None = None  # the input column samples show beside the answers

    # The rows' figures, as the tally counted them (the one computation the run's summary shares).

    @property
    def rows(self) -> int:
        return self.tally.rows

    @property
    def statuses(self) -> Counter[str]:
        return self.tally.statuses

    @property
    def error_types(self) -> Counter[str]:
        return self.tally.error_types

    @property
    def labels(self) -> Counter[str]:
        return self.tally.labels

    @property
    def prompt_tokens(self) -> int:
        return self.tally.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.tally.completion_tokens

    @property
    def cost(self) -> float | None:
        """Of the output's requests, each once; None without a cost column or a price."""
        return self.tally.cost

    @cached_property
    def groups(self) -> tuple[GroupSummary, ...]:
        return self.tally.group_summaries()

    @property
    def cost_by_model(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for group in self.groups:
            if group.cost is not None:
                found[group.model] = found.get(group.model, 0.0) + group.cost
        return found

    @property
    def ok(self) -> int:
        return self.statuses[OK]

    @property
    def errors_count(self) -> int:
        return self.statuses[ERROR]

    @property
    def pending_count(self) -> int:
        return self.statuses[PENDING]

    @property
    def job(self) -> dict[str, Any] | None:
        return self.timeline.job

    @cached_property
    def batches(self) -> BatchTimes | None:
        """The output's provider batches, when it was answered by them: a batch's answers arrive
        all at once, so its pace is the time from submission to collection, not a rate."""
        return Elsewhere.times_of(self.timeline.steps) if self.timeline.steps else None

    @property
    def duration_s(self) -> float | None:
        """From the first finished request to the last, as the journal recorded them."""
        at = self.timeline.at
        return at[-1] - at[0] if len(at) > 1 else None

    @property
    def requests_per_s(self) -> float | None:
        """Requests finished a second, over at least a second of them, of requests sent live."""
        seconds = self.duration_s
        return (len(self.timeline.at) - 1) / seconds if seconds and seconds >= 1 and not self.batches else None

    @property
    def rate_limited(self) -> int:
        return sum(self.timeline.limited)

    @property
    def retries(self) -> int:
        """Attempts tried again after a failure (re-asks of invalid answers are not retries)."""
        return sum(self.timeline.retries)

    def as_dict(self) -> dict[str, Any]:
        """The figures a report states, as data."""
        return {
            "rows": self.rows, "ok": self.ok, "errors": self.errors_count, "pending": self.pending_count,
            "error_types": dict(self.error_types), "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "cost": self.cost, "labels": dict(self.labels),
            "requests_timed": len(self.timeline.at), "rate_limited": self.rate_limited, "retries": self.retries,
            "duration_s": self.duration_s,
            "groups": [{"model": g.model, "variant": g.variant, "rows": g.rows, "ok": g.ok, "errors": g.errors,
                        "pending": g.pending, "accuracy": g.accuracy, "tokens": g.tokens, "cost": g.cost}
                       for g in self.groups],
        }  # fmt: skip


def overview(output: str | Path) -> Overview:
    """The overview of an output file and its journal."""
    path = Path(output)
    if not path.is_file():
        raise JobError(f"no output at {path}: give the table a run wrote (its journal is read beside it)")
    files = OutputFiles.of(path)
    seen = Overview(path)
    parts = sorted(files.parts.glob("*.journal")) if files.parts.is_dir() else []
    seen.timeline = read_timeline([files.journal, *parts])
    _read_table(seen, sink_for(files).read(), path)
    return seen


def _read_table(seen: Overview, source: TableSource, path: Path) -> None:
    columns = source.columns
    if "status" not in columns or "response" not in columns:
        raise JobError(f"{path} is not a table batchchat wrote: it has no status and response columns")
    job = seen.timeline.job or {}
    prompt = (job.get("prompt") or {}).get("column")
    inputs = [c for c in columns if c not in ADDED and not c.startswith("out_")]
    seen.shown_column = prompt if prompt in inputs else (inputs[0] if inputs else None)
    out_fields = [c for c in columns if c.startswith("out_")]
    fanout = max(1, len(job.get("models") or [1]) * max(1, len(job.get("variants") or [])))
    row = 0
    pending_fanout: list[dict[str, Any]] = []
    for batch in source.batches():
        values = {name: batch.column(name).to_pylist() for name in columns}
        for i in range(batch.num_rows):
            cells = {name: values[name][i] for name in columns}
            _count(seen, cells, row, out_fields)
            pending_fanout.append(cells)
            if len(pending_fanout) == fanout:
                _compare(seen, pending_fanout, row // fanout)
                pending_fanout = []
            row += 1
    seen.counted_once = "paid" in columns
    seen.slowest.sort(key=lambda r: -(r["latency_s"] or 0))


def _number(value: Any) -> float | None:
    """A cell as a number (CSV and JSONL outputs hold text); None when empty or not one."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _count(seen: Overview, cells: dict[str, Any], row: int, out_fields: list[str]) -> None:
    status = str(cells.get("status") or PENDING)
    error_type = cells.get("error_type")
    model = str(cells.get("model") or "")
    variant = cells.get("variant") or None
    paid = cells.get("paid") or None
    label = cells.get("label") or None
    seen.tally.add_row(status, str(error_type) if error_type else None, model, variant,
                  prompt_tokens=_count_of(cells.get("prompt_tokens")),
                  completion_tokens=_count_of(cells.get("completion_tokens")),
                  cost=_number(cells.get("cost")), paid=str(paid) if paid in PAID else None,
                  score=_number(cells.get("score")), label=str(label) if label else None,
                  latency_s=_number(cells.get("latency_s")))  # fmt: skip
    shown = _fold(cells.get(seen.shown_column)) if seen.shown_column else None
    if status == OK:
        latency = _number(cells.get("latency_s"))
        if latency is not None:
            seen.latencies.append(latency)
            _keep_slowest(seen, {"row": row + 1, "model": model, "latency_s": latency, "input": shown,
                                 "response": _fold(cells.get("response"))})  # fmt: skip
        ttft = _number(cells.get("ttft_s"))
        if ttft is not None:
            seen.ttfts.append(ttft)
        total = _number(cells.get("total_tokens"))
        if total is not None:
            seen.tokens_per_row.append(total)
        if len(seen.samples) < SHOWN:
            seen.samples.append({"row": row + 1, "model": model, "variant": variant, "input": shown,
                                 "response": _fold(cells.get("response"))})  # fmt: skip
    elif status == ERROR and len(seen.errors) < SHOWN:
        seen.errors.append({"row": row + 1, "model": model, "error_type": error_type, "error": _fold(cells.get("error")),
                            "input": shown})  # fmt: skip
    elif status == PENDING and len(seen.pending) < SHOWN:
        seen.pending.append({"row": row + 1, "model": model, "input": shown})
    for name in out_fields:
        value = cells.get(name)
        if value is None or value == "":
            continue
        distribution = seen.fields.setdefault(name, Distribution())
        number = _number(value) if not isinstance(value, bool) else None
        if number is not None and str(value).strip().lower() not in ("true", "false"):
            distribution.numbers.append(number)
        else:
            distribution.counts[_fold(value, 60) or ""] += 1


def _keep_slowest(seen: Overview, entry: dict[str, Any]) -> None:
    slowest = seen.slowest
    if len(slowest) < SHOWN:
        slowest.append(entry)
    else:
        fastest = min(range(len(slowest)), key=lambda i: slowest[i]["latency_s"])
        if entry["latency_s"] > slowest[fastest]["latency_s"]:
            slowest[fastest] = entry


def _compare(seen: Overview, rows: list[dict[str, Any]], input_row: int) -> None:
    """An input row whose models or variants answered differently (by label, score or answer)."""
    if len(rows) < 2 or len(seen.disagreements) >= SHOWN or any(r.get("status") != OK for r in rows):
        return
    by = "label" if "label" in rows[0] else "score" if "score" in rows[0] else "response"
    said = [" ".join(str(r.get(by) or "").split()).casefold() for r in rows]
    if len(set(said)) > 1:
        seen.disagreements.append({
            "row": input_row + 1, "input": _fold(rows[0].get(seen.shown_column)) if seen.shown_column else None,
            "by": by, "answers": [{"model": r.get("model"), "variant": r.get("variant") or None,
                                   "said": _fold(r.get(by))} for r in rows],
        })  # fmt: skip


def _count_of(value: Any) -> int | None:
    """A token cell as a count; None when empty."""
    number = _number(value)
    return int(number) if number is not None else None


def _fold(value: Any, limit: int = FOLD) -> str | None:
    """A cell as short text: lists and objects as JSON; past ``limit`` characters, cut."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def shares(counts: Iterable[tuple[str, int]], top: int = 12) -> list[tuple[str, int]]:
    """The ``top`` most frequent values, the rest summed as "other"."""
    ordered = sorted(counts, key=lambda item: -item[1])
    if len(ordered) <= top:
        return ordered
    return [*ordered[: top - 1], ("other", sum(count for _, count in ordered[top - 1 :]))]
