"""A finished request as the journal stores it: which fields a record holds, how an outcome is
written (``record_of``) and read back (``outcome_of``), and whether a record read from disk has
the shape and types batchchat writes (``valid_record``), so that reading it can neither crash a
run nor put a wrong cell in the output."""

from __future__ import annotations

import math
from dataclasses import fields
from operator import attrgetter
from typing import Any

from ..core.records import ERROR, OK, PENDING, RowOutcome
from ..providers import read_answer

# Everything of an outcome but its row: rows asking the same thing share one record.
RECORD_FIELDS = tuple(f.name for f in fields(RowOutcome) if f.name != "row")
assert fields(RowOutcome)[0].name == "row"  # the rest, in order, are RECORD_FIELDS: ``outcome_of`` passes them by place
# What an answer's record leaves to the answer itself: read from it (``reading``) when read back.
READ_FROM_ANSWER = ("response", "finish_reason")
TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")
STATUSES = (OK, ERROR, PENDING)  # pending: an answer paid for, failing its checks, with re-asks to go
INT32 = 2**31 - 1
INT64 = 2**63 - 1
TEXT_FIELDS = ("model", "response", "finish_reason", "error_type", "error", "request_id", "transcript")
COUNT_FIELDS = {"attempts": INT32, "rate_limited": INT32, "answers": INT32,
                "prompt_tokens": INT64, "completion_tokens": INT64, "total_tokens": INT64}  # fmt: skip


def valid_record(record: dict[str, Any]) -> bool:
    """Whether a record has the shape and types batchchat writes, so that reading it back can
    neither crash a run nor put a wrong cell in the output."""
    if not isinstance(record.get("key"), str) or not record["key"] or record.get("status") not in STATUSES:
        return False
    if record["status"] == ERROR and not isinstance(record.get("error_type"), str):
        return False
    if any(not isinstance(record.get(name, ""), str) for name in TEXT_FIELDS if record.get(name) is not None):
        return False
    for name, top in COUNT_FIELDS.items():
        value = record.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top):
            return False
    for name in ("latency_s", "ttft_s"):
        value = record.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):  # fmt: skip
            return False
    return record.get("attempts") is not None


def record_of(outcome: RowOutcome) -> dict[str, Any]:
    """An outcome as a journal record. Fields left out are null: an answer has no error, an error
    no answer. An answer's record holds the completion as received, and leaves out what is read
    from it: its text and finish reason, its tokens (unless the row paid for several answers),
    its id (unless the engine named it otherwise)."""
    record = {name: value for name, value in zip(RECORD_FIELDS, _record_values(outcome), strict=True) if value is not None}
    answer = outcome.answer
    if answer is not None:
        for name in READ_FROM_ANSWER:
            record.pop(name, None)
        if outcome.answers is None and outcome.transcript is None:
            for name in TOKEN_FIELDS:
                record.pop(name, None)
        if isinstance(answer, dict) and outcome.request_id == answer.get("id"):
            record.pop("request_id", None)
    return record


def outcome_of(record: dict[str, Any], answers: bool = False) -> RowOutcome:
    """A record read back (checked by ``valid_record``); an answer's fields read from the answer
    it keeps, by the same rules as when it arrived."""
    get = record.get
    values: list[Any] = [get(name) for name in RECORD_FIELDS]  # by place, not by name: the output reads every record
    answer = values[_ANSWER]
    if answer is not None:
        reading = read_answer(answer)
        values[_RESPONSE], values[_FINISH_REASON] = reading.content, reading.finish_reason
        if values[_PROMPT_TOKENS] is None and values[_COMPLETION_TOKENS] is None and values[_TOTAL_TOKENS] is None:
            usage = reading.usage
            values[_PROMPT_TOKENS], values[_COMPLETION_TOKENS] = usage.prompt_tokens, usage.completion_tokens
            values[_TOTAL_TOKENS] = usage.total_tokens
        if values[_REQUEST_ID] is None:
            values[_REQUEST_ID] = reading.request_id
        if not answers:
            values[_ANSWER] = None
    return RowOutcome(-1, *values)


_record_values = attrgetter(*RECORD_FIELDS)
_ANSWER, _RESPONSE, _FINISH_REASON, _REQUEST_ID = map(RECORD_FIELDS.index, ("answer", "response", "finish_reason", "request_id"))
_PROMPT_TOKENS, _COMPLETION_TOKENS, _TOTAL_TOKENS = map(RECORD_FIELDS.index, TOKEN_FIELDS)


