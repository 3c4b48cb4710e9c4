"""What an answer means: whether it is valid, the columns read from it, and its score.

An answer is checked as it arrives (an invalid one is asked again), but everything derived from it
(labels, ``out_`` fields, scores) is worked out again when the output is assembled, from the
response text the journal keeps. The journal therefore stays one record per request, and a
changed scoring method applies to answers already paid for.

``derive_batch`` is that for one Arrow batch, a pure function of the batch, its rows' outcomes
and the ``Derived`` columns (the parts of the job it needs), so any engine can call it on a shard.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

from ..core.errors import INVALID_LABEL, INVALID_OUTPUT
from ..core.records import ERROR, OK, PENDING, RowOutcome
from ..core.schema import json_equal, output_fields, validate
from ..core.template import cell_text
from ..job.spec import NO_PRICES, Answers, Job, Prices, Scoring, normalize_label

if TYPE_CHECKING:
    import pyarrow as pa

_FENCE = re.compile(r"^\s*```[\w-]*\s*\n(.*?)\n?```\s*$", re.DOTALL)
SHOWN = 80


class NotJSON(ValueError):
    pass


def parse_json_answer(text: str | None) -> Any:
    """The JSON value of an answer; a Markdown code fence around it, as models like to add, is fine."""
    if text is None:
        raise NotJSON("the answer is empty")
    fenced = _FENCE.match(text)
    try:
        return json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError as e:
        raise NotJSON(f"the answer is not valid JSON ({e.msg} at character {e.pos + 1})") from None
    except RecursionError:
        raise NotJSON("the answer is JSON nested too deeply to read") from None


def match_label(text: str | None, labels: Sequence[str]) -> str | None:
    """The label an answer names, ignoring case, whitespace and punctuation; None if it names none."""
    if text is None:
        return None
    return _label_index(tuple(labels)).get(normalize_label(text))


@lru_cache(maxsize=16)
def _label_index(labels: tuple[str, ...]) -> dict[str, str]:
    """Each label by its normalised form, worked out once per set of labels, not once per answer."""
    index: dict[str, str] = {}
    for label in labels:
        index.setdefault(normalize_label(label), label)
    return index


class AnswerCheck:
    """Judges an answer as it arrives: None when valid, else (error_type, why)."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers

    def rejudge(self, stored: RowOutcome) -> RowOutcome:
        """A stored outcome judged by these checks, when it was judged by others (a changed label
        set, schema or number of re-asks): an answer that passes is ``ok``; one that fails is
        ``pending``, to be asked again (it counts as the first answer of that re-ask), or, with
        no re-asks allowed, an error with today's reason. A failed request stays as it was."""
        if stored.status != OK and stored.error_type not in (INVALID_LABEL, INVALID_OUTPUT):
            return stored  # a request that failed: no answer to judge
        verdict = self(stored.response) if self.answers.checked else None
        if verdict is None:
            return replace(stored, status=OK, error_type=None, error=None)
        if self.answers.invalid_retries:
            return RowOutcome(stored.row, stored.key, PENDING, 0, stored.model)
        error_type, why = verdict
        return replace(stored, status=ERROR, error_type=error_type, error=why)

    def __call__(self, content: str | None) -> tuple[str, str] | None:
        answers = self.answers
        if answers.labels:
            if match_label(content, answers.labels) is None:
                return INVALID_LABEL, f"the answer {_quoted(content)} is none of the labels {', '.join(answers.labels)}"
            return None
        if answers.json_required:
            try:
                value = parse_json_answer(content)
            except NotJSON as e:
                return INVALID_OUTPUT, str(e)
            try:
                problem = validate(value, answers.schema) if answers.schema is not None else None
            except RecursionError:
                problem = "nested too deeply to check"
            if problem is None and answers.schema is None and not isinstance(value, dict):
                problem = "expected a JSON object"
            if problem:
                return INVALID_OUTPUT, f"the answer does not match the schema: {problem}"
        return None


def _quoted(text: str | None) -> str:
    if text is None:
        return "(empty)"
    text = " ".join(text.split())
    return json.dumps(text if len(text) <= SHOWN else text[: SHOWN - 3] + "...", ensure_ascii=False)


