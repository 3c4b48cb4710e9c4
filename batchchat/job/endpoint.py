"""Where requests go: the endpoint a job names, how it is told apart from others, and what to say
when it refuses every request.

The endpoint holds the *name* of the variable with the API key, never the key itself, so a job
can be printed, compared and stored without leaking it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

from ..core.errors import AUTH, NO_CREDIT, NOT_FOUND, REDIRECT, RequestError
from ..providers import DEFAULT_DIALECT, PROVIDERS, provider_at

SIMULATOR = "the built-in simulator"


@dataclass(frozen=True)
class Endpoint:
    provider: str = "together"
    base_url: str | None = None  # None only for provider "sim", whose URL exists once it starts
    api_key_env: str | None = None
    base_url_env: str | None = None  # the environment variable the base URL came from, if it did

    def api_key(self) -> str | None:
        """The key, without the spaces or line break a file it was read from may leave around it."""
        if not self.api_key_env:
            return None
        return (os.environ.get(self.api_key_env) or "").strip() or None

    @property
    def missing_key(self) -> str | None:
        """The key variable that requests here need and that is not set; a server on this machine
        (and the simulator) needs none."""
        if self.api_key_env is None or self.base_url is None or is_loopback(self.base_url) or self.api_key():
            return None
        return self.api_key_env

    @property
    def identity(self) -> str:
        """Where requests are answered, as part of what identifies a request: an answer from one
        endpoint is never reused for a job sent to another. The URL is normalised (case, default
        port, trailing slash; Together's two host names are one API) and never holds the key or
        URL credentials. The simulator is one endpoint, whatever port it starts on."""
        if self.provider == "sim" or self.base_url is None:
            return "sim"
        url = normalized_url(self.base_url)
        # one server may speak two formats (the simulator does): an answer in one is not the other's
        return url if self.dialect == DEFAULT_DIALECT else f"{url} ({self.dialect})"

    @property
    def shown(self) -> str:
        """The endpoint as a message names it: its URL (a password masked), and the variable it
        came from, if it came from one."""
        if self.provider == "sim" or self.base_url is None:
            return SIMULATOR
        url = shown_url(self.base_url)
        return f"{url} (from {self.base_url_env})" if self.base_url_env else url

    @property
    def dialect(self) -> str:
        """The wire format requests here are sent in: the provider's."""
        return PROVIDERS[self.provider].dialect

    @property
    def stream_usage(self) -> bool:
        """Whether streams must ask for usage (OpenAI's ``stream_options``). Together and the
        simulator send usage on the final chunk unasked; vLLM and OpenAI send it only when asked,
        and servers that do not know the option ignore it."""
        if self.provider == "sim" or self.base_url is None:
            return False
        known = provider_at(self.base_url)
        return known.stream_usage if known is not None else True

    def auth_problem(self, error: RequestError) -> str:
        """What a 401 means and what to do: a key was refused, or none was sent."""
        variable = self.api_key_env
        if self.api_key() is None:
            ask = f"set the variable {variable}" if variable else "name the variable holding a key with --api-key-env"
            return f"wants an API key, and none was sent ({error.message}); {ask}"
        fix = f"set a valid key in {variable}" if variable else "pass a valid key"
        return f"refused the API key ({error.message}); {fix}"

    def refusal(self, error: RequestError, names: Callable[[str], str]) -> str:
        """Why nothing can be sent here, for an error that would fail every request (no server,
        a redirect, a bad key, no credit), and what to do; ``names`` names a setting as its user
        wrote it."""
        where = self.shown
        if error.unreachable:
            return (
                f"nothing answers at {where} ({error.message}); check the URL ({names('base_url')}, "
                f"{names('provider')}) and that the server is running, then run again"
            )
        if error.error_type == REDIRECT:
            return f"{where} {error.message.split(': ', 1)[-1]}"
        if error.error_type == AUTH:
            return f"{where} {self.auth_problem(error)} and run again"
        if error.error_type == NO_CREDIT:
            return (
                f"{where} says the account has no credit ({error.message}); add credit or raise the spending limit, "
                "then run again"
            )
        if error.error_type == NOT_FOUND and self.base_url is not None and "/v1" not in urlparse(self.base_url).path:
            return (f"{where} found nothing to answer ({error.message}); most servers answer under /v1: try "
                    f"{names('base_url')} {self.base_url.rstrip('/')}/v1")  # fmt: skip
        return f"{where} refused ({error.message}); run again once it is fixed"


def endpoint_label(identity: str) -> str:
    """An endpoint's ``identity`` as a message names it."""
    return SIMULATOR if identity == "sim" else identity


DEFAULT_PORTS = {"http": 80, "https": 443}


def normalized_url(url: str) -> str:
    """``scheme://host[:port]/path``, lower-cased where case does not matter, without credentials,
    query, fragment, a default port or a trailing slash."""
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    host = (parsed.hostname or "").lower()
    known = provider_at(url)
    host = known.hosts[0] if known is not None else host  # one API, whichever of its names it was reached at
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parsed.port
    except ValueError:
        port = None
    shown_port = f":{port}" if port is not None and port != DEFAULT_PORTS.get(scheme) else ""
    path = re.sub(r"/+", "/", parsed.path).rstrip("/")
    return f"{scheme}://{host}{shown_port}{path}"


def shown_url(url: str) -> str:
    """A URL as it may be printed: a password in it is masked."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    return url.replace(f":{parsed.password}@", ":***@", 1)


def is_loopback(url: str) -> bool:
    """A server on this machine (vLLM, llama.cpp, Ollama, the simulator) needs no key."""
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def key_state(variable: str) -> str:
    """"is empty" for a key variable set to nothing (``TOGETHER_API_KEY=``), else "is not set"."""
    return "is empty" if variable in os.environ else "is not set"
