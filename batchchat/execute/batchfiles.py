"""The files of a provider batch: one JSON line per request, and how requests are split into
files within the provider's limits. Kept apart from the engine so a dry run can plan the files
without loading an HTTP client.

A line's ``custom_id`` is what the request was asked under: its key, which is stable across runs,
so results match back whatever order they come in and whichever run collects them (a re-ask of
an invalid answer is the key with the answer's number, ``key.2``).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.records import ChatRequest
from ..job.endpoint import Endpoint
from ..job.spec import SimConfig
from ..providers import BATCH_WIRES, PROVIDERS
from ..providers.base import BatchWire
from ..store.stats import BatchTimes


def dialect_of(endpoint: Endpoint, simulator: SimConfig) -> str:
    """Whose Batch API the endpoint speaks (a name in ``providers.BATCH_WIRES``): its provider's,
    Together's for a server batchchat knows no Batch API of (the simulator speaks the one it
    is set to)."""
    if endpoint.provider == "sim":
        return simulator.batch_dialect
    return endpoint.provider if endpoint.provider in BATCH_WIRES else "together"


@dataclass(frozen=True)
class Limits:
    """What one file (and so one batch) may hold."""

    lines: int
    bytes: int

    @classmethod
    def of(cls, dialect: str, simulator: SimConfig | None = None) -> Limits:
        """The limits of the provider whose Batch API is spoken (``dialect``: its name)."""
        provider = PROVIDERS[dialect]
        assert provider.batch_max_lines is not None and provider.batch_max_bytes is not None
        lines = provider.batch_max_lines
        if simulator is not None and simulator.batch_max_lines:
            lines = min(lines, simulator.batch_max_lines)
        return cls(lines, provider.batch_max_bytes)


@dataclass(frozen=True)
class Chunk:
    """The requests of one file: one model, within the limits."""

    model: str
    ids: tuple[str, ...]  # custom ids, in file order
    data: bytes
    tag: str  # the file's own mark, on its lines' ids where the wire's batches do not say what they hold


def split(requests: Iterable[ChatRequest], limits: Limits, wire: BatchWire) -> Iterator[Chunk]:
    """Files of requests, one model each (OpenAI requires it, and it keeps a batch's price one
    price), each within ``limits``. A file is yielded as soon as it is full, so a million
    requests never sit in memory as lines at once; the rest come at the end, one per model."""
    open_files: dict[str, tuple[list[str], list[bytes], int, str]] = {}
    for request in requests:
        ids, lines, size, tag = open_files.get(request.model) or ([], [], 0, uuid.uuid4().hex[:8])
        data = wire.line(request, tag)
        if ids and (len(ids) >= limits.lines or size + len(data) > limits.bytes):
            yield Chunk(request.model, tuple(ids), b"".join(lines), tag)
            ids, lines, size, tag = [], [], 0, uuid.uuid4().hex[:8]
            data = wire.line(request, tag)
        ids.append(request.key)
        lines.append(data)
        open_files[request.model] = (ids, lines, size + len(data), tag)
    for model, (ids, lines, _, tag) in open_files.items():
        if ids:
            yield Chunk(model, tuple(ids), b"".join(lines), tag)


@dataclass
class Steps:
    """The provider batch steps a journal keeps, read into what they mean: the files uploaded
    and the ids each holds, the batch made over each, which batches are collected, and which
    files will never get one.

    A batch taken for a file's without proof (a wire whose batches do not say what they hold)
    whose results turn out to answer none of its requests is ``foreign``: not read, and the file
    has no batch again.

    A call that makes something is recorded before it is made (``upload`` with the file's name
    and ids, ``create`` with the file), and what it made after (``file``, ``batch``): a run that
    finds an intent without its result looks for what the call may have made before making it
    again. A batch made over a file that has one already (a create that timed out, then acted)
    is an ``extra``: cancelled, and collected all the same, since what it finished is billed.
    """

    files: dict[str, tuple[str, ...]] = field(default_factory=dict)  # file -> the custom ids it holds
    models: dict[str, str] = field(default_factory=dict)  # file -> its model
    uploaded_at: dict[str, float] = field(default_factory=dict)  # file -> when (epoch)
    batch_of: dict[str, str] = field(default_factory=dict)  # file -> its batch
    collected: set[str] = field(default_factory=set)  # batches whose answers are kept
    collected_at: dict[str, float] = field(default_factory=dict)  # batch -> when (epoch), where recorded
    dropped: set[str] = field(default_factory=set)  # files whose batch is gone for good
    uploads: dict[str, tuple[str, str, float, str]] = field(default_factory=dict)  # name -> (ids, model, at, tag)
    creating: dict[str, float] = field(default_factory=dict)  # file -> when its batch was last asked for
    creates: Counter[str] = field(default_factory=Counter)  # file -> create calls made for it
    extras: dict[str, str] = field(default_factory=dict)  # batch -> the file it repeats
    missing: Counter[str] = field(default_factory=Counter)  # batch -> looks in a row the provider had none
    first_create: dict[str, float] = field(default_factory=dict)  # file -> when its first create was sent
    foreign: set[str] = field(default_factory=set)  # batches taken for a file's whose results were others'
    presumed: set[str] = field(default_factory=set)  # batches taken for a file's on their time and size alone
    tags: dict[str, str] = field(default_factory=dict)  # file -> the mark on its lines' ids (``Chunk.tag``)

    @classmethod
    def read(cls, steps: Sequence[dict[str, Any]]) -> Steps:
        read = cls()
        for step in steps:
            read.take(step)
        return read

    def take(self, step: dict[str, Any]) -> None:
        kind = step.get("step")
        file, batch, name = step.get("file"), step.get("batch"), step.get("name")
        at = _time(step.get("at"))
        if kind == "upload" and isinstance(name, str) and isinstance(step.get("ids"), str):
            self.uploads[name] = (step["ids"], str(step.get("model") or ""), at, str(step.get("tag") or ""))
        elif kind == "file" and isinstance(file, str):
            ids, model = step.get("ids"), step.get("model")
            tag = ""
            if isinstance(name, str) and name in self.uploads:  # the upload it confirms holds its ids
                ids, model, at, tag = self.uploads.pop(name)
            if not isinstance(ids, str):
                return
            self.dropped.discard(file)  # an id the provider gave again: a new file
            self.batch_of.pop(file, None)
            self.creating.pop(file, None)
            self.files[file] = tuple(ids.split())
            self.models[file] = str(model or "")
            self.uploaded_at[file] = at
            if tag:
                self.tags[file] = tag
        elif kind == "upload_lost" and isinstance(name, str):
            self.uploads.pop(name, None)
        elif kind == "create" and isinstance(file, str):
            self.creating[file] = at
            self.first_create.setdefault(file, at)
            self.creates[file] += 1
        elif kind == "batch" and isinstance(batch, str) and isinstance(file, str):
            self.batch_of[file] = batch
            self.extras.pop(batch, None)  # an extra taken as the file's own (its own was gone)
            if step.get("presumed") is True:
                self.presumed.add(batch)
            else:
                self.presumed.discard(batch)
        elif kind == "extra" and isinstance(batch, str) and isinstance(file, str):
            self.extras[batch] = file
        elif kind == "collected" and isinstance(batch, str):
            self.collected.add(batch)
            if "at" in step:
                self.collected_at[batch] = at
        elif kind == "missing" and isinstance(batch, str):
            self.missing[batch] += 1
        elif kind == "seen" and isinstance(batch, str):
            self.missing.pop(batch, None)
        elif kind == "dropped" and isinstance(file, str):
            self.dropped.add(file)
        elif kind == "foreign" and isinstance(batch, str):
            self.foreign.add(batch)
            self.presumed.discard(batch)
            self.collected.add(batch)
            self.extras.pop(batch, None)
            if isinstance(file, str) and self.batch_of.get(file) == batch:
                del self.batch_of[file]

    def open_files(self) -> list[str]:
        """Files whose answers are still to be kept: their requests wait, and are not sent again."""
        return [f for f in self.files if f not in self.dropped and self.batch_of.get(f) not in self.collected]

    def open_extras(self) -> list[str]:
        """Extra batches not yet collected."""
        return [batch for batch in self.extras if batch not in self.collected]

    def running(self) -> list[str]:
        """What may still run at the provider, billed: the open files (their batches, made or
        about to be) and the extra batches not yet collected."""
        return self.open_files() + self.open_extras()

    def waiting(self) -> set[str]:
        """The custom ids in open files."""
        return {cid for file in self.open_files() for cid in self.files[file]}

    def suspect(self, file: str) -> bool:
        """Whether more than one create was sent for ``file``: the provider may make a second
        batch of it late (a create that timed out, then acted), to be found as an extra."""
        return self.creates[file] > 1

    def watched(self, now: float, window: float) -> list[str]:
        """Files with more than one create, the last sent less than ``window`` seconds before
        ``now``, and fewer extras found than creates beyond the first: looked at for an extra
        batch even once their own is collected."""
        extras = Counter(self.extras.values())
        return [file for file in self.creates if self.suspect(file) and now < self.creating.get(file, 0.0) + window
                and file not in self.dropped and extras[file] < self.creates[file] - 1]  # fmt: skip

    def times(self, since: float | None = None) -> BatchTimes:
        """The batches submitted and collected since ``since`` (epoch; None: ever), and those
        still waiting, with how long each collected one took (extra batches left out)."""
        own = {batch: file for file, batch in self.batch_of.items()}
        submitted = [file for file, at in self.uploaded_at.items() if since is None or at >= since]
        collected = [batch for batch in self.collected if batch in own
                     and (since is None or self.collected_at.get(batch, -1.0) >= since)]  # fmt: skip
        waiting = self.open_files()
        waits = [self.collected_at[b] - self.uploaded_at[own[b]] for b in collected
                 if b in self.collected_at and own[b] in self.uploaded_at]  # fmt: skip
        return BatchTimes(
            submitted=len(submitted), submitted_requests=sum(len(self.files[file]) for file in submitted),
            collected=len(collected), collected_requests=sum(len(self.files.get(own[b], ())) for b in collected),
            waiting=len(waiting), waiting_requests=sum(len(self.files[file]) for file in waiting),
            waits=tuple(sorted(max(0.0, wait) for wait in waits)),
        )  # fmt: skip

    def file_of(self, batch: str) -> str:
        extra = self.extras.get(batch)
        return extra if extra is not None else next(file for file, made in self.batch_of.items() if made == batch)


def _time(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else time.time()


def request_key_of(custom_id: str) -> str:
    """The key of the request a custom id asks: ``key.2`` is the second answer asked for ``key``."""
    head, _, tail = custom_id.rpartition(".")
    return head if head and tail.isdigit() else custom_id