@dataclass(frozen=True)
class Derived:
    """The columns a job adds from each answer, after the standard outcome columns."""

    answers: Answers
    scoring: Scoring
    variants: bool
    transcripts: bool
    prices: Prices = field(default_factory=lambda: NO_PRICES)

    @classmethod
    def of(cls, job: Job) -> Derived:
        return cls(
            answers=job.answers,
            scoring=job.scoring,
            variants=bool(job.variants),
            transcripts=job.prompt.turns_column is not None,
            prices=job.paid_prices,
        )

    @cached_property
    def out_fields(self) -> tuple[tuple[str, str], ...]:
        """Read from the schema once: every output row asks for them."""
        return output_fields(self.answers.schema)

    def columns(self) -> list[tuple[str, str]]:
        """(name, kind) in output order; kind is string, int64, float64 or bool."""
        columns = [("variant", "string")] if self.variants else []
        columns += [(f"out_{name}", _KINDS.get(kind, "string")) for name, kind in self.out_fields]
        if self.answers.labels:
            columns.append(("label", "string"))
        if self.scoring.expected_column:
            columns.append(("score", "float64"))
        if self.transcripts:
            columns.append(("transcript", "string"))
        columns += [("cost", "float64"), ("paid", "string")]
        return columns

    def cost(self, outcome: RowOutcome, model: str) -> float | None:
        """US dollars this row's answers cost (re-asks and turns included), as its token cells
        say, whoever paid (``paid``); None without a price, or when the server did not say how
        many tokens; 0 for a row that got no answer."""
        price = self.prices.get(model)
        if price is None:
            return None
        prompt, completion = outcome.prompt_tokens, outcome.completion_tokens
        if prompt is None and completion is None:
            return None if outcome.status == OK and outcome.response is not None else 0.0
        return None if prompt is None or completion is None else price.cost(prompt, completion)  # a part unknown

    def values(self, status: str | None, response: str | None, error_type: str | None, expected: Any) -> dict[str, Any]:
        """The derived cells of one output row (the variant and transcript are the caller's)."""
        ok = status == "ok"
        cells: dict[str, Any] = {}
        parsed: Any = None
        if self.out_fields:
            try:
                parsed = parse_json_answer(response) if ok else None
            except NotJSON:
                parsed = None
            for name, kind in self.out_fields:
                value = parsed.get(name) if isinstance(parsed, dict) else None
                try:
                    cells[f"out_{name}"] = _cell(value, _KINDS.get(kind, "string"))
                except RecursionError:  # nested past writing as JSON text
                    cells[f"out_{name}"] = None
        label = match_label(response, self.answers.labels) if ok and self.answers.labels else None
        if self.answers.labels:
            cells["label"] = label
        if self.scoring.expected_column:
            cells["score"] = self._score(ok, label if self.answers.labels else response, error_type, expected)
        return cells

    def _score(self, ok: bool, answer: str | None, error_type: str | None, expected: Any) -> float | None:
        """1 or 0; 0 for an answer that never became valid (the model's fault); None when there is
        nothing to score: no expected answer, a row not finished, or a request that failed."""
        if expected is None or (isinstance(expected, str) and not expected.strip()):
            return None
        if not ok:
            return 0.0 if error_type in (INVALID_OUTPUT, INVALID_LABEL) else None
        return 1.0 if score(self.scoring.method, answer, expected, labels=bool(self.answers.labels)) else 0.0


def derive_batch(derived: Derived, batch: pa.RecordBatch, outcomes: Sequence[RowOutcome],
                 slots: Sequence[tuple[str, str | None]], paid: Sequence[str | None]) -> dict[str, list[Any]]:  # fmt: skip
    """The derived cells (``Derived.columns``) of the output rows of ``batch``: ``outcomes`` holds
    each input row's outcomes, one per (model, variant) of ``slots`` in order; ``paid`` says who
    paid for each row's request (``stats.PAID``; None for a row that asked nothing)."""
    fanout = len(slots)
    names = [name for name, _ in derived.columns()]
    derives = bool(derived.out_fields or derived.answers.labels or derived.scoring.expected_column)
    expected_column = derived.scoring.expected_column
    expected = batch.column(expected_column).to_pylist() if expected_column else None
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for i, outcome in enumerate(outcomes):
        model, variant = slots[i % fanout]
        cells = (
            derived.values(outcome.status, outcome.response, outcome.error_type,
                           expected[i // fanout] if expected is not None else None)
            if derives
            else {}
        )  # fmt: skip
        cells["cost"] = derived.cost(outcome, model)
        cells["paid"] = paid[i]
        if derived.variants:
            cells["variant"] = variant
        if derived.transcripts:
            cells["transcript"] = outcome.transcript
        for name in names:
            columns[name].append(cells.get(name))
    return columns


def _contains(answer: str, expected: str) -> bool:
    want = " ".join(expected.casefold().split())
    if not want:
        return False
    return _whole(want).search(" ".join(answer.casefold().split())) is not None


@lru_cache(maxsize=4096)
def _whole(text: str) -> re.Pattern[str]:
    """``text`` standing on its own: not inside a longer word, and a number not inside a longer
    number, nor negated (``6`` is not in ``16``, ``6.5``, ``6,000`` or ``-6``)."""
    before = r"(?<!\w)" + (r"(?<!\d[.,])(?<![-\u2212])" if text[0].isdigit() else "")
    after = r"(?!\w)" + (r"(?![.,]\d)" if text[-1].isdigit() else "")
    return re.compile(before + re.escape(text) + after)


_KINDS = {"string": "string", "integer": "int64", "number": "float64", "boolean": "bool"}


def _cell(value: Any, kind: str) -> Any:
    """A field of the answer as its column's type; nested values (and mismatches) as JSON text."""
    if value is None:
        return None
    if kind == "int64" and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float):
            if not value.is_integer():
                return None
            value = int(value)
        return value if -(2**63) <= value < 2**63 else None  # past an int64 column: no cell holds it
    if kind == "float64" and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer past any float
            return None
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "string":
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return None


def score(method: str, answer: str | None, expected: Any, *, labels: bool = False) -> bool:
    """Whether ``answer`` is right.

    exact: equal after trimming (for labels, after ignoring case and punctuation); contains: the
    expected text appears in the answer as whole words, ignoring case and runs of whitespace (``6``
    is in "6 sides" and "It is 6." but not in "16", "6.5" or "0x6f"); regex: the expected pattern
    is found in the answer; json_equal: both are the same JSON value (key order and 1 vs 1.0 do
    not matter).
    """
    if answer is None:
        return False
    if method == "json_equal":
        try:
            want = json.loads(expected) if isinstance(expected, str) else expected
            return json_equal(parse_json_answer(answer), want)
        except (NotJSON, json.JSONDecodeError, RecursionError):
            return False
    text = cell_text(expected)
    if method == "exact":
        if labels:
            return normalize_label(answer) == normalize_label(text)
        return answer.strip() == text.strip()
    if method == "contains":
        return _contains(answer, text)
    if method == "regex":
        return re.search(text, answer) is not None
    raise ValueError(f"unknown score method {method!r}")
