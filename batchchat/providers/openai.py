"""The chat-completions wire format: Together, OpenAI and every OpenAI-compatible server (vLLM,
llama.cpp, Ollama, the built-in simulator).

``POST {base}/chat/completions`` with a Bearer key; an answer is a ``chat.completion`` (read by
``reading.read_completion``); a stream is ``data:`` chunks ending in ``[DONE]``, with usage on the
chunk that carries ``finish_reason`` (Together) or on an extra chunk when asked (OpenAI's
``stream_options``); errors are ``{"error": {...}}``; limits are ``x-ratelimit-*`` (Together:
``x-ratelimit-limit``, ``x-tokenlimit-*``, ``-dynamic`` variants; OpenAI: ``-requests``/``-tokens``
with ``6m0s`` resets) and ``retry-after``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..core import errors as E
from ..core import jsonio
from ..core.ratehints import RateInfo
from ..core.reading import (
    Reading,
    bounded,
    clean_text,
    needs_bounds,
    read_completion,
    read_content,
    received,
    with_content,
)
from ..core.records import ChatRequest, ChatResult
from ..core.sse import Event
from .base import (
    HTTP_ERRORS,
    BatchInfo,
    ResultLine,
    ServerWire,
    capped,
    count_header,
    cut,
    error_json,
    kept_headers,
    parse_answer,
    reset_seconds,
    retry_after_s,
    should_retry,
    snippet,
)

STATUS_ERRORS = HTTP_ERRORS
# Response headers that say something of the limits or of retrying; the rest is never read.
RATE_HEADER_PREFIXES = ("x-ratelimit", "x-tokenlimit", "retry-after", "x-should-retry")


class OpenAIDialect:
    name = "openai"
    path = "/chat/completions"
    max_tokens_sent: int | None = None

    def __init__(self) -> None:
        self.server: ServerWire = OpenAIServer()
        self.reader: Callable[[Any], Reading] = read_completion

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def body(self, request: ChatRequest, stream: bool, stream_usage: bool) -> dict[str, Any]:
        body = request.body()
        if stream:
            body["stream"] = True
            if stream_usage:
                body.setdefault("stream_options", {"include_usage": True})
        return body

    def answer(self, body: bytes, latency_s: float, rate: RateInfo | None) -> ChatResult:
        return parse_completion(body, latency_s, rate, self.reader)

    def stream(self, on_text: Callable[[str], None] | None) -> StreamAssembly:
        return StreamAssembly(on_text)

    def error(self, status: int, body: bytes, content_type: str, rate: RateInfo | None) -> E.RequestError:
        return status_error(status, body, content_type, rate)

    def rate(self, headers: Mapping[str, str]) -> RateInfo | None:
        kept = kept_headers(headers, RATE_HEADER_PREFIXES)
        return rate_of(kept) if kept else None

    def claims(self, answer: Any) -> bool:
        return True  # the default: whatever no other dialect claims is read as a chat completion

    def read(self, answer: Any) -> Reading:
        return read_completion(answer)

    def with_text(self, answer: dict[str, Any], text: str) -> dict[str, Any]:
        return with_content(answer, text)

    def refused(self, option: str) -> str | None:
        return None  # servers differ in what they take; each says so itself


def rate_of(headers: Mapping[str, str], now: float | None = None) -> RateInfo:
    """Together's and OpenAI's rate headers (lower-case names) read; the wait asked for is
    ``retry-after-ms``, ``retry-after``, or else Together's ``x-ratelimit-reset``."""

    def seconds(*names: str) -> float | None:
        for name in names:
            if name in headers:
                value = reset_seconds(headers[name], now)
                if value is not None:
                    return value
        return None

    wait = retry_after_s(headers, now)
    if wait is None and "x-ratelimit-reset" in headers:
        reset = reset_seconds(headers["x-ratelimit-reset"], now)
        wait = None if reset is None else capped(reset)
    return RateInfo(
        request_limit=count_header(headers, "x-ratelimit-limit-requests", "x-ratelimit-limit-dynamic", "x-ratelimit-limit"),
        requests_remaining=count_header(
            headers, "x-ratelimit-remaining-requests", "x-ratelimit-remaining-dynamic", "x-ratelimit-remaining"
        ),
        requests_reset_s=seconds("x-ratelimit-reset-requests", "x-ratelimit-reset"),
        token_limit=count_header(headers, "x-ratelimit-limit-tokens", "x-tokenlimit-limit-dynamic", "x-tokenlimit-limit"),
        tokens_remaining=count_header(
            headers, "x-ratelimit-remaining-tokens", "x-tokenlimit-remaining-dynamic", "x-tokenlimit-remaining"
        ),
        tokens_reset_s=seconds("x-ratelimit-reset-tokens"),
        wait_s=wait,
        should_retry=should_retry(headers),
    )


