"""The providers batchchat knows, and the wire formats they speak: one registry.

A provider is a record (``Provider``): where its API is, which variables name its URL and its key,
which ``Dialect`` it speaks, what its Batch API allows, which name the price catalogue gives it,
and the host names its API answers at. Everything about a wire format is in its dialect's module
(``openai``, ``anthropic``). Adding a provider that speaks an existing format is one entry here;
one with a format of its own is its module plus its entries here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from ..core.reading import Reading, read_completion
from .anthropic import AnthropicBatches, AnthropicDialect
from .base import BatchWire, Dialect
from .openai import OpenAIBatches, OpenAIDialect

MB = 1024 * 1024


@dataclass(frozen=True)
class Provider:
    name: str
    base_url: str | None  # None: the simulator, whose URL exists once it starts
    base_url_env: str | None  # read as the provider's SDK reads it, when no flag or job file sets a URL
    key_env: str | None
    dialect: str
    catalogue: str | None = None  # the price catalogue's name for it
    hosts: tuple[str, ...] = ()  # its API's host names, the first the one it is known by
    batch_max_lines: int | None = None  # its Batch API's requests per file; None: no Batch API batchchat speaks
    batch_max_bytes: int | None = None
    stream_usage: bool = True  # whether a stream must ask for usage (OpenAI's stream_options)


PROVIDERS: dict[str, Provider] = {
    "together": Provider("together", "https://api.together.xyz/v1", "TOGETHER_BASE_URL", "TOGETHER_API_KEY", "openai",
                         "together", ("api.together.xyz", "api.together.ai"), 50_000, 100 * MB, stream_usage=False),
    "openai": Provider("openai", "https://api.openai.com/v1", "OPENAI_BASE_URL", "OPENAI_API_KEY", "openai", "openai",
                       ("api.openai.com",), 50_000, 200 * MB),
    "anthropic": Provider("anthropic", "https://api.anthropic.com/v1", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY",
                          "anthropic", "anthropic", ("api.anthropic.com",), 100_000,
                          244 * MB),  # its 256 MB as 256,000,000 bytes, less a comma a line and the brackets
    "sim": Provider("sim", None, None, None, "openai", stream_usage=False),
}  # fmt: skip
DIALECTS: dict[str, Dialect] = {"openai": OpenAIDialect(), "anthropic": AnthropicDialect()}
# Each Batch API batchchat speaks, by the name of the provider that serves it.
BATCH_WIRES: dict[str, BatchWire] = {"together": OpenAIBatches("together"), "openai": OpenAIBatches("openai"),
                                     "anthropic": AnthropicBatches()}  # fmt: skip
DEFAULT_DIALECT = "openai"  # what an answer no other dialect claims is read as
_SPECIFIC = tuple(d for name, d in DIALECTS.items() if name != DEFAULT_DIALECT)


def dialect(name: str) -> Dialect:
    return DIALECTS[name]


def provider_at(url: str | None) -> Provider | None:
    """The provider whose API answers at ``url``'s host, if batchchat knows it."""
    host = ((urlparse(url).hostname or "") if url else "").lower()
    return next((p for p in PROVIDERS.values() if host in p.hosts), None)


def read_answer(answer: Any) -> Reading:
    """A kept answer read by the dialect it is in; never raises."""
    for specific in _SPECIFIC:
        if specific.claims(answer):
            return specific.read(answer)
    return read_completion(answer)


for _dialect in DIALECTS.values():  # every answer is read as the journal will read it back
    _dialect.reader = read_answer


__all__ = ["BATCH_WIRES", "DIALECTS", "PROVIDERS", "BatchWire", "Dialect", "Provider", "dialect", "provider_at", "read_answer"]
