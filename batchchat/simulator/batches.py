"""The simulator's Batch APIs: ``/v1/files`` and ``/v1/batches``, in Together's dialect or
OpenAI's, and Anthropic's Message Batches at ``/v1/messages/batches``.

A batch answers each of its lines as the live endpoint would answer the same body (the same
synthetic answers, the same ``[sim:...]`` directives), over ``batch_seconds``: its progress is
the share of that time gone by. ``batch_error_rate`` turns lines into error lines;
``batch_expire_at`` and ``batch_fail_at`` end a batch part-way, as expired or failed, with the
lines done by then in its output. Output lines come back in another order than the input's,
as the providers' do.

The dialects differ where the providers do: Together wants purpose ``batch-api``, wraps the
created batch in ``{"job": ...}``, and spells statuses in capitals with a ``progress`` percentage;
OpenAI wants purpose ``batch``, ``completion_window``, ``method`` and ``url`` on every line and one
model per batch, and reports ``request_counts``. Each dialect refuses what the other sends, so a
client that mixes them is found out.

Message Batches take their requests inline (``custom_id`` of letters, digits, ``_`` and ``-``;
``params`` a Messages body), say ``in_progress``, ``canceling`` or ``ended`` with counts per result
type, and give one result per request at ``results_url``: ``succeeded``, ``errored``, ``canceled``,
or ``expired`` (for the lines not done when a batch expires or fails: Anthropic has no failed
batch). They are served whatever ``batch_dialect`` says.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..job.spec import SimConfig
from ..providers import PROVIDERS
from ..providers.anthropic import ERROR_TYPES, AnthropicServer
from .answers import STATUS_FAULTS, chance, directive, invalid_body

ENDPOINT = "/v1/chat/completions"
PURPOSE = {"together": "batch-api", "openai": "batch"}
TERMINAL = ("completed", "failed", "expired", "cancelled")
Handler = Callable[[web.Request], Awaitable[web.Response]]
MESSAGE_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MESSAGES = AnthropicServer()


@dataclass
class SimFile:
    id: str
    purpose: str
    filename: str
    data: bytes
    created_at: float = field(default_factory=time.time)


@dataclass
class SimBatch:
    id: str
    input_file_id: str
    lines: list[dict[str, Any]]
    model: str
    started: float  # monotonic
    created_at: float  # epoch
    cancelled_at: float | None = None  # monotonic
    ended: str | None = None  # the terminal status once reached
    done_lines: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    inline: bool = False  # a Message Batch: requests given in the create, results at results_url
    results: bytes = b""
    cancel_initiated: float | None = None  # epoch


class BatchStore:
    """Files and batches of one simulator. ``answer(body)`` is the live endpoint's own answering,
    counted as an arrival of that body (so a re-asked invalid answer can come back valid)."""

    def __init__(self, config: SimConfig, counts: Counter[str],
                 answer: Callable[[dict[str, Any]], tuple[str, str, int, int, str]]) -> None:  # fmt: skip
        self.config = config
        self.dialect = config.batch_dialect
        self.counts = counts
        self.answer = answer
        self.files: dict[str, SimFile] = {}
        self.batches: dict[str, SimBatch] = {}
        self.created_per_file: Counter[str] = Counter()
        self.run = uuid.uuid4().hex[:6]  # ids differ from one simulator to the next, as a provider's never repeat

    def routes(self, app: web.Application) -> None:
        gated = self._gated
        app.router.add_post("/v1/files", gated(self._upload))
        app.router.add_get("/v1/files", gated(self._files))
        app.router.add_get("/v1/files/{id}/content", gated(self._content))
        app.router.add_post("/v1/batches", gated(self._create))
        app.router.add_get("/v1/batches", gated(self._list))
        app.router.add_get("/v1/batches/{id}", gated(self._get))
        app.router.add_post("/v1/batches/{id}/cancel", gated(self._cancel))
        app.router.add_post("/v1/messages/batches", self._gated(self._m_create, MESSAGES))
        app.router.add_get("/v1/messages/batches", self._gated(self._m_list, MESSAGES))
        app.router.add_get("/v1/messages/batches/{id}", self._gated(self._m_get, MESSAGES))
        app.router.add_post("/v1/messages/batches/{id}/cancel", self._gated(self._m_cancel, MESSAGES))
        app.router.add_get("/v1/messages/batches/{id}/results", self._gated(self._m_results, MESSAGES))

    def stats(self) -> dict[str, Any]:
        return {
            "files_uploaded": self.counts["files_uploaded"],
            "batches_created": len(self.batches),
            "batch_lines": sum(len(b.lines) for b in self.batches.values()),
            "batches_per_file": max(self.created_per_file.values(), default=0),  # 1: never a batch twice
        }

    # --- handlers ---

    def _gated(self, handler: Handler, messages: AnthropicServer | None = None) -> Handler:
        """``handler``, reached only through ``_gate``: every Files and Batches call passes it
        (a Message Batches call, with ``messages``, checks Anthropic's key header)."""

        async def gated(request: web.Request) -> web.Response:
            refused = await self._gate(request, messages)
            return refused if refused is not None else await handler(request)

        return gated

    async def _gate(self, request: web.Request, messages: AnthropicServer | None) -> web.Response | None:
        """The delay every call waits (for tests that stop a client part-way), and the key check."""
        self.counts[f"call {request.method} {request.path.split('/')[2]}"] += 1  # "call POST files"
        if request.path.endswith(("/content", "/results")):
            self.counts["downloads_started"] += 1
        if self.config.batch_delay_ms:
            await asyncio.sleep(self.config.batch_delay_ms / 1000.0)
        key = self.config.api_key
        if messages is not None and key and not messages.authorized(request.headers, key):
            return web.json_response(messages.error(401, "authentication_error", "invalid x-api-key", None), status=401)
        if messages is None and key and request.headers.get("Authorization") != f"Bearer {key}":
            return web.json_response({"error": {"message": "Invalid API key provided", "type": "authentication_error"}},
                                     status=401)  # fmt: skip
        return None

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, web.FileField):
            return _error(400, "a multipart field 'file' is required")
        if purpose != PURPOSE[self.dialect]:
            return _error(400, f"purpose must be '{PURPOSE[self.dialect]}', got {purpose!r}")
        data = upload.file.read()
        most = PROVIDERS[self.dialect].batch_max_bytes or 0
        if len(data) > most:
            return _error(400, f"the file is larger than {most} bytes")
        self.counts["uploads_taken"] += 1  # the whole file is here: it is kept even if the client goes
        await asyncio.sleep(self.config.batch_upload_delay_ms / 1000.0)
        file = SimFile(f"file-sim-{self.run}-{len(self.files) + 1:06d}", str(purpose), upload.filename, data)
        self.files[file.id] = file
        self.counts["files_uploaded"] += 1
        if self.counts["files_uploaded"] <= self.config.batch_upload_fails:
            return _bad_gateway()  # the file is kept all the same
        return web.json_response(_file_object(file))

    async def _files(self, request: web.Request) -> web.Response:
        self.counts["file_lists"] += 1
        data = [_file_object(file) for file in self.files.values() if file.purpose == PURPOSE[self.dialect]]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def _content(self, request: web.Request) -> web.Response:
        file = self.files.get(request.match_info["id"])
        if file is None:
            return _error(404, "no such file")
        self.counts["downloads"] += 1
        return web.Response(body=file.data, content_type="application/octet-stream")

    async def _create(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        if body.get("endpoint") != ENDPOINT:
            return _error(400, f"endpoint must be {ENDPOINT}")
        if self.dialect == "openai" and body.get("completion_window") != "24h":
            return _error(400, "completion_window must be '24h'")
        file = self.files.get(str(body.get("input_file_id")))
        if file is None:
            return _error(404, "no such input file")
        lines, problem = self._parse(file)
        if problem:
            return _error(400, problem)
        self.counts["creates_taken"] += 1  # the call is here: its batch is made even if the client goes
        await asyncio.sleep(self.config.batch_create_delay_ms / 1000.0)
        batch = SimBatch(f"batch-sim-{self.run}-{len(self.batches) + 1:06d}", file.id, lines, lines[0]["body"]["model"],
                         time.monotonic(), time.time())  # fmt: skip
        self.batches[batch.id] = batch
        self.created_per_file[file.id] += 1
        self.counts["batches_created"] += 1
        if self.counts["batches_created"] <= self.config.batch_create_fails:
            return _bad_gateway()  # the batch is made all the same
        shown = self._shown(batch)
        return web.json_response({"job": shown, "warning": None} if self.dialect == "together" else shown)

    async def _list(self, request: web.Request) -> web.Response:
        self.counts["batch_lists"] += 1
        data = [self._shown(batch) for batch in self.batches.values()]
        return web.json_response(data if self.dialect == "together" else {"object": "list", "data": data,
                                                                            "has_more": False})  # fmt: skip

    async def _get(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, "no such batch")
        return web.json_response(self._shown(batch))

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, "no such batch")
        self._cancel_now(batch)
        return web.json_response(self._shown(batch))

    def _cancel_now(self, batch: SimBatch) -> None:
        """A running batch told to stop (one that has ended is as it was), in either API."""
        self._advance(batch)
        if batch.ended is None and batch.cancelled_at is None:
            batch.cancelled_at = time.monotonic()
            batch.cancel_initiated = time.time()
            self.counts["batches_cancelled"] += 1

    # --- what a batch has done ---

    def _parse(self, file: SimFile) -> tuple[list[dict[str, Any]], str | None]:
        lines: list[dict[str, Any]] = []
        seen: set[str] = set()
        for n, raw in enumerate(file.data.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                return [], f"line {n} is not valid JSON"
            custom_id = line.get("custom_id") if isinstance(line, dict) else None
            if not isinstance(custom_id, str) or not 0 < len(custom_id) <= 64 or custom_id in seen:
                return [], f"line {n}: custom_id must be unique text of 1 to 64 characters"
            seen.add(custom_id)
            if self.dialect == "openai" and (line.get("method") != "POST" or line.get("url") != ENDPOINT):
                return [], f"line {n}: method must be POST and url {ENDPOINT}"
            problem = invalid_body(line.get("body"))
            if problem or line["body"].get("stream"):
                return [], f"line {n}: {problem or 'a batch request cannot stream'}"
            lines.append(line)
        if not lines:
            return [], "the file holds no requests"
        most = PROVIDERS[self.dialect].batch_max_lines or 0
        if len(lines) > min(most, self.config.batch_max_lines or most):
            return [], f"the file holds {len(lines)} requests, more than a batch may"
        if self.dialect == "openai" and len({line["body"]["model"] for line in lines}) > 1:
            return [], "a batch may use only one model"
        return lines, None

    def _advance(self, batch: SimBatch) -> None:
        """Move the batch on to now: lines done, and its end once it has one."""
        if batch.ended is not None:
            return
        now = batch.cancelled_at or time.monotonic()
        seconds = self.config.batch_seconds
        share = 1.0 if seconds <= 0 else min(1.0, (now - batch.started) / seconds)
        total = len(batch.lines)
        end = None
        for status, at in (("expired", self.config.batch_expire_at), ("failed", self.config.batch_fail_at)):
            if at is not None and share >= at:
                share, end = at, status
                break
        if batch.cancelled_at is not None:
            end = "cancelled"
        elif share >= 1.0:
            end = end or "completed"
        batch.done_lines = min(total, int(share * total))
        if end is not None:
            batch.ended = end
            if batch.inline:
                self._m_ended(batch)
            else:
                self._results(batch)

    def _results(self, batch: SimBatch) -> None:
        """The output and error files of the lines done, in another order than the input's."""
        output: list[bytes] = []
        errors: list[bytes] = []
        for line in batch.lines[: batch.done_lines]:
            custom_id = line["custom_id"]
            body = line["body"]
            fault = directive(body).get("fault")
            rate = self.config.batch_error_rate
            if fault is None and rate and chance(self.config.seed, custom_id, "batch-error") < rate:
                fault = "500"
            if fault in STATUS_FAULTS:
                kind, message = STATUS_FAULTS[fault]
                error = {"message": message, "code": kind}
                if self.dialect == "openai":  # a failed request: a non-200 line in the output file
                    output.append(_line({"id": f"batch_req_{custom_id}", "custom_id": custom_id, "error": None,
                                         "response": {"status_code": int(fault), "request_id": f"req-{custom_id}",
                                                      "body": {"error": error}}}))  # fmt: skip
                else:
                    errors.append(_line({"custom_id": custom_id, "error": error}))
                continue
            content, finish, prompt, completion, answer_id = self.answer(body)
            completion_body = {
                "id": answer_id, "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": finish, "logprobs": None}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion},
            }  # fmt: skip
            response: dict[str, Any] = {"status_code": 200, "body": completion_body}
            record: dict[str, Any] = {"custom_id": custom_id, "response": response}
            if self.dialect == "openai":
                response["request_id"] = f"req-{custom_id}"
                record = {"id": f"batch_req_{custom_id}", **record, "error": None}
            output.append(_line(record))
        output.sort(key=lambda line: chance("order", line))  # not input order, and the same every time
        self.counts["batch_lines_answered"] += len(output) + len(errors)
        batch.output_file_id = self._store(f"{batch.id}-output.jsonl", output)
        batch.error_file_id = self._store(f"{batch.id}-errors.jsonl", errors) if errors else None

    def _store(self, name: str, lines: list[bytes]) -> str:
        file = SimFile(f"file-sim-{self.run}-{len(self.files) + 1:06d}", "batch_output", name, b"".join(lines))
        self.files[file.id] = file
        return file.id

    def _shown(self, batch: SimBatch) -> dict[str, Any]:
        self._advance(batch)
        total, done = len(batch.lines), batch.done_lines
        seconds = self.config.batch_seconds
        if batch.ended is not None:
            status = batch.ended
        elif batch.cancelled_at is not None:
            status = "cancelling"
        elif seconds > 0 and time.monotonic() - batch.started < seconds / 10:
            status = "validating"
        else:
            status = "in_progress"
        failed = 0
        if batch.ended is not None:
            failed = sum(1 for line in batch.lines[:done] if self._fails(line))
        if self.dialect == "together":
            return {
                "id": batch.id, "user_id": "sim", "input_file_id": batch.input_file_id, "status": status.upper(),
                "endpoint": ENDPOINT, "model_id": batch.model, "progress": round(100.0 * done / total, 1),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(batch.created_at)),
                "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id, "error": None,
            }  # fmt: skip
        return {
            "id": batch.id, "object": "batch", "endpoint": ENDPOINT, "errors": None,
            "input_file_id": batch.input_file_id, "completion_window": "24h", "status": status,
            "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
            "created_at": int(batch.created_at), "metadata": None,
            "request_counts": {"total": total, "completed": done - failed, "failed": failed},
        }  # fmt: skip

    # --- Anthropic's Message Batches ---

    async def _m_create(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _m_error(400, "request body is not valid JSON")
        entries = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(entries, list) or not entries:
            return _m_error(400, "requests: a list of at least one request is required")
        lines: list[dict[str, Any]] = []
        seen: set[str] = set()
        for n, entry in enumerate(entries):
            custom_id = entry.get("custom_id") if isinstance(entry, dict) else None
            if not isinstance(custom_id, str) or not MESSAGE_ID.fullmatch(custom_id) or custom_id in seen:
                return _m_error(400, f"requests.{n}.custom_id: unique, 1 to 64 of a-z A-Z 0-9 _ -")
            seen.add(custom_id)
            params = entry.get("params")
            neutral = MESSAGES.neutral(params)
            problem = neutral if isinstance(neutral, str) else invalid_body(neutral)
            if problem or (isinstance(params, dict) and params.get("stream")):
                return _m_error(400, f"requests.{n}.params: {problem or 'a batch request cannot stream'}")
            assert isinstance(neutral, dict)
            lines.append({"custom_id": custom_id, "body": neutral})
        most = PROVIDERS["anthropic"].batch_max_lines or 0
        if len(lines) > min(most, self.config.batch_max_lines or most):
            return _m_error(400, f"{len(lines)} requests, more than a batch may hold")
        self.counts["creates_taken"] += 1  # the call is here: its batch is made even if the client goes
        await asyncio.sleep(self.config.batch_create_delay_ms / 1000.0)
        batch = SimBatch(f"msgbatch_sim{self.run}{len(self.batches) + 1:06d}", "", lines, lines[0]["body"]["model"],
                         time.monotonic(), time.time(), inline=True)  # fmt: skip
        self.batches[batch.id] = batch
        self.created_per_file[hashlib.sha256(" ".join(sorted(seen)).encode()).hexdigest()] += 1
        self.counts["batches_created"] += 1
        if self.counts["batches_created"] <= self.config.batch_create_fails:
            return _bad_gateway()  # the batch is made all the same
        return web.json_response(self._m_shown(batch, request))

    async def _m_list(self, request: web.Request) -> web.Response:
        """Newest first, ``limit`` at a time after ``after_id``."""
        self.counts["batch_lists"] += 1
        listed = [b for b in reversed(self.batches.values()) if b.inline]
        after = request.query.get("after_id")
        if after:
            ids = [b.id for b in listed]
            listed = listed[ids.index(after) + 1:] if after in ids else []
        limit = int(request.query.get("limit", "20"))
        page = [self._m_shown(b, request) for b in listed[:limit]]
        return web.json_response({"data": page, "has_more": len(listed) > limit,
                                  "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None})  # fmt: skip

    def _m_batch(self, request: web.Request) -> SimBatch | None:
        batch = self.batches.get(request.match_info["id"])
        return batch if batch is not None and batch.inline else None

    async def _m_get(self, request: web.Request) -> web.Response:
        batch = self._m_batch(request)
        if batch is None:
            return _m_error(404, "no such message batch", "not_found_error")
        return web.json_response(self._m_shown(batch, request))

    async def _m_cancel(self, request: web.Request) -> web.Response:
        batch = self._m_batch(request)
        if batch is None:
            return _m_error(404, "no such message batch", "not_found_error")
        self._cancel_now(batch)
        return web.json_response(self._m_shown(batch, request))

    async def _m_results(self, request: web.Request) -> web.Response:
        batch = self._m_batch(request)
        if batch is None:
            return _m_error(404, "no such message batch", "not_found_error")
        self._advance(batch)
        if batch.ended is None:
            return _m_error(400, "the batch has not ended: its results are not ready")
        self.counts["downloads"] += 1
        return web.Response(body=batch.results, content_type="application/binary")

    def _m_ended(self, batch: SimBatch) -> None:
        """One result per request, in another order than the requests'."""
        lines: list[bytes] = []
        late = "canceled" if batch.ended == "cancelled" else "expired"
        for n, line in enumerate(batch.lines):
            custom_id, body = line["custom_id"], line["body"]
            if n >= batch.done_lines:
                lines.append(_line({"custom_id": custom_id, "result": {"type": late}}))
                continue
            if self._fails(line):
                fault = directive(body).get("fault")
                status = int(fault) if fault in STATUS_FAULTS else 500
                error = {"type": ERROR_TYPES.get(status, "api_error"), "message": STATUS_FAULTS[str(status)][1]}
                lines.append(_line({"custom_id": custom_id, "result": {"type": "errored",
                                                                       "error": {"type": "error", "error": error}}}))
                continue
            content, finish, prompt, completion, answer_id = self.answer(body)
            message = MESSAGES.answer(answer_id, body["model"], content, finish, prompt, completion)
            lines.append(_line({"custom_id": custom_id, "result": {"type": "succeeded", "message": message}}))
        lines.sort(key=lambda line: chance("order", line))
        self.counts["batch_lines_answered"] += batch.done_lines
        batch.results = b"".join(lines)

    def _m_shown(self, batch: SimBatch, request: web.Request) -> dict[str, Any]:
        self._advance(batch)
        done, total = batch.done_lines, len(batch.lines)
        failed = sum(1 for line in batch.lines[:done] if self._fails(line))
        counts = {"processing": total - done, "succeeded": done - failed, "errored": failed, "canceled": 0,
                  "expired": 0}  # as Anthropic's: they add up to the batch's requests at every moment  # fmt: skip
        if batch.ended is not None:
            late = "canceled" if batch.ended == "cancelled" else "expired"
            counts = {**counts, "processing": 0, late: total - done}
        state = "ended" if batch.ended is not None else "canceling" if batch.cancelled_at is not None else "in_progress"
        base = f"{request.scheme}://{request.host}/v1/messages/batches/{batch.id}"
        return {
            "id": batch.id, "type": "message_batch", "processing_status": state, "request_counts": counts,
            "ended_at": _stamp(time.time()) if batch.ended else None, "created_at": _stamp(batch.created_at),
            "expires_at": _stamp(batch.created_at + 86400), "archived_at": None,
            "cancel_initiated_at": _stamp(batch.cancel_initiated) if batch.cancel_initiated else None,
            "results_url": f"{base}/results" if batch.ended else None,
        }  # fmt: skip

    def _fails(self, line: dict[str, Any]) -> bool:
        if directive(line["body"]).get("fault") in STATUS_FAULTS:
            return True
        rate = self.config.batch_error_rate
        return bool(rate) and chance(self.config.seed, line["custom_id"], "batch-error") < rate


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _file_object(file: SimFile) -> dict[str, Any]:
    return {"id": file.id, "object": "file", "bytes": len(file.data), "created_at": int(file.created_at),
            "filename": file.filename, "purpose": file.purpose}  # fmt: skip


def _bad_gateway() -> web.Response:
    page = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
    return web.Response(status=502, text=page, content_type="text/html")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=status)



def _m_error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response(MESSAGES.error(status, kind, message, None), status=status)


def _stamp(epoch: float) -> str:
    """An RFC 3339 time, as Anthropic writes them."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1e6):06d}Z"
