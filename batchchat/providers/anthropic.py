"""Anthropic's Messages API, the second wire format.

``POST {base}/messages`` with ``x-api-key`` and ``anthropic-version``; the system prompt goes at
the top level and ``max_tokens`` is required; an answer is a ``message`` whose ``content`` is a
list of blocks; a stream is named events (``message_start``, ``content_block_delta``,
``message_delta`` with the stop reason and usage, ``message_stop``; ``ping`` at any time; an
``error`` event may come mid-stream); errors are ``{"type": "error", "error": {...}}``, 529 when
overloaded; limits are ``anthropic-ratelimit-*`` with RFC 3339 resets.

The output table is the same as for any provider: a row's ``finish_reason`` is said in the
chat-completions words (``end_turn`` and ``stop_sequence`` are ``stop``, ``max_tokens`` is
``length``, ``tool_use`` is ``tool_calls``, ``refusal`` is ``content_filter``; any other as it
came), and its prompt tokens count the cached ones too. The answer itself is kept as received.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..core import errors as E
from ..core import jsonio
from ..core.ratehints import RateInfo
from ..core.reading import (
    NOT_TEXT_FINISH,
    Reading,
    bounded,
    clean_text,
    guarded,
    json_text,
    needs_bounds,
    read_content,
    read_count,
    read_id,
    received,
    shown,
)
from ..core.records import ChatRequest, ChatResult, Usage
from ..core.sse import Event
from .base import (
    HTTP_ERRORS,
    BatchInfo,
    ResultLine,
    ServerWire,
    count_header,
    cut,
    error_json,
    kept_headers,
    parse_answer,
    retry_after_s,
    should_retry,
    snippet,
)

VERSION = "2023-06-01"
# Anthropic requires max_tokens; a job that sets none gets this many (every current model allows it).
DEFAULT_MAX_TOKENS = 4096
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "refusal": "content_filter"}  # fmt: skip
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}  # the simulator's finish, said back
STATUS_ERRORS = {**HTTP_ERRORS, 413: (E.BAD_REQUEST, False)}  # request_too_large
OVERLOADED = 529
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}  # fmt: skip
RATE_PREFIX = "anthropic-ratelimit-"
# Chat-completions options the Messages API does not take (it answers them 400, every row).
REFUSED = {
    "system": "the system prompt is a setting of its own (system), sent at the top level",
    "response_format": "the Messages API has no response_format; ask for the JSON in the prompt, or use labels",
    "seed": "the Messages API has no seed", "n": "the Messages API gives one answer a request",
    "presence_penalty": "the Messages API has no presence_penalty",
    "frequency_penalty": "the Messages API has no frequency_penalty", "logprobs": "the Messages API has no logprobs",
    "top_logprobs": "the Messages API has no logprobs", "logit_bias": "the Messages API has no logit_bias",
    "user": "the Messages API takes metadata = {user_id = ...} instead",
    "stream_options": "streams always carry usage in the Messages API",
}  # fmt: skip
# The field each kind of content delta adds to its block.
DELTA_FIELDS = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature",
                "input_json_delta": "partial_json"}  # fmt: skip


class AnthropicDialect:
    name = "anthropic"
    path = "/messages"
    max_tokens_sent: int | None = DEFAULT_MAX_TOKENS

    def __init__(self) -> None:
        self.server: ServerWire = AnthropicServer()
        self.reader: Callable[[Any], Reading] = read_message

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key, "anthropic-version": VERSION}

    def body(self, request: ChatRequest, stream: bool, stream_usage: bool) -> dict[str, Any]:
        return message_body(request, stream)

    def answer(self, body: bytes, latency_s: float, rate: RateInfo | None) -> ChatResult:
        return parse_answer(body, latency_s, rate, self.reader,
                            lambda data: _error_of(200, data) if data.get("type") == "error" else None)

    def stream(self, on_text: Callable[[str], None] | None) -> MessageStream:
        return MessageStream(on_text)

    def error(self, status: int, body: bytes, content_type: str, rate: RateInfo | None) -> E.RequestError:
        data = error_json(body, content_type)
        if isinstance(data, dict) and "error" in data:
            return _error_of(status, data, rate)
        error_type, retryable = STATUS_ERRORS.get(status, (E.SERVER_ERROR, True) if status >= 500 else (E.HTTP_ERROR, False))
        if rate is not None and rate.should_retry is not None:
            retryable = rate.should_retry
        detail = snippet(body, html="html" in content_type.lower())
        return E.RequestError(error_type, f"HTTP {status}: {detail}", status=status, retryable=retryable, rate=rate,
                              busy=status in (503, OVERLOADED))  # fmt: skip

    def rate(self, headers: Mapping[str, str]) -> RateInfo | None:
        kept = kept_headers(headers, (RATE_PREFIX, "retry-after", "x-should-retry"))
        return rate_of(kept) if kept else None

    def claims(self, answer: Any) -> bool:
        """A message: its content a list of blocks, and no chat-completions ``choices`` beside
        (an OpenAI-compatible server's answer that says ``"type": "message"`` is not one)."""
        return (type(answer) is dict and answer.get("type") == "message" and isinstance(answer.get("content"), list)
                and "choices" not in answer)  # fmt: skip

    def read(self, answer: Any) -> Reading:
        return read_message(answer)

    def refused(self, option: str) -> str | None:
        return REFUSED.get(option)

    def with_text(self, answer: dict[str, Any], text: str) -> dict[str, Any]:
        blocks = [block for block in answer.get("content") or () if not (isinstance(block, dict) and block.get("type") == "text")]
        return {**answer, "content": [{"type": "text", "text": text}, *blocks]}


# --- requests ------------------------------------------------------------------------------------


def message_body(request: ChatRequest, stream: bool = False) -> dict[str, Any]:
    """A chat request as a Messages body: system messages at the top level, content parts as
    blocks (an ``image_url`` as an image block), ``stop`` as ``stop_sequences``, and
    ``max_tokens`` always set."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        content = message.get("content")
        if message.get("role") == "system":
            system.append(content if isinstance(content, str) else "".join(
                part.get("text", "") for part in content or () if isinstance(part, dict)))  # fmt: skip
            continue
        messages.append({"role": message.get("role"), "content": _blocks(content)})
    body: dict[str, Any] = {"model": request.model, "max_tokens": DEFAULT_MAX_TOKENS, "messages": messages}
    if system:
        body["system"] = "\n\n".join(system)
    for name, value in request.params:
        if name in ("max_tokens", "max_completion_tokens"):
            body["max_tokens"] = value
        elif name == "stop":
            body["stop_sequences"] = [value] if isinstance(value, str) else value
        else:
            body[name] = value
    if stream:
        body["stream"] = True
    return body


def _blocks(content: Any) -> Any:
    if not isinstance(content, list):
        return content
    return [_block(part) for part in content]


def _block(part: Any) -> Any:
    if not (isinstance(part, dict) and part.get("type") == "image_url"):
        return part
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url.startswith("data:") and ";base64," in url:
        media_type, data = url[len("data:"):].split(";base64,", 1)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


# --- answers -------------------------------------------------------------------------------------


def read_message(answer: Any) -> Reading:
    """A message (or a streamed one, as ``MessageStream`` keeps it) read; never raises."""
    return guarded(_read, answer)


def _read(answer: Any, notes: list[str]) -> Reading:
    if type(answer) is not dict:
        return Reading(problem=f"the answer is not a JSON object: {shown(answer)}")
    get = answer.get
    request_id, model = read_id(get("id"), notes), read_id(get("model"), notes)
    usage = read_usage(get("usage"), notes)
    kind, content = get("type"), get("content")
    problem = None
    if kind != "message":
        problem = f"a {shown(kind, 40)} instead of a message"
    elif type(content) is not list:
        problem = f"the message has no content blocks: {shown(answer)}"
    if problem is not None or type(content) is not list:
        return Reading(None, None, usage, request_id, model, problem, tuple(dict.fromkeys(notes)))
    texts = [block["text"] if type(block["text"]) is str else read_content(block["text"], notes) or ""
             for block in content if type(block) is dict and block.get("type") == "text" and "text" in block]  # fmt: skip
    text = clean_text("".join(texts), notes) if texts or not content else None  # tool use alone: no text
    reason = get("stop_reason")
    finish: str | None
    if reason is None or type(reason) is str:
        finish = FINISH.get(reason, reason) if reason is not None else None
    else:
        notes.append(NOT_TEXT_FINISH)
        finish = json_text(reason)
    if finish is not None and not finish.isascii():
        finish = clean_text(finish, notes)
    return Reading(text, finish, usage, request_id, model, None, tuple(dict.fromkeys(notes)) if notes else ())


def read_usage(usage: Any, notes: list[str]) -> Usage:
    """Input tokens (those written to and read from the cache included) and output tokens."""
    if type(usage) is not dict:
        return Usage()
    prompt = read_count(usage.get("input_tokens"), notes)
    if prompt is not None:
        for cached in ("cache_creation_input_tokens", "cache_read_input_tokens"):
            extra = read_count(usage.get(cached), notes)
            prompt += extra or 0
    completion = read_count(usage.get("output_tokens"), notes)
    total = prompt + completion if prompt is not None and completion is not None else None
    return Usage(prompt, completion, total)


class MessageStream:
    """The events of a streamed message into the message they make.

    It counts only once the stop reason has come (``message_delta``, which carries the usage too)
    or ``message_stop``: anything less may be cut short. An ``error`` event before then fails the
    attempt (an overloaded one as the provider being short of capacity). What follows a whole
    answer is ignored: it was delivered and paid for.

    The deltas are kept as they came: each block's pieces joined where all are text, else kept as
    the list they make; deltas of kinds not known here (citations ...) kept whole on their block.
    Nothing in the events can make assembling them fail: the answer was paid for, and a value no
    rule foresaw is the row's error when the answer is read, never a crash.
    """

    def __init__(self, on_text: Callable[[str], None] | None = None) -> None:
        self.on_text = on_text
        self.message: dict[str, Any] = {}
        self.blocks: dict[Any, dict[str, Any]] = {}  # index -> the block as content_block_start gave it
        self.pieces: dict[Any, dict[str, list[Any]]] = {}  # index -> field -> the deltas' values, in order
        self.others: dict[Any, list[Any]] = {}  # index -> deltas of other kinds, whole
        self.order: list[Any] = []  # the blocks' indexes, as they first came
        self.stop_reason: Any = None
        self.stop_sequence: Any = None
        self.usage: dict[str, Any] = {}
        self.stopped = False
        self.delta_seen = False
        self.ttft_s: float | None = None

    @property
    def complete(self) -> bool:
        return self.stop_reason is not None and (self.delta_seen or self.stopped)

    def add(self, event: Event, elapsed_s: float) -> None:
        if self.complete:
            return
        try:
            data, fast = jsonio.loads_how(event.data)
        except (json.JSONDecodeError, RecursionError):
            data, fast = None, True
        if not isinstance(data, dict):
            if event.event == "ping":
                return
            raise E.RequestError(E.BAD_RESPONSE, "malformed stream event: "
                                 f"{snippet(event.data.encode('utf-8', 'replace'))}", retryable=True)  # fmt: skip
        if needs_bounds(event.data, fast):
            data = bounded(data)
        kind = data.get("type", event.event)
        if kind == "error":
            raise _error_of(200, data, stream=True)
        if kind == "message_start" and isinstance(data.get("message"), dict):
            self.message = data["message"]
            if isinstance(self.message.get("usage"), dict):
                self.usage.update(self.message["usage"])
        elif kind == "content_block_start" and isinstance(data.get("content_block"), dict):
            self._seen(_index(data))
            self.blocks[_index(data)] = dict(data["content_block"])
        elif kind == "content_block_delta" and isinstance(data.get("delta"), dict):
            self._seen(_index(data))
            self._delta(_index(data), data["delta"], elapsed_s)
        elif kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict):
                self.stop_reason = delta.get("stop_reason", self.stop_reason)
                self.stop_sequence = delta.get("stop_sequence", self.stop_sequence)
            if isinstance(data.get("usage"), dict):
                self.usage.update(data["usage"])
            self.delta_seen = self.stop_reason is not None
        elif kind == "message_stop":
            self.stopped = True

    def _seen(self, index: Any) -> None:
        if index not in self.blocks and index not in self.pieces and index not in self.others:
            self.order.append(index)

    def _delta(self, index: Any, delta: dict[str, Any], elapsed_s: float) -> None:
        kind = delta.get("type")
        field = DELTA_FIELDS.get(kind) if isinstance(kind, str) else None
        if field is None or field not in delta:
            self.others.setdefault(index, []).append(delta)
            return
        piece = delta[field]
        self.pieces.setdefault(index, {}).setdefault(field, []).append(piece)
        if field == "text" and isinstance(piece, str) and piece:
            if self.ttft_s is None:
                self.ttft_s = elapsed_s
            if self.on_text is not None:
                self.on_text(piece)

    def answer(self) -> dict[str, Any]:
        """The message the events made, in the shape of a whole answer."""
        blocks = []
        for index in self.order:
            block = dict(self.blocks.get(index) or {"type": "text"})
            for field, pieces in self.pieces.get(index, {}).items():
                start = block.get(field)
                parts = ([start] if start is not None and start != "" else []) + pieces
                block[field] = "".join(parts) if all(isinstance(p, str) for p in parts) else parts
            if "partial_json" in block:  # a tool's input, streamed as JSON text
                text = block.pop("partial_json")
                try:
                    block["input"] = json.loads(text) if isinstance(text, str) and text else block.get("input", {})
                except (json.JSONDecodeError, RecursionError):
                    block["input_text"] = text  # kept as it came
                if not isinstance(text, str):
                    block["input_text"] = text
            if index in self.others:
                block["deltas"] = self.others[index]  # kept as they came
            blocks.append(block)
        return {**self.message, "type": "message", "content": blocks, "stop_reason": self.stop_reason,
                "stop_sequence": self.stop_sequence, "usage": self.usage}  # fmt: skip

    def result(self, latency_s: float, rate: RateInfo | None) -> ChatResult:
        if not self.complete:
            raise E.RequestError(E.STREAM_TRUNCATED, "stream ended without its stop reason (message_delta)",
                                 status=200, retryable=True)  # fmt: skip
        try:
            answer = self.answer()
        except Exception as e:  # paid for all the same: kept, and its row says it could not be read
            answer = {**self.message, "type": "message", "content": None, "stop_reason": self.stop_reason,
                      "usage": self.usage, "unassembled": f"{type(e).__name__}: {str(e)[:120]}"}  # fmt: skip
        return received(answer, latency_s, self.ttft_s, rate, read_message)


def _index(data: dict[str, Any]) -> Any:
    index = data.get("index", 0)
    return index if isinstance(index, int | str) else 0


def _error_of(status: int, data: dict[str, Any], rate: RateInfo | None = None, stream: bool = False) -> E.RequestError:
    error = data.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    text = clean_text(cut(str(message or kind or json_text(error)), 500))
    busy = kind == "overloaded_error" or status in (503, OVERLOADED)
    if status == 200:
        where = "error in the stream" if stream else "HTTP 200 carrying an error"
        return E.RequestError(E.SERVER_ERROR, f"{where}: {text}", status=200, retryable=True, busy=busy)
    error_type, retryable = STATUS_ERRORS.get(status, (E.SERVER_ERROR, True) if status >= 500 else (E.HTTP_ERROR, False))
    if kind == "billing_error" or "credit balance is too low" in text.lower():
        error_type, retryable = E.NO_CREDIT, False
    elif rate is not None and rate.should_retry is not None:  # the server's explicit word, as its SDK obeys
        retryable = rate.should_retry
    return E.RequestError(error_type, f"HTTP {status}: {text}", status=status, retryable=retryable, rate=rate, busy=busy)


def rate_of(headers: Mapping[str, str], now: float | None = None) -> RateInfo:
    """``anthropic-ratelimit-{requests,tokens,input-tokens}-{limit,remaining,reset}`` (lower-case
    names; resets are RFC 3339 times) and ``retry-after``."""

    def reset(*names: str) -> float | None:
        for name in names:
            when = epoch(headers[name]) if name in headers else None
            if when is not None:
                return max(0.0, when - (time.time() if now is None else now))
        return None

    tokens = ("tokens", "input-tokens")
    return RateInfo(
        request_limit=count_header(headers, RATE_PREFIX + "requests-limit"),
        requests_remaining=count_header(headers, RATE_PREFIX + "requests-remaining"),
        requests_reset_s=reset(RATE_PREFIX + "requests-reset"),
        token_limit=count_header(headers, *(f"{RATE_PREFIX}{t}-limit" for t in tokens)),
        tokens_remaining=count_header(headers, *(f"{RATE_PREFIX}{t}-remaining" for t in tokens)),
        tokens_reset_s=reset(*(f"{RATE_PREFIX}{t}-reset" for t in tokens)),
        wait_s=retry_after_s(headers, now),
        should_retry=should_retry(headers),
    )


def epoch(text: Any) -> float | None:
    """An RFC 3339 time as epoch seconds (UTC unless it says otherwise); None if it is none."""
    if not isinstance(text, str):
        return None
    try:
        stamp = datetime.fromisoformat(text.strip().upper().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)).timestamp()


# --- Message Batches ---------------------------------------------------------------------------

ERROR_STATUS = {kind: status for status, kind in ERROR_TYPES.items()} | {"overloaded_error": OVERLOADED}
# A result that is no answer, as a batch's end names it (``errors.BATCH_ERROR``'s kin).
ENDED_RESULTS = {"canceled": ("batch_cancelled", "cancelled before it was answered"),
                 "expired": ("batch_expired", "the batch expired before it was answered")}  # fmt: skip


class AnthropicBatches:
    """Message Batches: the requests go inline in the create call (``{"requests": [{custom_id,
    params}]}``), a batch is ``in_progress``, ``canceling`` or ``ended`` with counts per result
    type, and its results are JSONL at ``results_url``, one ``succeeded``, ``errored``,
    ``canceled`` or ``expired`` result per request.

    A batch says nothing of what it holds (no input file, no metadata), so the batch a create
    made, when its answer was lost, can only be one made while the create was under way,
    holding as many requests; it is proved the file's by its results, whose ids carry the file's
    ``tag``: ``TAG-KEY``. Two outputs asking the same requests then still tell their batches
    apart. A ``custom_id`` may hold only letters, digits, ``_`` and ``-``: a re-ask's ``key.2``
    is sent as ``TAG-key_2``."""

    name = "anthropic"
    inline = True
    names_its_file = False
    purpose = ""
    batches = "/messages/batches"
    after = "after_id"

    def line(self, request: ChatRequest, tag: str) -> bytes:
        record = {"custom_id": f"{tag}-{request.key.replace('.', '_')}", "params": message_body(request)}
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"

    def create(self, file_id: str, lines: bytes) -> bytes:
        return b'{"requests":[' + b",".join(lines.splitlines()) + b"]}"

    def batch(self, data: Any) -> BatchInfo:
        if not isinstance(data, Mapping) or not isinstance(data.get("id"), str):
            raise E.RequestError(E.BAD_RESPONSE, f"not a message batch: {cut(str(data), 200)}", retryable=True)
        state = data.get("processing_status")
        if state not in ("in_progress", "canceling", "ended"):
            raise E.RequestError(E.BAD_RESPONSE, f"not a message batch: {cut(str(data), 200)}", retryable=True)
        found = data.get("request_counts")
        counts = {kind: value for kind, value in (found.items() if isinstance(found, Mapping) else ())
                  if isinstance(value, int) and not isinstance(value, bool) and value >= 0}  # fmt: skip
        total = sum(counts.values()) if counts else None
        processing = counts.get("processing", 0)
        failed = sum(counts.get(kind, 0) for kind in ("errored", "canceled", "expired"))
        cancelled = data.get("cancel_initiated_at") is not None
        status = {"in_progress": "in_progress", "canceling": "cancelling"}.get(state) or (
            "cancelled" if cancelled else "completed")  # fmt: skip
        url = data.get("results_url")
        return BatchInfo(id=data["id"], status=status, total=total,
                         done=None if total is None else total - processing, failed=failed if counts else None,
                         results_url=url if isinstance(url, str) and url else None,
                         created_at=epoch(data.get("created_at")))  # fmt: skip

    def results(self, info: BatchInfo) -> list[str]:
        """Read from the API's own URL, whatever host ``results_url`` names (through a gateway it
        names Anthropic's, where the key must not go)."""
        return [f"{self.batches}/{info.id}/results"] if info.results_url else []

    def result(self, record: Any) -> ResultLine:
        if not isinstance(record, dict):
            return ResultLine(None, None, None, None)
        custom_id = record.get("custom_id")
        if not isinstance(custom_id, str):  # read all the same: an answer without an id is paid
            return self._result(None, record.get("result"))
        ours = OUR_ID.fullmatch(custom_id)
        if ours is None:  # not an id batchchat writes: another's line, marked as such
            return ResultLine(None, None, None, None, FOREIGN_TAG)
        line = self._result(ours[2].replace("_", "."), record.get("result"))  # the id as batchchat asked it
        return ResultLine(line.custom_id, line.status, line.body, line.error, ours[1])

    def _result(self, custom_id: str | None, result: Any) -> ResultLine:
        kind = result.get("type") if isinstance(result, dict) else None
        if kind == "succeeded" and isinstance(result, dict):
            return ResultLine(custom_id, 200, result.get("message"), None)
        if kind == "errored" and isinstance(result, dict):
            error = result.get("error")
            inner = error.get("error") if isinstance(error, dict) and isinstance(error.get("error"), dict) else error
            status = ERROR_STATUS.get(str(inner.get("type"))) if isinstance(inner, dict) else None
            if status is not None:
                return ResultLine(custom_id, status, {"type": "error", "error": inner}, None)
            return ResultLine(custom_id, None, None, inner)
        if kind in ENDED_RESULTS:
            code, message = ENDED_RESULTS[kind]
            return ResultLine(custom_id, None, None, {"code": code, "message": message})
        return ResultLine(custom_id, None, None, None)

    def over(self, info: BatchInfo, file_id: str, count: int, sent: tuple[float, float] | None) -> bool:
        """Made while the creates were under way (half a minute's clock difference allowed), and
        holding ``count`` requests."""
        if sent is None or info.created_at is None or info.total != count:
            return False
        return sent[0] - CLOCK_SKEW_S <= info.created_at <= sent[1] + CLOCK_SKEW_S

    def past(self, info: BatchInfo, since: float) -> bool:
        """Listed newest first: one made before ``since`` ends the look."""
        return info.created_at is not None and info.created_at < since - CLOCK_SKEW_S


CLOCK_SKEW_S = 30.0  # how far the provider's clock and this machine's may differ
OUR_ID = re.compile(r"([0-9a-f]{8})-([0-9a-f]{32}(?:_[0-9]+)?)")  # TAG-KEY, KEY's "." as "_"
FOREIGN_TAG = "-"  # the mark of a line whose id batchchat did not write


# --- the simulator's side ----------------------------------------------------------------------


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data}, ensure_ascii=False)}\n\n"


