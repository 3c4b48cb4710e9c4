"""The parts of a job that turn a batch into an evaluation or a labeling run.

Fan-out (several models, ``[[variants]]`` of request options), request options taken from the
row, what makes an answer valid (a JSON schema or a fixed set of labels), how answers are scored
against an expected column, and prices. Each is parsed and checked here, before any request.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import JobError
from .schema import check_schema, schema_of
from .values import did_you_mean, number, table, text, whole

# Body fields batchchat sets itself; a user setting them through options would break the run.
RESERVED_PARAMS = {
    "model": "the model is a setting of its own (model)",
    "messages": "messages are built from the input table (prompt column, template or messages column)",
    "stream": "streaming is a setting of its own (stream)",
    "stream_tokens": "streaming is a setting of its own (stream)",
}
SCORES = ("exact", "contains", "regex", "json_equal")
DEFAULT_INVALID_RETRIES = 2


@dataclass(frozen=True)
class Variant:
    """One set of request options every row is also sent with (``[[variants]]``)."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class RowOptions:
    """Request options read from each row, over the job's: named columns, or a JSON-object column."""

    columns: tuple[tuple[str, str], ...] = ()  # (request field, input column)
    json_column: str | None = None


@dataclass(frozen=True)
class Answers:
    """What counts as a valid answer. An invalid one is asked again, then ends as an error row."""

    schema: Mapping[str, Any] | None = None  # from response_format; None for free text
    json_required: bool = False  # response_format asks for JSON (with or without a schema)
    labels: tuple[str, ...] = ()
    invalid_retries: int = DEFAULT_INVALID_RETRIES

    @property
    def checked(self) -> bool:
        return self.json_required or bool(self.labels)

    @property
    def signature(self) -> str:
        """Short for the whole contract an answer is judged by. The journal keeps it beside the
        answers a run stored, so a later run with other checks judges those answers again
        instead of trusting a verdict given under the old ones."""
        if not self.checked:
            return "none"
        contract = [self.labels, self.json_required, self.schema, self.invalid_retries]
        text = json.dumps(contract, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Scoring:
    expected_column: str | None = None
    method: str = "exact"


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens; ``source`` says where the price came from."""

    input: float
    output: float
    source: str = field(default="job", compare=False)

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6


def _positive_int(value: Any) -> str | None:
    return (
        None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1
        else "must be a whole number of at least 1"
    )


def _number_in(low: float, high: float | None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value
        ok = ok and (high is None or value <= high)
        return None if ok else f"must be a number from {low:g}" + (f" to {high:g}" if high is not None else "")

    return check


OPTION_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "max_tokens": _positive_int,
    "temperature": _number_in(0.0, None),
    "top_p": _number_in(0.0, 1.0),
}


def finite(value: Any) -> bool:
    """Whether a JSON value holds no NaN or infinity (no server reads them; JSON has none)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(finite(v) for v in value)
    return True


def check_fields(fields: Iterable[str], at: str) -> None:
    """None of the request fields batchchat sets itself."""
    for key in fields:
        if key in RESERVED_PARAMS:
            raise JobError(f"request option '{key}' cannot be set ({at}): {RESERVED_PARAMS[key]}")


def check_params(params: Mapping[str, Any], at: str) -> None:
    """Request options set for the whole job (``--param``, ``[params]``, a variant): not the
    fields batchchat sets itself, and the common ones within their bounds (a cost cap relies on a
    whole ``max_tokens``)."""
    check_fields(params, at)
    if params.get("n", 1) != 1:
        raise JobError(f"request option n={params['n']!r} ({at}): batchchat keeps one answer per row, so n must be 1")
    for key, value in params.items():
        problem = OPTION_CHECKS[key](value) if key in OPTION_CHECKS else None
        if problem is None and not finite(value):
            problem = "must be a finite number (NaN and Infinity are not JSON)"
        if problem:
            raise JobError(f"request option '{key}' ({at}) {problem}, got {value!r}")


def parse_models(model: Any, models: Any, at: Callable[[str], str],
                 name: Callable[[str], str] = lambda key: f"{key}=") -> tuple[str, ...]:  # fmt: skip
    """``model`` (a name or a list) or ``models`` (a list); not both."""
    if model is not None and models is not None:
        raise JobError(f"both {at('model')} and {at('models')} are set; keep one (either may be a list)")
    key = "model" if model is not None else "models"
    value = model if model is not None else models
    if value is None:
        raise JobError(f"no model: give one with {name('model')} (or 'model' in a job file)")
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names:
        raise JobError(f"{at(key)} must be a model name or a list of them, got {value!r}")
    checked = tuple(text(name, at(key)) or "" for name in names)
    repeated = sorted({name for name in checked if checked.count(name) > 1})
    if repeated:
        raise JobError(f"{at(key)} names {', '.join(map(repr, repeated))} more than once")
    return checked


def parse_variants(value: Any, at: str) -> tuple[Variant, ...]:
    """``[[variants]]``: each an optional ``name`` and request options."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise JobError(f"{at} must be a list of tables ([[variants]] in TOML), got {value!r}")
    variants = []
    for n, entry in enumerate(value, 1):
        where = f"{at}, variant {n}"
        options = table(entry, where)
        name = text(options.pop("name", None), f"{where}: 'name'")
        check_params(options, where)
        if name is None:
            name = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(options.items())) or "default"
        variants.append(Variant(name, tuple(sorted(options.items()))))
    names = [v.name for v in variants]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise JobError(f"{at}: variant name(s) {', '.join(map(repr, repeated))} used twice; give each a unique 'name'")
    return tuple(variants)


def parse_row_options(columns: Any, json_column: Any, at: Callable[[str], str]) -> RowOptions:
    """``option_columns``: a list of columns named like request fields, or a table field -> column."""
    pairs: list[tuple[str, str]] = []
    if columns is not None:
        where = at("option_columns")
        if isinstance(columns, str):
            columns = [c.strip() for c in columns.split(",")]
        if isinstance(columns, list):
            pairs = [(text(c, where) or "", c) for c in columns]
        elif isinstance(columns, Mapping):
            pairs = [(field, text(column, f"{where}.{field}") or "") for field, column in table(columns, where).items()]
        else:
            raise JobError(f"{where} must be a list of column names or a table of field = column, got {columns!r}")
        check_fields((field for field, _ in pairs), where)
    return RowOptions(tuple(pairs), text(json_column, at("options_column")))


def parse_answers(
    response_format: Any, json_schema: Any, labels: Any, retries: Any, at: Callable[[str], str]
) -> tuple[Answers, dict[str, Any] | None]:
    """What a valid answer is, and the ``response_format`` request field that asks for it."""
    if response_format is not None and json_schema is not None:
        raise JobError(
            f"both {at('response_format')} and {at('json_schema')} are set; json_schema is a short "
            "way to write response_format, keep one"
        )
    if json_schema is not None:
        schema = table(json_schema, at("json_schema"))
        response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    elif response_format is not None:
        response_format = table(response_format, at("response_format"))
    schema = None
    where = at("json_schema" if json_schema is not None else "response_format")
    if response_format is not None:
        kind = response_format.get("type")
        if kind not in ("json_object", "json_schema", "text"):
            raise JobError(f"{where}: 'type' must be json_object, json_schema or text, got {kind!r}")
        schema = schema_of(response_format)
        if kind == "json_schema" and schema is None:
            raise JobError(f"{where}: a json_schema response_format needs its schema under json_schema.schema")
        if schema is not None:
            check_schema(schema, where)
    label_list = _labels(labels, at("labels"))
    json_required = response_format is not None and response_format.get("type") != "text"
    if label_list and json_required:
        raise JobError(
            f"both {at('labels')} and {where} are set; use one (for a label inside a JSON answer, give "
            "its field an enum in the schema)"
        )
    answers = Answers(
        schema=schema,
        json_required=json_required,
        labels=label_list,
        invalid_retries=whole(retries, at("invalid_retries"), 0, 100)
        if retries is not None
        else DEFAULT_INVALID_RETRIES,
    )
    return answers, response_format


def _labels(value: Any, at: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, list) or not value:
        raise JobError(f'{at} must be a list of labels, e.g. ["positive", "negative"], got {value!r}')
    labels = tuple(text(label, at) or "" for label in value)
    seen: dict[str, str] = {}
    for label in labels:
        key = normalize_label(label)
        if not key:
            raise JobError(f"{at}: label {label!r} has no letters or digits, so no answer could match it")
        if key in seen:
            raise JobError(
                f"{at}: labels {seen[key]!r} and {label!r} are the same once case and punctuation are ignored"
            )
        seen[key] = label
    return labels


def normalize_label(text: str) -> str:
    """Case, whitespace and punctuation do not matter: ' Positive.' is 'positive'."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", text).casefold().split())