def parse_completion(body: bytes, latency_s: float, rate: RateInfo | None = None,
                     read: Callable[[Any], Reading] = read_completion) -> ChatResult:  # fmt: skip
    """A 2xx chat completion (``base.parse_answer``); one that carries an error and no choices is
    a failed attempt."""
    return parse_answer(body, latency_s, rate, read, _carried_error)


def _carried_error(data: dict[str, Any]) -> E.RequestError | None:
    if data.get("error") and not data.get("choices"):
        return E.RequestError(E.SERVER_ERROR, f"HTTP 200 carrying an error: {error_message(data)}", status=200,
                              retryable=True)  # fmt: skip
    return None


def status_error(status: int, body: bytes, content_type: str, rate: RateInfo | None) -> E.RequestError:
    """A non-2xx answer as a ``RequestError``."""
    error_type, retryable = STATUS_ERRORS.get(
        status, (E.SERVER_ERROR, True) if status >= 500 else (E.HTTP_ERROR, False)
    )
    data = error_json(body, content_type)
    if isinstance(data, dict) and "error" in data:
        detail = error_message(data)
        code = data["error"].get("code") if isinstance(data["error"], dict) else None
        if status == 429 and code == "insufficient_quota":
            error_type, retryable = E.NO_CREDIT, False
    else:
        detail = snippet(body, html="html" in content_type.lower())
    if rate is not None and rate.should_retry is not None:  # the server's explicit word, as SDKs obey
        retryable = rate.should_retry
    return E.RequestError(error_type, f"HTTP {status}: {detail}", status=status, retryable=retryable, rate=rate,
                          busy=status == 503)  # fmt: skip


def error_message(data: dict[str, Any]) -> str:
    error = data.get("error")
    if isinstance(error, dict):
        message = error.get("message") or error.get("code") or error.get("type")
        return clean_text(cut(str(message) if message else json.dumps(error), 500))
    return clean_text(cut(str(error), 500))


