"""The files of a provider batch: one JSON line per request, and how requests are split into
files within the provider's limits. Kept apart from the engine so a dry run can plan the files
without loading an HTTP client.

A line's ``custom_id`` is what the request was asked under: its key, which is stable across runs,
so results match back whatever order they come in and whichever run collects them (a re-ask of
an invalid answer is the key with the answer's number, ``key.2``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .endpoint import Endpoint
from .records import ChatRequest
from .spec import SimConfig

ENDPOINT = "/v1/chat/completions"
MAX_LINES = 50_000  # requests per file, at both providers
MAX_BYTES = {"together": 100 * 1024 * 1024, "openai": 200 * 1024 * 1024}


def dialect_of(endpoint: Endpoint, simulator: SimConfig) -> str:
    """Whose Batch API the endpoint speaks: OpenAI's for provider openai, Together's otherwise
    (the simulator speaks the one it is set to)."""
    if endpoint.provider == "sim":
        return simulator.batch_dialect
    return "openai" if endpoint.provider == "openai" else "together"


@dataclass(frozen=True)
class Limits:
    """What one file (and so one batch) may hold."""

    lines: int = MAX_LINES
    bytes: int = MAX_BYTES["together"]

    @classmethod
    def of(cls, dialect: str, simulator: SimConfig | None = None) -> Limits:
        lines = MAX_LINES
        if simulator is not None and simulator.batch_max_lines:
            lines = min(lines, simulator.batch_max_lines)
        return cls(lines, MAX_BYTES.get(dialect, MAX_BYTES["together"]))


def line(request: ChatRequest) -> bytes:
    """The request as a batch line. ``method`` and ``url`` are OpenAI's; Together accepts them."""
    record = {"custom_id": request.key, "method": "POST", "url": ENDPOINT, "body": request.body()}
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


@dataclass(frozen=True)
class Chunk:
    """The requests of one file: one model, within the limits."""

    model: str
    ids: tuple[str, ...]  # custom ids, in file order
    data: bytes


def split(requests: Iterable[ChatRequest], limits: Limits) -> Iterator[Chunk]:
    """Files of requests, one model each (OpenAI requires it, and it keeps a batch's price one
    price), each within ``limits``. A file is yielded as soon as it is full, so a million
    requests never sit in memory as lines at once; the rest come at the end, one per model."""
    open_files: dict[str, tuple[list[str], list[bytes], int]] = {}
    for request in requests:
        data = line(request)
        ids, lines, size = open_files.get(request.model, ([], [], 0))
        if ids and (len(ids) >= limits.lines or size + len(data) > limits.bytes):
            yield Chunk(request.model, tuple(ids), b"".join(lines))
            ids, lines, size = [], [], 0
        ids.append(request.key)
        lines.append(data)
        open_files[request.model] = (ids, lines, size + len(data))
    for model, (ids, lines, _) in open_files.items():
        if ids:
            yield Chunk(model, tuple(ids), b"".join(lines))
