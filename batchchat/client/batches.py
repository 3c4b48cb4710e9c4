"""A provider's Batch API over the chat client's session: upload a file of requests (or hold
it, for a wire that sends them inline), create a batch over it, follow it, cancel it, and read
the results it answered with.

What differs between providers (paths, bodies, the batch object's words, result lines) is the
provider's ``BatchWire``; this module only makes the calls. Every error is a ``RequestError``
with the key and URL password redacted, as for chat requests.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlparse

import aiohttp

from ..core import errors as E
from ..providers.base import BatchInfo, BatchWire, cut
from .chat import ChatClient, connection_error, read_capped, redirect_error

MAX_REPLY_BYTES = 16 * 1024 * 1024  # a batch object, a file object, a list of batches
LIST_PAGE = 100
MAX_PAGES = 1000  # a list is read this far at most (100,000 items): one that never ends is cut here
T = TypeVar("T")
# A call that makes something (a file, a batch) is given at least this long to answer, whatever
# --timeout says for chat requests: one that times out may still be acted on by the provider, and
# is then looked for before it is made again (``retry.once``), so it must rarely time out at all.
MAKE_TIMEOUT_S = 60.0
HELD = "held-"  # the id of a file of requests held here, for a wire that sends them inline


class BatchClient:
    """The files and batches endpoints beside a chat client's ``/chat/completions``."""

    def __init__(self, chat: ChatClient, wire: BatchWire) -> None:
        self.chat = chat
        self.wire = wire
        self.held: dict[str, bytes] = {}  # file id -> its lines, for a wire that sends them inline

    @property
    def make_timeout_s(self) -> float:
        """How long a call that makes something may take: ``MAKE_TIMEOUT_S`` at least."""
        return max(self.chat.timeout_s, MAKE_TIMEOUT_S)

    def _make_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=self.make_timeout_s)

    async def upload(self, name: str, data: bytes) -> str:
        """A file of batch lines uploaded; its id. ``name`` should be unique: a failed upload is
        looked for by it (``find_file``) before it is made again. A wire that sends requests
        inline holds them here instead, for as long as this client lives: a run that stops before
        their batch is made leaves nothing at the provider, and its requests are asked again."""
        if self.wire.inline:
            self.held[HELD + name] = data
            return HELD + name
        form = aiohttp.FormData()
        form.add_field("purpose", self.wire.purpose)
        form.add_field("file", data, filename=name, content_type="application/jsonl")
        payload = form()
        try:
            reply = await self._json("POST", "/files", data=payload, headers={"Content-Type": payload.content_type},
                                     timeout=self._make_timeout())  # fmt: skip
        except E.RequestError as error:
            if error.error_type != E.NOT_FOUND:
                raise
            raise E.RequestError(error.error_type, f"{self.chat.base_url} has no Batch API ({error.message}): a batch "
                                 "needs /v1/files and /v1/batches, as Together and OpenAI serve", status=error.status,
                                 retryable=False) from None  # fmt: skip
        file_id = reply.get("id") if isinstance(reply, Mapping) else None
        if not isinstance(file_id, str):
            raise self.chat.redacted(E.RequestError(E.BAD_RESPONSE, f"the upload gave no file id: {cut(str(reply), 200)}",
                                                    retryable=True))  # fmt: skip
        return file_id

    async def create(self, file_id: str) -> BatchInfo:
        lines = b""
        if self.wire.inline:
            held = self.held.get(file_id)
            if held is None:  # a run that stopped between holding them and making their batch
                raise E.RequestError(E.NOT_FOUND, f"the requests of {file_id} were held by a run that stopped before "
                                     "their batch was made: they are asked again", status=410, retryable=False)  # fmt: skip
            lines = held
        body = self.wire.create(file_id, lines)
        reply = await self._json("POST", self.wire.batches, data=body, headers={"Content-Type": "application/json"},
                                 timeout=self._make_timeout())  # fmt: skip
        return self._batch(reply)

    async def get(self, batch_id: str) -> BatchInfo:
        return self._batch(await self._json("GET", f"{self.wire.batches}/{batch_id}"))

    async def cancel(self, batch_id: str) -> BatchInfo:
        return self._batch(await self._json("POST", f"{self.wire.batches}/{batch_id}/cancel"))

    def _batch(self, data: Any) -> BatchInfo:
        try:
            return self.wire.batch(data)
        except E.RequestError as error:  # its message quotes the provider's words: redacted
            raise self.chat.redacted(error) from None

    async def find_all(self, file_id: str, count: int, sent: tuple[float, float] | None) -> list[BatchInfo]:
        """Every batch the provider may have made over ``file_id`` (``count`` requests, its
        creates sent between the two times of ``sent``): one created by a run that died before
        it could record it, or by a create that failed after acting. More than one means a
        create acted more than once (one that timed out, then took effect all the same)."""
        if self.wire.inline and sent is None:  # never sent: nothing can hold its requests
            return []
        since = sent[0] if sent is not None else None
        listed = await self._listed(self.wire.batches, self._batch,
                                    None if since is None else lambda info: self.wire.past(info, since))  # fmt: skip
        return [batch for batch in listed if self.wire.over(batch, file_id, count, sent)]

    async def find_file(self, name: str) -> str | None:
        """The id of a file uploaded under ``name`` (one whose upload failed after the provider
        kept it), or None."""
        if self.wire.inline:
            return HELD + name if HELD + name in self.held else None
        files = await self._listed(f"/files?purpose={self.wire.purpose}", _file_entry)
        return next((file_id for file_id, filename in files if filename == name), None)

    async def _listed(self, path: str, read: Callable[[Any], T], past: Callable[[T], bool] | None = None) -> list[T]:
        """Every item of a list endpoint, page after page (``has_more`` and the page after the
        last id), up to the first that is ``past`` what is looked for."""
        items: list[T] = []
        after: str | None = None
        joiner = "&" if "?" in path else "?"
        for _ in range(MAX_PAGES):
            query = f"{joiner}limit={LIST_PAGE}" + (f"&{self.wire.after}={after}" if after else "")
            reply = await self._json("GET", f"{path}{query}")
            page = reply.get("data") if isinstance(reply, Mapping) else reply
            if not isinstance(page, list):
                raise self.chat.redacted(E.RequestError(E.BAD_RESPONSE, f"not a list: {cut(str(reply), 200)}",
                                                        retryable=True))  # fmt: skip
            for item in page:
                got = read(item)
                if past is not None and past(got):
                    return items
                items.append(got)
            more = isinstance(reply, Mapping) and reply.get("has_more") is True
            last = reply.get("last_id") if isinstance(reply, Mapping) else None
            if not isinstance(last, str):
                last = page[-1].get("id") if page and isinstance(page[-1], Mapping) else None
            if not more or not isinstance(last, str) or last == after:  # the end, or a list that ignores "after"
                return items
            after = last
        return items

    async def lines(self, where: str) -> AsyncIterator[bytes]:
        """The result lines at ``where`` (a path after the base URL, or a URL on the API's own
        host: the key is never sent elsewhere), as they arrive: a result file of 50,000 answers
        is never read whole into memory."""
        url = where if "://" in where else f"{self.chat.base_url}{where}"
        there, home = urlparse(url), urlparse(self.chat.base_url)
        if (there.scheme, there.netloc) != (home.scheme, home.netloc):
            raise E.RequestError(E.BAD_RESPONSE, f"the results are said to be at {cut(where, 200)}, off the API's "
                                 "own host: not read, so the key is not sent there", retryable=False)  # fmt: skip
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=self.chat.timeout_s)
        try:
            async with self.chat.session.get(url, allow_redirects=False, timeout=timeout) as response:
                await self._check(response)
                rest = b""
                async for chunk in response.content.iter_any():
                    rest += chunk
                    *complete, rest = rest.split(b"\n")
                    for line in complete:
                        if line.strip():
                            yield line
                if rest.strip():
                    yield rest
        except aiohttp.ClientError as e:
            raise self.chat.redacted(connection_error(e, False, url)) from None
        except TimeoutError:
            raise E.RequestError(E.TIMEOUT, f"no data for {self.chat.timeout_s:g} s from {url}", retryable=True) from None

    async def _json(self, method: str, path: str, *, data: Any = None,
                    headers: Mapping[str, str] | None = None, timeout: aiohttp.ClientTimeout | None = None) -> Any:  # fmt: skip
        url = f"{self.chat.base_url}{path}"
        try:
            async with self.chat.session.request(method, url, data=data, headers=headers,
                                                 allow_redirects=False,
                                                 timeout=timeout or self.chat.session.timeout) as response:  # fmt: skip
                await self._check(response)
                body = await read_capped(response, MAX_REPLY_BYTES)
        except aiohttp.ClientError as e:
            raise self.chat.redacted(connection_error(e, False, url)) from None
        except TimeoutError:
            seconds = timeout.sock_read if timeout is not None and timeout.sock_read else self.chat.timeout_s
            raise E.RequestError(E.TIMEOUT, f"no answer within {seconds:g} s from {url}", retryable=True) from None
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise E.RequestError(E.BAD_RESPONSE, f"{url} answered with something other than JSON",
                                 retryable=True) from None  # fmt: skip

    async def _check(self, response: aiohttp.ClientResponse) -> None:
        status = response.status
        if 300 <= status < 400:
            raise redirect_error(status, response.headers.get("Location"))
        if status != 200:
            body = await read_capped(response, 64 * 1024)
            wire = self.chat.dialect
            raise self.chat.redacted(wire.error(status, body, response.headers.get("Content-Type", ""),
                                                wire.rate(response.headers)))  # fmt: skip


def _file_entry(data: Any) -> tuple[str | None, str | None]:
    """(id, filename) of a file object in a list of files."""
    if not isinstance(data, Mapping):
        return None, None
    return _text(data.get("id")), _text(data.get("filename"))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
