"""The records that travel between stages: immutable, so a stage can never change another's data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, TypeVar

from .errors import BAD_RESPONSE
from .ratehints import RateInfo

T = TypeVar("T")


def quick_init(cls: type[T]) -> type[T]:
    """A frozen, slotted dataclass given an ``__init__`` that writes each slot through its
    descriptor. The one ``dataclasses`` writes calls ``object.__setattr__`` for every field, past
    the frozen class's own ``__setattr__``: about 1,400 machine instructions a field, 27,000 for
    an outcome, made twice for every request (when it is answered, and when the output reads it
    back). This takes half that. Nothing else changes: assigning to a field still raises,
    ``replace``, equality, hashing and ``repr`` are the dataclass's own."""
    declared = fields(cls)  # type: ignore[arg-type]
    if hasattr(cls, "__post_init__") or any(not f.init or f.kw_only is True for f in declared):
        raise TypeError(f"{cls.__name__}: quick_init takes plain positional fields only")
    scope: dict[str, Any] = {"_MISSING": MISSING}
    params, lines = [], []
    for f in declared:
        scope[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is not MISSING:
            scope[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not MISSING:
            scope[f"_factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_MISSING")
            lines.append(f"    if {f.name} is _MISSING: {f.name} = _factory_{f.name}()")
        else:
            params.append(f.name)
        lines.append(f"    _set_{f.name}(self, {f.name})")
    exec(f"def __init__(self, {', '.join(params)}):\n" + "\n".join(lines or ["    pass"]), scope)
    init: Callable[..., None] = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


@quick_init
@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One request to send, tied to the input row it answers.

    ``row`` is the 0-based position of the input row, which is where the answer goes back;
    ``key`` is a stable hash of what is sent, so equal requests can be recognised across runs.
    """

    row: int
    key: str
    model: str
    messages: tuple[dict[str, Any], ...]
    params: tuple[tuple[str, Any], ...] = ()
    turns: tuple[str, ...] = ()  # a scripted conversation: user turns sent one by one after messages

    def body(self) -> dict[str, Any]:
        return {"model": self.model, "messages": list(self.messages), **dict(self.params)}


@dataclass(frozen=True, slots=True)
class InvalidRow:
    """An input row that cannot become a request (an empty prompt): it is answered by an error row."""

    row: int
    model: str
    reason: str


@quick_init
@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class ChatResult:
    """An answer the API gave (and billed), with the timings of the attempt that got it: the
    completion as received (``answer``, what the journal keeps) and what it says, read by
    ``reading.read_completion`` (``received`` makes one). ``problem``: why it says nothing a row
    can use (the row is then a ``bad_response`` error, and the answer is not asked again)."""

    content: str | None
    finish_reason: str | None
    usage: Usage
    request_id: str | None
    model: str | None
    latency_s: float
    ttft_s: float | None = None
    rate: RateInfo | None = None  # what the response said of the provider's limits, for the throttle
    answer: Any = None  # the completion as received (redacted), or None for one known only by its reading
    problem: str | None = None
    notes: tuple[str, ...] = ()  # what was odd in it, and how it was read


# The columns every output row has after the input's, in order (the sink gives their Arrow types).
OUTPUT_COLUMNS = ("response", "finish_reason", "prompt_tokens", "completion_tokens", "total_tokens", "latency_s",
                  "ttft_s", "attempts", "status", "error_type", "error", "model", "request_id")  # fmt: skip

OK = "ok"
ERROR = "error"
PENDING = "pending"  # not finished: the run stopped before this row's request did (in the journal: an
# answer paid for that failed its checks, with re-asks still to go)


@quick_init
@dataclass(frozen=True, slots=True)
class RowOutcome:
    """How one input row ended: exactly the output columns that follow the input columns."""

    row: int
    key: str | None
    status: str
    attempts: int
    model: str | None
    response: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    error_type: str | None = None
    error: str | None = None
    request_id: str | None = None
    transcript: str | None = None  # a scripted conversation's messages, as JSON
    answers: int | None = None  # answers paid for, when more than one (re-asks); not an output column
    rate_limited: int | None = None  # attempts answered 429, when any; not an output column
    answer: Any = None  # the completion as received, which the journal keeps; not an output column

    @classmethod
    def answered(
        cls, request: ChatRequest, result: ChatResult, attempts: int, *, transcript: str | None = None
    ) -> RowOutcome:
        """``model`` is the model asked, not the name the API echoes (which may be a dated
        alias): it is what the row's price and its place in a fan-out are decided by."""
        usage = result.usage
        return cls(
            row=request.row,
            key=request.key,
            status=OK if result.problem is None else ERROR,
            attempts=attempts,
            model=request.model,
            response=result.content,
            finish_reason=result.finish_reason,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            latency_s=result.latency_s,
            ttft_s=result.ttft_s,
            error_type=None if result.problem is None else BAD_RESPONSE,
            error=result.problem,
            request_id=result.request_id,
            transcript=transcript,
            answer=result.answer,
        )

    @classmethod
    def failed(
        cls,
        row: int,
        *,
        key: str | None,
        model: str | None,
        error_type: str,
        error: str,
        attempts: int,
        latency_s: float | None = None,
        transcript: str | None = None,
    ) -> RowOutcome:
        return cls(
            row=row,
            key=key,
            status=ERROR,
            attempts=attempts,
            model=model,
            latency_s=latency_s,
            error_type=error_type,
            error=error,
            transcript=transcript,
        )
