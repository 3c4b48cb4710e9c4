"""Where finished requests are kept: an append-only journal beside the output, or memory.

The journal is JSON Lines, one record per finished request (ok or error), keyed by the request's
stable key, written and flushed as each request finishes. A run killed at any moment therefore
loses at most the requests that were in flight, and a run started again sends only what the
journal lacks. A record cut off mid-write by the kill is ignored on reading and cut away before
new records are appended. Records hold answers and metadata, never the API key.

In memory the index holds only each key's byte offset and whether it ended in error, so a
million-row job does not hold a million answers; the output is assembled by reading records back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import IO, Any

from .errors import JobError
from .records import OK, RowOutcome

FORMAT = {"journal": "batchchat", "version": 1}
# Everything of an outcome but its row: rows asking the same thing share one record.
RECORD_FIELDS = tuple(f.name for f in fields(RowOutcome) if f.name != "row")


class MemoryStore:
    """Outcomes by key, for runs with no output file (``run_frame``)."""

    def __init__(self) -> None:
        self._outcomes: dict[str, RowOutcome] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._outcomes

    def failed(self, key: str) -> bool:
        outcome = self._outcomes.get(key)
        return outcome is not None and outcome.status != OK

    def add(self, outcome: RowOutcome) -> None:
        assert outcome.key is not None
        self._outcomes[outcome.key] = outcome

    def get_many(self, keys: Iterable[str]) -> dict[str, RowOutcome]:
        return {key: o for key in keys if (o := self._outcomes.get(key)) is not None}

    def close(self) -> None:
        pass


class Journal:
    """The journal file of one output; open it while holding the output's lock."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        """``read_only`` reads without taking over the file: a torn tail is skipped, not cut away
        (a dry run may look while another run writes)."""
        self.path = path
        self.read_only = read_only
        self._offsets: dict[str, int] = {}  # key -> offset of its latest record
        self._failed: set[str] = set()  # keys whose latest record is an error
        self.torn = 0  # unreadable records skipped (a cut-off last line, normally)
        self._read_existing()
        self._file: IO[bytes] | None = None  # opened by the first record: a run that sends nothing writes nothing
        self._size = 0
        self._reader: IO[bytes] | None = None

    def __len__(self) -> int:
        return len(self._offsets)

    def __contains__(self, key: str) -> bool:
        return key in self._offsets

    def failed(self, key: str) -> bool:
        return key in self._failed

    def add(self, outcome: RowOutcome) -> None:
        """Append one finished request and flush it to the OS, so that a kill cannot lose it."""
        key = outcome.key
        assert key is not None and not self.read_only
        if self._file is None:
            # Unbuffered: each record is one write() to the OS, which keeps it through a kill.
            self._file = self.path.open("ab", buffering=0)
            self._size = self.path.stat().st_size
            if self._size == 0:
                self._write(FORMAT)
        offset = self._size
        # Fields left out are null: an answer has no error, an error no answer.
        self._write({name: value for name in RECORD_FIELDS if (value := getattr(outcome, name)) is not None})
        self._offsets[key] = offset
        if outcome.status == OK:
            self._failed.discard(key)
        else:
            self._failed.add(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, RowOutcome]:
        """Records for the keys that have one, read in file order (cheap, mostly sequential)."""
        wanted = sorted({(offset, key) for key in keys if (offset := self._offsets.get(key)) is not None})
        if not wanted:
            return {}
        if self._reader is None:
            self._reader = self.path.open("rb")
        found = {}
        for offset, key in wanted:
            self._reader.seek(offset)
            record = json.loads(self._reader.readline())
            found[key] = _outcome(record)
        return found

    def close(self) -> None:
        for f in (self._file, self._reader):
            if f is not None:
                f.close()

    def _write(self, record: dict[str, Any]) -> None:
        assert self._file is not None
        data = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        written = self._file.write(data)
        while written is not None and written < len(data):  # a raw write may take only part
            more = self._file.write(data[written:])
            written += more or 0
        self._size += len(data)

    def _read_existing(self) -> None:
        """Index the records already there; cut away a last record left incomplete by a kill."""
        if not self.path.exists():
            return
        offset = 0
        end_of_good = 0
        with self.path.open("rb") as f:
            for line in f:
                start, offset = offset, offset + len(line)
                if not line.endswith(b"\n"):
                    self.torn += 1  # the record being written when the last run died
                    break
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    self.torn += 1
                    continue
                end_of_good = offset
                if not isinstance(record, dict):
                    continue
                if "journal" in record:
                    if record != FORMAT:
                        raise JobError(f"{self.path} is not a journal this version of batchchat can read; "
                                       "move it away, or use --restart to discard it")  # fmt: skip
                    continue
                key = record.get("key")
                if isinstance(key, str):
                    self._offsets[key] = start
                    if record.get("status") == OK:
                        self._failed.discard(key)
                    else:
                        self._failed.add(key)
        if end_of_good < offset and not self.read_only:
            os.truncate(self.path, end_of_good)


def _outcome(record: dict[str, Any]) -> RowOutcome:
    return RowOutcome(row=-1, **{name: record.get(name) for name in RECORD_FIELDS})
