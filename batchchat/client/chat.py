"""The only HTTP client: sends one chat request, returns a ChatResult or raises RequestError.

Every way an attempt can fail becomes a ``RequestError`` with a stable ``error_type``; nothing
aiohttp-specific leaves this module. Error messages carry the provider's own words but never
request headers; and since a server may echo the key back (an error page quoting the
Authorization header), every text that leaves here, answers included, has the key, URL
credentials and any ``Bearer ...`` token redacted, so none can reach an output table, the journal
or the terminal.

A server is trusted no further than it must be: redirects are not followed (a POST turned into a
GET, or a prompt and its key sent to another host, is never what a batch job wants), only a chat
completion counts as an answer, and bodies are read up to a cap (a 200 MB error page must not
take a gigabyte of memory).
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from typing import Any, overload
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

from ..core import errors as E
from ..core import jsonio
from ..core.ratehints import RateInfo
from ..core.reading import received
from ..core.records import ChatRequest, ChatResult
from ..core.sse import SSEDecoder
from ..core.version import __version__
from ..providers import Dialect, dialect
from ..providers.base import CUT, StreamReader, snippet

CONNECT_TIMEOUT_S = 30.0
MAX_ANSWER_BYTES = 64 * 1024 * 1024  # an answer (or a whole stream) larger than this is refused
MAX_ERROR_BYTES = 64 * 1024  # an error body is read this far: the message is at its start
REDACTED = "[redacted]"
MIN_SECRET_START = 4  # a cut text ending in this much of a secret has it redacted
MIN_ANSWER_KEY = 12  # shorter API keys are placeholders: answers are not searched for them
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")

class ChatClient:
    """One aiohttp session for a whole run, so connections are reused across requests."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        concurrency: int,
        timeout_s: float,
        stream: bool = False,
        stream_usage: bool = False,
        wire: Dialect | None = None,
    ) -> None:
        """``stream`` asks for SSE; ``stream_usage`` also asks for usage the OpenAI way
        (``stream_options.include_usage``), which Together does not need: it sends usage anyway.
        ``wire``: the dialect spoken (chat completions unless said). Credentials in ``base_url``
        (``https://user:pass@host/v1``) are sent as basic auth."""
        self.dialect = wire or dialect("openai")
        url, user, password = split_credentials(base_url)
        self.base_url = url.rstrip("/")
        self.url = self.base_url + self.dialect.path
        headers = {"Content-Type": "application/json", "User-Agent": f"batchchat/{__version__}"}
        auth = self.dialect.auth_headers(api_key) if api_key else {}
        if auth.get("Authorization") and user is not None:
            raise E.JobError(
                "the base URL carries credentials (user:password@) and an API key is set too; both would be the "
                "Authorization header: keep one (drop them from the URL, or unset the key variable)"
            )
        headers.update(auth)
        token = None
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        # Longest first, so a secret holding another is replaced whole.
        self._secrets = tuple(sorted({s for s in (api_key, password, token) if s}, key=len, reverse=True))
        # Answers are the model's words: an API key this short is a placeholder (local servers
        # take "EMPTY", "ollama", "x"), and replacing it inside answers would change them.
        self._answer_secrets = tuple(s for s in self._secrets if s != api_key or len(s) >= MIN_ANSWER_KEY)
        self._headers = headers
        self.stream = stream
        self.stream_usage = stream_usage
        self._timeout_s = timeout_s
        # A stream may run long; what must not happen is silence, so the limit is between reads.
        # Connecting gets at most CONNECT_TIMEOUT_S, so an endpoint that swallows connections is
        # found out in seconds rather than after every attempt's whole timeout.
        connect = min(timeout_s, CONNECT_TIMEOUT_S)
        self._timeout = (
            aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=timeout_s)
            if stream
            else aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect)
        )
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ChatClient:
        connector = aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=self._concurrency)
        self._session = aiohttp.ClientSession(connector=connector, headers=self._headers, timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def complete(self, request: ChatRequest, on_text: Callable[[str], None] | None = None) -> ChatResult:
        """One attempt. With streaming, ``on_text`` gets each piece of the answer as it arrives."""
        secrets = self._answer_secrets
        shown = Redacting(on_text, secrets, self._redact_answer) if on_text is not None and secrets else None
        try:
            result = await self._attempt(request, shown.feed if shown is not None else on_text)
        except E.RequestError as error:
            raise self.redacted(error) from None
        finally:
            if shown is not None:
                shown.flush()
        return self.cleaned(result)

    def cleaned(self, result: ChatResult) -> ChatResult:
        """An answer without the key in any text the server chose, the kept answer's included:
        it must not reach the output or the journal through any."""
        if not self._answer_secrets:
            return result
        answer = self._redact_value(result.answer)
        read = self.dialect.read
        if answer is not result.answer:
            result = received(answer, result.latency_s, result.ttft_s, result.rate, read)
        content = result.content
        if content is not None and self._redact_answer(content) != content:  # a key split across parts
            answer = self.dialect.with_text(answer, self._redact_answer(content))
            result = received(answer, result.latency_s, result.ttft_s, result.rate, read)
        return result

    def _redact_value(self, value: Any) -> Any:
        """``value`` (a JSON value) with the secrets redacted from every text in it; the very
        same object when there was none to redact."""
        if isinstance(value, str):
            return self._redact_answer(value)
        if isinstance(value, list):
            items = [self._redact_value(item) for item in value]
            return value if all(a is b for a, b in zip(items, value, strict=True)) else items
        if isinstance(value, dict):
            pairs = [(self._redact_answer(k) if isinstance(k, str) else k, self._redact_value(v)) for k, v in value.items()]
            same = all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(pairs, value.items(), strict=True))
            return value if same else dict(pairs)
        return value

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use ChatClient as an async context manager"
        return self._session

    def redact(self, text: str) -> str:
        """A server's error text without the key or URL password, nor any token after
        "Bearer"/"Basic": a server echoing them must not put them on disk or screen. Where the
        text was cut short ("..."), the start of a secret the cut went through goes too."""
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        if CUT in text and self._secrets:
            parts = text.split(CUT)
            parts[:-1] = [self._without_secret_start(part) for part in parts[:-1]]
            text = CUT.join(parts)
        return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)

    def _without_secret_start(self, text: str) -> str:
        for secret in self._secrets:
            for k in range(min(len(secret) - 1, len(text)), MIN_SECRET_START - 1, -1):
                if text.endswith(secret[:k]):
                    return text[:-k] + REDACTED
        return text

    @overload
    def _redact_answer(self, text: str) -> str: ...

    @overload
    def _redact_answer(self, text: None) -> None: ...

    def _redact_answer(self, text: str | None) -> str | None:
        """A text of the answer without the key or URL password, where they are long enough to
        be secrets rather than placeholders."""
        if text is None:
            return None
        for secret in self._answer_secrets:
            text = text.replace(secret, REDACTED)
        return text

    def redacted(self, error: E.RequestError) -> E.RequestError:
        """A server's error without the key or URL password in its message."""
        message = self.redact(error.message)
        if message == error.message:
            return error
        return E.RequestError(error.error_type, message, status=error.status, retryable=error.retryable,
                              rate=error.rate, unreachable=error.unreachable, busy=error.busy)  # fmt: skip

    async def _attempt(self, request: ChatRequest, on_text: Callable[[str], None] | None) -> ChatResult:
        assert self._session is not None, "use ChatClient as an async context manager"
        wire = self.dialect
        data = jsonio.dumps(wire.body(request, self.stream, self.stream_usage))
        started = time.perf_counter()
        streaming = False
        try:
            async with self._session.post(self.url, data=data, allow_redirects=False) as response:
                status = response.status
                rate = wire.rate(response.headers)
                content_type = response.headers.get("Content-Type", "")
                if 300 <= status < 400:
                    raise redirect_error(status, response.headers.get("Location"))
                answered = 200 <= status < 300  # any 2xx: an answer (201, 203 ... as some proxies send)
                if answered and self.stream and content_type.startswith("text/event-stream"):
                    streaming = True
                    return await _read_stream(response, started, rate, wire.stream(on_text))
                body_bytes = await read_capped(response, MAX_ANSWER_BYTES if answered else MAX_ERROR_BYTES)
        except aiohttp.ConnectionTimeoutError:
            raise E.RequestError(
                E.CONNECTION, f"cannot connect to {self.url}: no connection within {self._timeout.sock_connect:g} s",
                retryable=True, unreachable=True,
            ) from None  # fmt: skip
        except TimeoutError:  # aiohttp's timeout errors subclass it
            what = (
                f"no data for {self._timeout_s:g} s"
                if self.stream
                else f"no complete answer within {self._timeout_s:g} s"
            )
            raise E.RequestError(E.TIMEOUT, what, retryable=True) from None
        except aiohttp.ClientError as e:
            raise connection_error(e, streaming, self.url) from None
        latency = time.perf_counter() - started
        if not answered:
            raise wire.error(status, body_bytes, content_type, rate)
        return wire.answer(body_bytes, latency, rate)