class StreamAssembly:
    """Chunks of a streamed answer into one ChatResult, in Together's and OpenAI's ways.

    Together puts usage on the chunk that carries ``finish_reason``; OpenAI sends it on an extra
    chunk with empty ``choices``, and only when asked; some servers never send it, and then usage
    stays unknown rather than guessed. An answer counts only once both ``finish_reason`` and
    ``[DONE]`` have arrived, or ``finish_reason`` and usage: anything less may be cut short, and
    partial text is never an answer. Once an answer is complete, what follows (a malformed chunk,
    a dropped connection) is ignored: the answer was delivered and paid for.

    The chunks' values are kept as they came (``answer``: the completion they make, in the shape
    of a JSON answer), whatever their types; reading them is ``reading.read_completion``'s.
    """

    def __init__(self, on_text: Callable[[str], None] | None = None) -> None:
        self.on_text = on_text
        self.pieces: list[Any] = []  # each chunk's delta.content, as it came
        self.finish_reason: Any = None
        self.usage: Any = None
        self.request_id: Any = None
        self.model: Any = None
        self.kind: Any = None  # the chunks' ``object``, as the first that has one names it
        self.index: Any = None  # the choice followed: the first the chunks name (0, most often)
        self.messages = False  # whether the choice ever carried a delta (or a message)
        self.texts: list[Any] = []  # a completions-style stream's choices[].text, kept: no chat answer
        self.unread = 0  # chunks nested too deeply to read
        self.ttft_s: float | None = None
        self.done = False
        self.usage_received = False

    @property
    def complete(self) -> bool:
        return self.finish_reason is not None and (self.done or self.usage_received)

    def add(self, event: Event, elapsed_s: float) -> None:
        if self.done or self.complete:
            return
        if event.data.strip() == "[DONE]":
            self.done = True
            return
        try:
            chunk, fast = jsonio.loads_how(event.data)
        except RecursionError:  # JSON, but nested past reading: the stream goes on without it
            self.unread += 1
            return
        except json.JSONDecodeError:
            chunk, fast = None, True
        if not isinstance(chunk, dict):
            raise E.RequestError(
                E.BAD_RESPONSE, f"malformed stream chunk: {snippet(event.data.encode('utf-8', 'replace'))}",
                retryable=True,
            )  # fmt: skip
        if needs_bounds(event.data, fast):
            chunk = bounded(chunk)
        if chunk.get("error"):
            raise E.RequestError(
                E.SERVER_ERROR, f"error in the stream: {error_message(chunk)}", status=200, retryable=True
            )
        if self.request_id is None:
            self.request_id = chunk.get("id")
        if self.model is None:
            self.model = chunk.get("model")
        if self.kind is None:
            self.kind = chunk.get("object")
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                index = choice.get("index", 0)
                if self.index is None and isinstance(index, int | str | None):
                    self.index = index
                if index != self.index:
                    continue  # another choice's (n > 1)
                delta = choice.get("delta")
                if delta is None:
                    delta = choice.get("message")  # a chunk with the shape of a whole answer
                if isinstance(delta, dict):
                    self.messages = True
                    self._piece(delta.get("content"), elapsed_s)
                elif choice.get("text") is not None:
                    self.texts.append(choice["text"])
                finish = choice.get("finish_reason")
                if finish is not None and finish != "":
                    self.finish_reason = finish
        elif isinstance(chunk.get("token"), dict):  # older Together streams: the text on "token" alone
            self.messages = True
            self._piece(chunk["token"].get("text"), elapsed_s)
        if chunk.get("usage") is not None:
            self.usage = chunk["usage"]
            self.usage_received = True

    def _piece(self, piece: Any, elapsed_s: float) -> None:
        if piece is None or piece == "" or piece == []:
            return
        self.pieces.append(piece)
        text = piece if isinstance(piece, str) else read_content(piece, [])
        if not text:
            return
        if self.ttft_s is None:
            self.ttft_s = elapsed_s
        if self.on_text is not None:
            self.on_text(text)

    def answer(self) -> dict[str, Any]:
        """The completion the chunks make: the text joined (the pieces as they came, when one is
        not text), the last finish reason and usage, the first id, model and kind (a chunk's kind
        named as the whole answer's). A stream that never carried a message (a completions-style
        one) has none in its answer either: it is no chat answer, as the same answer whole is not."""
        pieces = self.pieces
        content: Any = "".join(pieces) if all(isinstance(p, str) for p in pieces) else list(pieces)
        choice: dict[str, Any] = {"index": 0, "finish_reason": self.finish_reason}
        if self.messages or not self.texts:
            choice["message"] = {"role": "assistant", "content": content}
        else:
            choice["text"] = self.texts
        kind = self.kind
        answer: dict[str, Any] = {"id": self.request_id, "object": "chat.completion" if kind in (
            None, "chat.completion.chunk") else kind, "model": self.model, "choices": [choice]}  # fmt: skip
        if self.usage is not None:
            answer["usage"] = self.usage
        if self.unread:
            answer["unread_chunks"] = self.unread  # JSON nested past reading, left out
        return answer

    def result(self, latency_s: float, rate: RateInfo | None) -> ChatResult:
        if not self.complete:
            missing = " and ".join(
                m for m, ok in (("[DONE]", self.done), ("a finish_reason", self.finish_reason is not None)) if not ok
            )
            raise E.RequestError(E.STREAM_TRUNCATED, f"stream ended without {missing}", status=200, retryable=True)
        return received(self.answer(), latency_s, self.ttft_s, rate)


# --- the simulator's side ----------------------------------------------------------------------


BATCH_ENDPOINT = "/v1/chat/completions"