class AnthropicServer:
    busy_status = OVERLOADED

    def neutral(self, body: Any) -> dict[str, Any] | str:
        if not isinstance(body, dict):
            return "the request body is not a JSON object"
        if not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"
        messages = body.get("messages")
        if not isinstance(messages, list):
            return "messages: Field required"
        if any(not isinstance(m, dict) or m.get("role") not in ("user", "assistant") for m in messages):
            return "messages: roles must be user or assistant (the system prompt goes in 'system')"
        neutral = {k: v for k, v in body.items() if k not in ("system", "stop_sequences")}
        system = body.get("system")
        if system:
            text = system if isinstance(system, str) else "".join(
                block.get("text", "") for block in system if isinstance(block, dict))  # fmt: skip
            neutral["messages"] = [{"role": "system", "content": text}, *messages]
        if "stop_sequences" in body:
            neutral["stop"] = body["stop_sequences"]
        return neutral

    def authorized(self, headers: Mapping[str, str], key: str) -> bool:
        return headers.get("x-api-key") == key

    def answer(self, answer_id: str, model: str, content: str, finish: str, prompt: int, completion: int) -> dict[str, Any]:
        return {"id": f"msg_{answer_id}", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": content}], "stop_reason": STOP_REASONS.get(finish, finish),
                "stop_sequence": None, "usage": {"input_tokens": prompt, "output_tokens": completion}}  # fmt: skip

    def stream_start(self, answer_id: str, model: str, prompt: int) -> list[str]:
        message: dict[str, Any] = {"id": f"msg_{answer_id}", "type": "message", "role": "assistant", "model": model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": prompt, "output_tokens": 1}}  # fmt: skip
        return [_event("message_start", {"message": message}),
                _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
                _event("ping", {})]  # fmt: skip

    def stream_piece(self, answer_id: str, model: str, index: int, text: str) -> str:
        return _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})

    def stream_end(self, answer_id: str, model: str, finish: str, prompt: int, completion: int,
                   body: dict[str, Any]) -> list[str]:  # fmt: skip
        delta = {"stop_reason": STOP_REASONS.get(finish, finish), "stop_sequence": None}
        return [_event("content_block_stop", {"index": 0}),
                _event("message_delta", {"delta": delta, "usage": {"output_tokens": completion}}),
                _event("message_stop", {})]  # fmt: skip

    def stream_error(self, message: str) -> str:
        return _event("error", {"error": {"type": "overloaded_error", "message": message}})

    def error(self, status: int, kind: str, message: str, code: str | None) -> dict[str, Any]:
        return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}

    def limit_headers(self, requests: tuple[int, int] | None, tokens: tuple[int, int] | None,
                      reset_s: float | None) -> dict[str, str]:  # fmt: skip
        headers: dict[str, str] = {}
        when = datetime.fromtimestamp(time.time() + (reset_s or 0.0), tz=UTC)
        at = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for what, pair in (("requests", requests), ("tokens", tokens)):
            if pair is not None:
                headers[f"{RATE_PREFIX}{what}-limit"] = str(pair[0])
                headers[f"{RATE_PREFIX}{what}-remaining"] = str(pair[1])
                headers[f"{RATE_PREFIX}{what}-reset"] = at
        return headers