class Redacting:
    """Pieces of a streamed answer, passed on with the secrets redacted. The tail that could be
    the start of a secret split across two pieces is held back until the next piece (or the end)."""

    def __init__(self, show: Callable[[str], None], secrets: tuple[str, ...],
                 redact: Callable[[str], str]) -> None:  # fmt: skip
        self.show = show
        self.redact = redact
        self.hold = max(len(secret) for secret in secrets) - 1
        self.pending = ""

    def feed(self, piece: str) -> None:
        text = self.redact(self.pending + piece)
        cut = max(len(text) - self.hold, 0)
        self.pending = text[cut:]
        if cut:
            self.show(text[:cut])

    def flush(self) -> None:
        if self.pending:
            self.show(self.redact(self.pending))
            self.pending = ""


async def read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body, or its first ``cap`` bytes; an answer larger than that is refused (it would be
    again), an error body is only cut (its message is at its start)."""
    declared = response.content_length
    encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
    if declared is not None and declared <= cap and not encoded:  # the usual answer: read whole
        return await response.read()  # (a compressed body's length says nothing of what it unpacks to)
    answer = 200 <= response.status < 300
    if answer and declared is not None and declared > cap:
        raise _too_large(declared)
    parts: list[bytes] = []
    size = 0
    while size <= cap:
        chunk = await response.content.readany()
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        size += len(chunk)
    if answer:
        raise _too_large(size)
    response.close()  # the rest is never read: drop the connection rather than drain it
    return b"".join(parts)[:cap]


def _too_large(size: int) -> E.RequestError:
    return E.RequestError(E.BAD_RESPONSE, f"the answer is larger than {MAX_ANSWER_BYTES // 2**20} MB ({size:,} "
                          "bytes or more); refused", status=200, retryable=False)  # fmt: skip


def redirect_error(status: int, location: str | None) -> E.RequestError:
    """A redirect is an error that names where it points: following it would turn the POST into a
    GET (301-303) or send the prompt and the key to another origin (307, 308)."""
    where = snippet((location or "an unnamed place").encode(), limit=300)
    return E.RequestError(
        E.REDIRECT, f"HTTP {status}: the endpoint redirects to {where}; batchchat does not follow redirects for "
        "API calls. If that address is right, use it as the base URL", status=status, retryable=False,
    )  # fmt: skip


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """The URL without ``user:password@``, the user and the password."""
    parsed = urlsplit(url)
    if parsed.username is None and parsed.password is None:
        return url, None, None
    host = parsed.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parsed.port}" if parsed.port else "")
    return urlunsplit(parsed._replace(netloc=netloc)), unquote(parsed.username or ""), (
        unquote(parsed.password) if parsed.password is not None else None)  # fmt: skip


async def _read_stream(
    response: aiohttp.ClientResponse,
    started: float,
    rate: RateInfo | None,
    stream: StreamReader,
) -> ChatResult:
    decoder = SSEDecoder()
    size = 0
    try:
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise _too_large(size)
            elapsed = time.perf_counter() - started
            for event in decoder.feed(chunk):
                stream.add(event, elapsed)
            if stream.complete:  # the answer is whole: whatever follows cannot spoil it
                break
    except aiohttp.ClientError:
        if not stream.complete:
            raise
    if not stream.complete:
        for event in decoder.close():
            stream.add(event, time.perf_counter() - started)
    return stream.result(time.perf_counter() - started, rate)


def connection_error(error: aiohttp.ClientError, streaming: bool, url: str) -> E.RequestError:
    """What broke, by when it broke: once a stream has begun, any break cuts the answer short."""
    detail = _first_line(error)
    if streaming:
        return E.RequestError(E.STREAM_TRUNCATED, f"stream broke off: {detail}", retryable=True)
    if isinstance(error, aiohttp.ClientPayloadError):
        return E.RequestError(E.BAD_RESPONSE, f"response cut off: {detail}", retryable=True)
    if isinstance(error, aiohttp.ClientConnectorError):  # refused, DNS or TLS: no connection at all
        return E.RequestError(E.CONNECTION, f"cannot connect to {url}: {detail}", retryable=True, unreachable=True)
    return E.RequestError(E.CONNECTION, f"connection failed: {detail}", retryable=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