def parse_scoring(expected: Any, method: Any, at: Callable[[str], str],
                  name: Callable[[str], str] = lambda key: f"{key}=") -> Scoring:  # fmt: skip
    column = text(expected, at("expected_column"))
    score = text(method, at("score"))
    if score is not None and score not in SCORES:
        raise JobError(
            f"{at('score')}: unknown score '{score}'; use one of {', '.join(SCORES)}{did_you_mean(score, SCORES)}"
        )
    if score is not None and column is None:
        raise JobError(f"{at('score')} needs the column of expected answers: set {name('expected_column')}")
    return Scoring(column, score or "exact")


def parse_prices(value: Any, at: str) -> tuple[tuple[str, Price], ...]:
    """``[prices]``: ``"model" = { input = 0.88, output = 0.88 }``, dollars per million tokens."""
    if value is None:
        return ()
    prices = []
    for model, entry in table(value, at).items():
        where = f"{at}.{json.dumps(model)}"
        pair = table(entry, where)
        unknown = sorted(set(pair) - {"input", "output"})
        if unknown or set(pair) != {"input", "output"}:
            raise JobError(f"{where} must be {{ input = USD, output = USD }} per million tokens, got {entry!r}")
        prices.append((model, Price(
            input=number(pair["input"], f"{where}.input", 0.0) or 0.0,
            output=number(pair["output"], f"{where}.output", 0.0) or 0.0,
        )))  # fmt: skip
    return tuple(prices)
