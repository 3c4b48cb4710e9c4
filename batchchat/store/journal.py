"""Where finished requests are kept: an append-only journal beside the output, or memory.

The journal is JSON Lines, one record per finished request (ok or error), keyed by the request's
stable key, written and flushed as each request finishes. A run killed at any moment therefore
loses at most the requests that were in flight, and a run started again sends only what the
journal lacks. A record cut off mid-write by the kill is ignored on reading and cut away before
new records are appended. Records hold answers and metadata, never the API key.

A run's records follow a line naming its *scope*: the endpoint that answered them and the answer
checks they were judged by. A journal opened for one scope sees only the answers of its endpoint
(an answer from the simulator is never an answer from Together), and marks those judged by other
checks as *stale*, to be judged again by the caller. Records written before scopes existed carry
none: they are taken as the endpoint's of the first run that opens the journal to write, which
records that assumption once, and they are always judged again.

An answer's record keeps the completion as received (``answer``, redacted of the key), not what
batchchat read in it: its text, finish reason, tokens and id are read from it by
``reading.read_completion`` each time the record is read back, so an answer of any shape is kept
(whatever was paid for is on disk before anything can fail reading it), and reading it better
later needs no new request. Text the standard library cannot write as UTF-8 (a lone surrogate,
half an emoji, as a server sent it) is written with its JSON escapes and reads back the same.

In memory the index holds only each key's byte offset and how it ended, so a million-row job does
not hold a million answers; the output is assembled by reading records back.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Protocol

from ..core import jsonio
from ..core.compact import KeyIndex
from ..core.errors import JobError, StorageError
from ..core.records import OK, PENDING, RowOutcome
from .files import open_nofollow
from .stored import outcome_of, record_of, valid_record

VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # version 1: no scope lines; 2: answers as read, not as received


@dataclass(frozen=True, slots=True)
class Scope:
    """What a stored answer is valid for: the endpoint that gave it, and the signature of the
    answer checks it was judged by."""

    endpoint: str
    checks: str = "none"


class Store(Protocol):
    """Where finished requests are kept, by key, and the only place any executor puts them."""

    @property
    def legacy(self) -> int:
        """Records from before scopes, taken as this endpoint's."""
        ...

    @property
    def invalid(self) -> int:
        """Damaged records, skipped."""
        ...

    @property
    def elsewhere(self) -> dict[str, int]:
        """Requests answered at other endpoints, by endpoint."""
        ...

    @property
    def assumed_endpoint(self) -> str | None:
        """The endpoint legacy records were taken as, when this run assumed it."""
        ...

    def __contains__(self, key: str) -> bool: ...

    def __len__(self) -> int: ...

    def failed(self, key: str) -> bool:
        """Whether the request ended in error."""
        ...

    def stale(self, key: str) -> bool:
        """Whether its outcome was judged by other checks than this run's."""
        ...

    def unfinished(self, key: str) -> bool:
        """Whether it holds an answer the checks reject, with re-asks still to go."""
        ...

    def earlier(self, key: str) -> bool:
        """Whether a run before this one finished it."""
        ...

    def adopt(self, keys: Iterable[str | None]) -> int:
        """Copy in the answers of ``keys`` that only another output's journal holds (a trial
        written elsewhere), so this store holds every answer its output uses; how many."""
        ...

    @property
    def has_stale(self) -> bool: ...

    def begin(self) -> None:
        """Ready to take this run's outcomes."""
        ...

    def add(self, outcome: RowOutcome) -> None: ...

    def prefetch(self, keys: Iterable[str]) -> None:
        """Look many keys up at once (a batch of rows): asking for each next is then cheap.
        What it answers is the same either way."""
        ...

    def get_many(self, keys: Iterable[str], answers: bool = False) -> dict[str, RowOutcome]:
        """The outcomes stored for the keys that have one; with ``answers``, each with the answer
        as received (``RowOutcome.answer``), which assembly does not need."""
        ...

    @property
    def steps(self) -> list[dict[str, Any]]:
        """The steps of this endpoint's provider batches, in order (files uploaded, batches
        created, batches collected): what a Batch API run must take up again."""
        ...

    def add_step(self, step: dict[str, Any]) -> None:
        """Keep a step before the next is taken, so a crash at any moment resumes it."""
        ...

    def refresh(self) -> None:
        """See what other processes have added since (the parts of a Ray run's workers)."""
        ...

    def describe(self, job: dict[str, Any]) -> None:
        """What this run was asked to do (never the key), kept with its first record for a report."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    """Outcomes by key, for runs with no output file (``run_frame``): one run, one scope."""

    def __init__(self) -> None:
        self._outcomes: dict[str, RowOutcome] = {}
        self.steps: list[dict[str, Any]] = []
        self.legacy = 0
        self.invalid = 0
        self.elsewhere: dict[str, int] = {}
        self.assumed_endpoint: str | None = None

    def __contains__(self, key: str) -> bool:
        return key in self._outcomes

    def __len__(self) -> int:
        return len(self._outcomes)

    def failed(self, key: str) -> bool:
        outcome = self._outcomes.get(key)
        return outcome is not None and outcome.status != OK

    def stale(self, key: str) -> bool:
        return False

    def earlier(self, key: str) -> bool:
        return False

    def adopt(self, keys: Iterable[str | None]) -> int:
        return 0

    def unfinished(self, key: str) -> bool:
        outcome = self._outcomes.get(key)
        return outcome is not None and outcome.status == PENDING

    @property
    def has_stale(self) -> bool:
        return False

    def begin(self) -> None:
        pass

    def add(self, outcome: RowOutcome) -> None:
        assert outcome.key is not None
        # What was read from the answer is all a run in memory needs: the answer itself, as
        # received, would only hold memory (a journal keeps it, for reading again later).
        self._outcomes[outcome.key] = replace(outcome, answer=None) if outcome.answer is not None else outcome

    def prefetch(self, keys: Iterable[str]) -> None:
        pass

    def get_many(self, keys: Iterable[str], answers: bool = False) -> dict[str, RowOutcome]:
        return {key: o for key in keys if (o := self._outcomes.get(key)) is not None}

    def add_step(self, step: dict[str, Any]) -> None:
        self.steps.append(step)

    def refresh(self) -> None:
        pass

    def describe(self, job: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class Journal:
    """The journal file of one output, seen from one scope; open it while holding the output's lock."""

    def __init__(self, path: Path, scope: Scope | None = None, *, read_only: bool = False, empty: bool = False) -> None:
        """``read_only`` reads without taking over the file: a torn tail is skipped, not cut away,
        and nothing is recorded (a dry run may look while another run writes). ``empty`` (read
        only): the file's records are not read, as if it were gone (a dry run of a restart, which
        would delete it)."""
        assert read_only or not empty, "only a journal that records nothing can ignore what it holds"
        self.path = path
        self.scope = scope or Scope("unknown")
        self.read_only = read_only
        self._offsets = KeyIndex()  # key -> offset of its latest record in this scope
        self._failed: set[str] = set()  # keys whose latest record is an error
        self._stale: set[str] = set()  # keys whose latest record was judged by other checks
        self._unfinished: set[str] = set()  # keys whose answer failed its checks, with re-asks to go
        self._adopted: set[str] = set()  # keys this run copied from another output's journal
        self.torn = 0  # unreadable records skipped (a cut-off last line, normally)
        self.invalid = 0  # records of the wrong shape or types (edited by hand, or damaged), skipped
        self.legacy = 0  # records from before scopes, taken as this endpoint's
        self.assumed_endpoint: str | None = None  # set when this run made that assumption
        self.elsewhere: dict[str, int] = {}  # endpoint -> keys answered there and not here
        self.steps: list[dict[str, Any]] = []  # provider batch steps at this endpoint
        self.job: dict[str, Any] | None = None  # this run's settings, written with its scope line
        self.described: dict[str, Any] | None = None  # the settings of the latest run that wrote here
        self._file: IO[bytes] | None = None  # opened by the first record: a run that sends nothing writes nothing
        self._version = VERSION  # of the records before this run's
        self._scoped = False  # whether this run's scope line is written
        self._created = False  # whether this run made the file
        self._size = 0
        self._reader: IO[bytes] | None = None
        self._end_of_good = 0
        if not empty:
            self._read_existing()
        self._earlier_end = self._size if self._file is not None else self._end_of_good  # records before: earlier runs'

    def __len__(self) -> int:
        return len(self._offsets)

    def __contains__(self, key: str) -> bool:
        return key in self._offsets

    def failed(self, key: str) -> bool:
        return key in self._failed

    def stale(self, key: str) -> bool:
        """Whether the answer stored for ``key`` was judged by other checks than this scope's."""
        return key in self._stale

    def unfinished(self, key: str) -> bool:
        """Whether the answer kept for ``key`` failed its checks and is to be asked again."""
        return key in self._unfinished

    def earlier(self, key: str) -> bool:
        """Whether the record kept for ``key`` was written by an earlier run (or copied from one)."""
        return self.written_before(key, self._earlier_end) or key in self._adopted

    def adopt(self, keys: Iterable[str | None]) -> int:
        """Nothing: a journal alone reuses no other's (``JournalSet`` does)."""
        return 0

    def keep_copy(self, outcome: RowOutcome) -> None:
        """Keep an answer an earlier run paid for in another output's journal, as received and
        without a time (it was not answered now): this output then holds every answer it uses."""
        try:
            assert outcome.key is not None and not self.read_only
            self._scope_line()
            offset = self._size
            self._write(record_of(outcome))
            self._index(outcome.key, offset, outcome.status, fresh=True)
            self._adopted.add(outcome.key)
        except OSError as e:
            self._cut_back()
            raise StorageError("the journal", self.path, e) from None

    @property
    def opened_size(self) -> int:
        """Where the records that were there when this journal was opened end."""
        return self._earlier_end

    def written_before(self, key: str, end: int) -> bool:
        """Whether the record kept for ``key`` is one of the first ``end`` bytes'."""
        offset = self._offsets.get(key)
        return offset is not None and offset < end

    @property
    def has_stale(self) -> bool:
        return bool(self._stale)

    def add(self, outcome: RowOutcome) -> None:
        """Append one finished request and flush it to the OS, so that a kill cannot lose it.

        Raises ``StorageError`` when the disk will not take it; the journal is then cut back to
        its last whole record, so it stays readable and true.
        """
        try:
            self._add(outcome)
        except OSError as e:
            self._cut_back()
            raise StorageError("the journal", self.path, e) from None

    def _cut_back(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # else the torn record is cut away when next opened
                os.ftruncate(self._file.fileno(), self._size)

    def begin(self) -> None:
        """Open the journal for this run's records before the first request (a disk that cannot
        take it is then found before anything is paid for)."""
        try:
            self._begin()
        except OSError as e:
            self._cut_back()
            raise StorageError("the journal", self.path, e) from None

    def _begin(self) -> None:
        if self._file is None:
            self._open_for_append()

    def _scope_line(self) -> None:
        """This run's records follow the line naming their scope."""
        if self._scoped:
            return
        self._begin()
        if self._version != VERSION:  # an older batchchat reading on must refuse these records, not misread them
            self._write({"journal": "batchchat", "version": VERSION})
        if self.assumed_endpoint is not None:  # the endpoint answered: it claims the old records
            self._write({"legacy": {"endpoint": self.assumed_endpoint}})
        self._write({"scope": {"endpoint": self.scope.endpoint, "checks": self.scope.checks}})
        if self.job is not None:  # what the run was asked to do, for a report (never the key)
            self._write({"job": self.job})
        self._scoped = True

    def _add(self, outcome: RowOutcome) -> None:
        key = outcome.key
        assert key is not None and not self.read_only
        self._scope_line()
        offset = self._size
        record = record_of(outcome)
        record["at"] = round(time.time(), 3)
        self._write(record)
        self._index(key, offset, outcome.status, fresh=True)

    def refresh(self) -> None:
        pass

    def describe(self, job: dict[str, Any]) -> None:
        self.job = job

    def add_step(self, step: dict[str, Any]) -> None:
        """Append a batch step and flush it, as ``add`` does an outcome."""
        assert not self.read_only
        try:
            self._scope_line()
            self._write({"batch_step": step})
        except OSError as e:
            self._cut_back()
            raise StorageError("the journal", self.path, e) from None
        self.steps.append(step)

    def prefetch(self, keys: Iterable[str]) -> None:
        self._offsets.prefetch(keys)

    def get_many(self, keys: Iterable[str], answers: bool = False) -> dict[str, RowOutcome]:
        """Records for the keys that have one, read in file order (cheap, mostly sequential)."""
        wanted = sorted({(offset, key) for key in keys if (offset := self._offsets.get(key)) is not None})
        if not wanted:
            return {}
        if self._reader is None:
            self._reader = os.fdopen(open_nofollow(self.path, os.O_RDONLY), "rb")
        found = {}
        for offset, key in wanted:
            self._reader.seek(offset)
            record = jsonio.loads(self._reader.readline())
            found[key] = outcome_of(record, answers)
        return found

    def close(self) -> None:
        for f in (self._file, self._reader):
            if f is not None:
                f.close()
        if self._created and not self._scoped:  # made for a run that got no answer: nothing to keep
            with contextlib.suppress(OSError):
                self.path.unlink()

    def _open_for_append(self) -> None:
        # Unbuffered: each record is one write() to the OS, which keeps it through a kill. A
        # symlink planted at the journal's name is refused rather than written through.
        handle = open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._file = os.fdopen(handle, "ab", buffering=0)
        self._size = self.path.stat().st_size
        if self._size == 0:
            self._write({"journal": "batchchat", "version": VERSION})
            self._created = True

    def _index(self, key: str, offset: int, status: Any, *, fresh: bool) -> None:
        """Keep the record at ``offset`` as ``key``'s: the latest judged by this scope's checks
        wins; one judged by others only where no such record exists (changing the checks and
        changing them back finds the answers judged by them first)."""
        if not fresh and key in self._offsets and key not in self._stale:
            return
        self._offsets[key] = offset
        for flags, on in (
            (self._failed, status != OK),
            (self._stale, not fresh),
            (self._unfinished, status == PENDING),
        ):
            if on:
                flags.add(key)
            else:
                flags.discard(key)

    def _write(self, record: dict[str, Any]) -> None:
        assert self._file is not None
        data = jsonio.dumps(record) + b"\n"
        written = self._file.write(data)
        while written is not None and written < len(data):  # a raw write may take only part
            more = self._file.write(data[written:])
            written += more or 0
        self._size += len(data)  # only once all of it is written: a failure cuts back to here

    def _read_existing(self) -> None:
        """Index the records of this scope; cut away a last record left incomplete by a kill."""
        self._end_of_good = 0
        if not self.path.exists() and not self.path.is_symlink():
            return
        offset = 0
        end_of_good = 0
        scope: Scope | None = None  # of the records being read; None: written before scopes
        legacy: list[tuple[str, int, Any]] = []
        legacy_endpoint: str | None = None
        others: dict[str, set[str]] = {}
        with os.fdopen(open_nofollow(self.path, os.O_RDONLY), "rb") as f:
            for line in f:
                start, offset = offset, offset + len(line)
                if not line.endswith(b"\n"):
                    self.torn += 1  # the record being written when the last run died
                    break
                try:
                    record = jsonio.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    self.torn += 1
                    continue
                except RecursionError:  # whole, but nested past reading: damaged
                    end_of_good = offset
                    self.invalid += 1
                    continue
                end_of_good = offset
                if not isinstance(record, dict):
                    self.invalid += 1
                    continue
                if "journal" in record:
                    if record.get("journal") != "batchchat" or record.get("version") not in READABLE_VERSIONS:
                        raise JobError(f"{self.path} is not a journal this version of batchchat can read; "
                                       "move it away (or restart, to discard it)")  # fmt: skip
                    self._version = record["version"]
                    continue
                if isinstance(record.get("legacy"), dict):
                    legacy_endpoint = str(record["legacy"].get("endpoint"))
                    continue
                if isinstance(record.get("scope"), dict):
                    scope = Scope(str(record["scope"].get("endpoint")), str(record["scope"].get("checks")))
                    continue
                if "job" in record:  # a run's settings: the latest of this endpoint's describes the output
                    if isinstance(record["job"], dict) and (scope is None or scope.endpoint == self.scope.endpoint):
                        self.described = record["job"]
                    continue
                if "batch_step" in record:
                    if not isinstance(record["batch_step"], dict):
                        self.invalid += 1
                    elif scope is not None and scope.endpoint == self.scope.endpoint:
                        self.steps.append(record["batch_step"])
                    continue
                if not valid_record(record):
                    self.invalid += 1  # skipped: its request is sent again
                    continue
                key = record["key"]
                if scope is None:
                    legacy.append((key, start, record["status"]))
                elif scope.endpoint == self.scope.endpoint:
                    self._index(key, start, record["status"], fresh=scope.checks == self.scope.checks)
                else:
                    others.setdefault(scope.endpoint, set()).add(key)
        if end_of_good < offset and not self.read_only:
            os.truncate(self.path, end_of_good)
        self._end_of_good = end_of_good
        self._adopt(legacy, legacy_endpoint, others)
        for endpoint, keys in others.items():
            unanswered_here = sum(1 for key in keys if key not in self._offsets)
            if unanswered_here:
                self.elsewhere[endpoint] = unanswered_here

    def _adopt(self, legacy: list[tuple[str, int, Any]], endpoint: str | None, others: dict[str, set[str]]) -> None:
        """Records from before scopes: this endpoint's if the journal says so, or says nothing
        yet. In that case the assumption is written down with this run's first record: only a
        run the endpoint answered claims them (a run against a mistyped URL claims nothing)."""
        if not legacy:
            return
        if endpoint is None:
            endpoint = self.assumed_endpoint = self.scope.endpoint
        if endpoint != self.scope.endpoint:
            others.setdefault(endpoint, set()).update(key for key, _, _ in legacy)
            return
        self.legacy = len({key for key, _, _ in legacy})
        for key, offset, status in legacy:  # judged by unknown checks: never over a record of this scope
            self._index(key, offset, status, fresh=False)


class JournalSet:
    """A journal and the parts beside it, seen as one store: a Ray run's workers each append to a
    part of their own, and every later run (and the assembly) reads them all. Writes go to the
    main journal. Where several hold a record for a key, the one last in order wins (parts are
    named so that later ones sort later)."""

    def __init__(self, main: Journal, parts: Path | None, others: Sequence[Path] = (),
                 reused: Sequence[Path] = ()) -> None:  # fmt: skip
        """``others``: journals read before the parts (a worker reads the run's main journal).
        ``reused``: other outputs' journals, whose answers count as earlier runs' (under the
        main journal's records), and are copied into it when a run uses them (``adopt``)."""
        self.main = main
        self.folder = parts
        self.others = [path for path in others if path != main.path]
        self.reused = [Journal(path, main.scope, read_only=True) for path in dict.fromkeys(reused)
                       if path != main.path and path.is_file()]  # fmt: skip
        self.parts: list[Journal] = []
        self.refresh()
        self._opened = {part.path: part.opened_size for part in self.parts}  # what earlier runs wrote

    def refresh(self) -> None:
        """Read the parts again: those written since, and what was appended to the others."""
        for part in self.parts:
            part.close()
        found = sorted(self.folder.glob("*.journal")) if self.folder is not None and self.folder.is_dir() else []
        paths = [p for p in [*self.others, *found] if p != self.main.path and (p.exists() or p.is_symlink())]
        self.parts = [Journal(path, self.main.scope, read_only=True) for path in paths]

    def _holder(self, key: str) -> Journal | None:
        """The journal whose record for ``key`` counts: the last fresh one, else the last one."""
        if not self.parts and not self.reused:  # the usual case, asked of every request: one journal
            return self.main if key in self.main else None
        holders = [j for j in (*self.reused, self.main, *self.parts) if key in j]
        fresh = [j for j in holders if not j.stale(key)]
        return (fresh or holders)[-1] if holders else None

    @property
    def path(self) -> Path:
        return self.main.path

    @property
    def legacy(self) -> int:
        return self.main.legacy

    @property
    def invalid(self) -> int:
        return self.main.invalid + sum(part.invalid for part in self.parts)

    @property
    def elsewhere(self) -> dict[str, int]:
        return self.main.elsewhere

    @property
    def assumed_endpoint(self) -> str | None:
        return self.main.assumed_endpoint

    @property
    def steps(self) -> list[dict[str, Any]]:
        return self.main.steps

    def __contains__(self, key: str) -> bool:
        return key in self.main or any(key in part for part in self.parts) or any(key in j for j in self.reused)

    def __len__(self) -> int:
        return len(self.main) + sum(len(part) for part in self.parts) + sum(len(j) for j in self.reused)

    def failed(self, key: str) -> bool:
        if not self.parts and not self.reused:  # a flag is only ever set on a key the journal holds
            return self.main.failed(key)
        holder = self._holder(key)
        return holder is not None and holder.failed(key)

    def stale(self, key: str) -> bool:
        if not self.parts and not self.reused:  # a flag is only ever set on a key the journal holds
            return self.main.stale(key)
        holder = self._holder(key)
        return holder is not None and holder.stale(key)

    def unfinished(self, key: str) -> bool:
        if not self.parts and not self.reused:  # a flag is only ever set on a key the journal holds
            return self.main.unfinished(key)
        holder = self._holder(key)
        return holder is not None and holder.unfinished(key)

    def earlier(self, key: str) -> bool:
        """Whether a run before this one wrote the record that counts: in a part, or a journal
        read beside, what was there when this store was opened (a Ray run's workers write
        parts while it runs)."""
        holder = self._holder(key)
        if holder is None:
            return False
        if holder is self.main:
            return self.main.earlier(key)
        if holder in self.reused:
            return True
        return holder.written_before(key, self._opened.get(holder.path, 0))

    @property
    def has_stale(self) -> bool:
        return self.main.has_stale or any(j.has_stale for j in (*self.parts, *self.reused))

    def adopt(self, keys: Iterable[str | None]) -> int:
        """Copy into the main journal the answers of ``keys`` that only a reused journal holds,
        judged by this run's checks (a stale one is judged again where it is used); the number
        copied."""
        if not self.reused:
            return 0
        wanted: dict[int, tuple[Journal, list[str]]] = {}
        for key in keys:
            if key is None or key in self.main or any(key in part for part in self.parts):
                continue
            holder = self._holder(key)
            if holder is not None and holder in self.reused and not holder.stale(key):
                wanted.setdefault(id(holder), (holder, []))[1].append(key)
        copied = 0
        for holder, found in wanted.values():
            for outcome in holder.get_many(dict.fromkeys(found), answers=True).values():
                self.main.keep_copy(outcome)
                copied += 1
        return copied

    def begin(self) -> None:
        self.main.begin()

    def describe(self, job: dict[str, Any]) -> None:
        self.main.describe(job)

    def add(self, outcome: RowOutcome) -> None:
        self.main.add(outcome)

    def add_step(self, step: dict[str, Any]) -> None:
        self.main.add_step(step)

    def prefetch(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for journal in (self.main, *self.parts, *self.reused):
            journal.prefetch(keys)

    def get_many(self, keys: Iterable[str], answers: bool = False) -> dict[str, RowOutcome]:
        if not self.parts and not self.reused:
            return self.main.get_many(keys, answers)
        by_holder: dict[int, tuple[Journal, list[str]]] = {}
        for key in keys:
            holder = self._holder(key)
            if holder is not None:
                by_holder.setdefault(id(holder), (holder, []))[1].append(key)
        found: dict[str, RowOutcome] = {}
        for holder, wanted in by_holder.values():
            found.update(holder.get_many(wanted, answers))
        return found

    def close(self) -> None:
        self.main.close()
        for journal in (*self.parts, *self.reused):
            journal.close()
