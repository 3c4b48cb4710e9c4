"""The lines of a provider batch's result files, read: each an answer (a 2xx, kept whatever its
body holds, read as a live answer is) or an error named as a live answer's error is, tied to the
request by its ``custom_id``. Which of two lines for one request stands (``rank``), and the error
of a request no line answered (``unanswered``)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, NamedTuple

from ..client.chat import ChatClient
from ..core import errors as E
from ..core import jsonio
from ..core.reading import bounded, clean_text, needs_bounds, read_usage, received
from ..core.records import ChatResult, Usage
from ..core.words import plural
from ..providers import read_answer
from ..providers.base import BatchWire

Result = ChatResult | E.RequestError
# An error line's code, as the live error type of the same failure.
LINE_ERRORS = {"server_error": E.SERVER_ERROR, "invalid_request_error": E.BAD_REQUEST, "not_found": E.NOT_FOUND,
               "authentication_error": E.AUTH, "rate_limit_exceeded": E.RATE_LIMITED, "billing_error": E.NO_CREDIT,
               "timeout": E.TIMEOUT, "batch_cancelled": "batch_cancelled",
               "batch_expired": "batch_expired"}  # fmt: skip


class Line(NamedTuple):
    """A result line read: the request it answers (None: it cannot be tied to one), the mark of
    the file it was asked in (where the wire's ids carry one), and its answer or error, with what
    an error line says it used (billed all the same)."""

    custom_id: str | None
    tag: str | None
    result: Result
    used: Usage | None


def read_line(raw: bytes, batch: str, latency: float, chat: ChatClient, wire: BatchWire) -> Line:
    """One line of a batch's results: an answer (a 2xx, kept whatever its body holds), or the
    error the provider gave."""
    try:
        record, fast = jsonio.loads_how(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return Line(None, None, E.RequestError(E.BAD_RESPONSE, "unreadable result line", retryable=False), None)
    if needs_bounds(raw, fast):
        record = bounded(record)
    line = wire.result(record)
    custom_id, status, body = line.custom_id, line.status, line.body
    if not isinstance(custom_id, str) or not custom_id.isascii() or not custom_id:  # ids are request keys
        custom_id = None  # an answer all the same: read, so that what it was paid is counted
    if status is not None and 200 <= status < 300 and not line.error:
        result = chat.cleaned(received(body, latency, read=read_answer))
        shown = f"{batch}/{result.request_id}" if result.request_id else batch
        return Line(custom_id, line.tag, replace(result, request_id=shown), None)
    if custom_id is None:
        return Line(None, line.tag, E.RequestError(E.BAD_RESPONSE, "result line without custom_id", retryable=False),
                    None)  # fmt: skip
    used = read_usage(body.get("usage")) if isinstance(body, dict) and body.get("usage") is not None else None
    return Line(custom_id, line.tag, failure(status, body, line.error, chat), used)


def failure(status: int | None, body: Any, error: Any, chat: ChatClient) -> E.RequestError:
    """An error line's error, named as a live answer's error is where it can be. A batch's
    answer is final: it is not retried (``--retry-errors`` sends it again)."""
    if status is not None:
        refused = chat.dialect.error(status, jsonio.dumps(body), "application/json", None)
        return replace_retry(chat.redacted(refused))
    if isinstance(error, dict):
        code = clean_text(str(error.get("code") or error.get("type") or ""))
        message = clean_text(str(error.get("message") or "the provider gave no reason"))
        kind = LINE_ERRORS.get(code, E.BATCH_ERROR)
        shown = message if kind != E.BATCH_ERROR or not code else f"{code}: {message}"
        return chat.redacted(E.RequestError(kind, shown, retryable=False))
    if isinstance(error, str) and error:
        return chat.redacted(E.RequestError(E.BATCH_ERROR, clean_text(error), retryable=False))
    return E.RequestError(E.BAD_RESPONSE, "a result line with neither response nor error", retryable=False)


def rank(result: Result) -> int:
    """Which of two result lines for one request stands: an answer over an error, and a readable
    answer over one that is not."""
    if isinstance(result, E.RequestError):
        return 0
    return 1 if result.problem is not None else 2


def unanswered(batch: str, status: str, unread: int) -> E.RequestError:
    """The error of a request a finished batch holds and no result line answered."""
    if status == "completed":
        why = f" ({plural(unread, 'result line')} could not be read)" if unread else ""
        return E.RequestError(E.BAD_RESPONSE, f"batch {batch} completed without a result for this request{why}",
                              retryable=False)  # fmt: skip
    return E.RequestError(f"batch_{status}", f"batch {batch} ended {status} before answering this request",
                          retryable=False)  # fmt: skip


def replace_retry(error: E.RequestError) -> E.RequestError:
    """A batch's answer is final: its error is not retried (--retry-errors sends it again)."""
    return E.RequestError(error.error_type, error.message, status=error.status, retryable=False,
                          rate=error.rate, busy=error.busy)  # fmt: skip