class OpenAIBatches:
    """The Batch API of Together and OpenAI: a JSONL file uploaded, a batch made over it, output
    and error files read back. They differ in small ways (the file's purpose, OpenAI's
    ``completion_window``, Together's create answer wrapped in ``{"job": ...}``, statuses in
    capitals with a ``progress`` percentage, or ``request_counts``)."""

    inline = False
    names_its_file = True
    batches = "/batches"
    after = "after"

    def __init__(self, name: str) -> None:
        self.name = name
        self.purpose = "batch" if name == "openai" else "batch-api"

    def line(self, request: ChatRequest, tag: str) -> bytes:
        """``method`` and ``url`` are OpenAI's; Together accepts them. No ``tag``: a batch says
        which file it holds."""
        record = {"custom_id": request.key, "method": "POST", "url": BATCH_ENDPOINT, "body": request.body()}
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"

    def create(self, file_id: str, lines: bytes) -> bytes:
        body: dict[str, Any] = {"input_file_id": file_id, "endpoint": BATCH_ENDPOINT}
        if self.name == "openai":
            body["completion_window"] = "24h"
        return jsonio.dumps(body)

    def batch(self, data: Any) -> BatchInfo:
        if isinstance(data, Mapping) and isinstance(data.get("job"), Mapping):  # Together wraps a created batch
            data = data["job"]
        if not isinstance(data, Mapping) or not isinstance(data.get("id"), str) or not isinstance(data.get("status"), str):
            raise E.RequestError(E.BAD_RESPONSE, f"not a batch: {cut(str(data), 200)}", retryable=True)
        found = data.get("request_counts")
        counts: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
        completed, failed = _count(counts.get("completed")), _count(counts.get("failed"))
        progress = data.get("progress")
        return BatchInfo(
            id=data["id"],
            status=data["status"].lower(),
            input_file_id=_text(data.get("input_file_id")),
            output_file_id=_text(data.get("output_file_id")),
            error_file_id=_text(data.get("error_file_id")),
            total=_count(counts.get("total")),
            done=None if completed is None else completed + (failed or 0),
            failed=failed,
            progress=float(progress) if isinstance(progress, int | float) and not isinstance(progress, bool) else None,
        )

    def results(self, info: BatchInfo) -> list[str]:
        """Both files: a completed batch can still hold failed requests."""
        return [f"/files/{file_id}/content" for file_id in (info.output_file_id, info.error_file_id) if file_id]

    def result(self, record: Any) -> ResultLine:
        if not isinstance(record, dict):
            return ResultLine(None, None, None, None)
        response = record.get("response")
        status = response.get("status_code") if isinstance(response, dict) else None
        if (isinstance(status, str) and status.isdigit()) or (isinstance(status, float) and status.is_integer()):
            status = int(status)
        if not isinstance(status, int) or isinstance(status, bool):
            status = None
        body = response.get("body") if isinstance(response, dict) else None
        error = record.get("error")
        if status is not None and 200 <= status < 300:  # an answer, paid, unless its body is an error
            error = body["error"] if isinstance(body, dict) and body.get("error") and not body.get("choices") else None
        custom_id = record.get("custom_id")
        return ResultLine(custom_id if isinstance(custom_id, str) else None, status, body, error)

    def over(self, info: BatchInfo, file_id: str, count: int, sent: tuple[float, float] | None) -> bool:
        return info.input_file_id == file_id

    def past(self, info: BatchInfo, since: float) -> bool:
        return False


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class OpenAIServer:
    """Answers as Together does: usage on the final chunk and ``[DONE]``; OpenAI's extra usage
    chunk when the request sets ``stream_options.include_usage``."""

    busy_status = 503

    def neutral(self, body: Any) -> dict[str, Any] | str:
        return body if isinstance(body, dict) else "the request body is not a JSON object"

    def authorized(self, headers: Mapping[str, str], key: str) -> bool:
        return headers.get("Authorization") == f"Bearer {key}"

    def answer(self, answer_id: str, model: str, content: str, finish: str, prompt: int, completion: int) -> dict[str, Any]:
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish,
                  "logprobs": None}  # fmt: skip
        return {"id": answer_id, "object": "chat.completion", "created": int(time.time()), "model": model, "choices": [choice],
                "usage": _usage(prompt, completion)}  # fmt: skip

    def stream_start(self, answer_id: str, model: str, prompt: int) -> list[str]:
        delta = {"role": "assistant", "content": ""}
        return [_sse({**_chunk(answer_id, model), "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})]

    def stream_piece(self, answer_id: str, model: str, index: int, text: str) -> str:
        return _sse({**_chunk(answer_id, model), "token": {"id": index, "text": text, "logprob": 0.0, "special": False},
                     "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})  # fmt: skip

    def stream_end(self, answer_id: str, model: str, finish: str, prompt: int, completion: int,
                   body: dict[str, Any]) -> list[str]:  # fmt: skip
        base = _chunk(answer_id, model)
        final: dict[str, Any] = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            return [_sse(final), _sse({**base, "choices": [], "usage": _usage(prompt, completion)}), _sse("[DONE]")]
        return [_sse({**final, "usage": _usage(prompt, completion)}), _sse("[DONE]")]

    def stream_error(self, message: str) -> str:
        return _sse({"error": {"message": message, "type": "server_error"}})

    def error(self, status: int, kind: str, message: str, code: str | None) -> dict[str, Any]:
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def limit_headers(self, requests: tuple[int, int] | None, tokens: tuple[int, int] | None,
                      reset_s: float | None) -> dict[str, str]:  # fmt: skip
        headers: dict[str, str] = {}
        if requests is not None:
            headers["x-ratelimit-limit"], headers["x-ratelimit-remaining"] = str(requests[0]), str(requests[1])
        if tokens is not None:
            headers["x-tokenlimit-limit"], headers["x-tokenlimit-remaining"] = str(tokens[0]), str(tokens[1])
        if reset_s is not None:
            headers["x-ratelimit-reset"] = f"{reset_s:.3f}"
        return headers


def _chunk(answer_id: str, model: str) -> dict[str, Any]:
    return {"id": answer_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
