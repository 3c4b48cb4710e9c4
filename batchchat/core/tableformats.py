"""The table formats batchchat reads and writes, named once.

A format is told by its file's suffix. Its reader is a ``source.FileSource`` (``source.READERS``)
and its writer a function of ``sink.WRITERS``, each under the format's name; every other part
(job checks, the output's schema, ``show``, the report) asks this registry, never a suffix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TableFormat:
    name: str
    suffixes: tuple[str, ...]
    typed: bool  # keeps lists and objects with their types (else they are written as JSON text)


FORMATS = (
    TableFormat("csv", (".csv",), typed=False),
    TableFormat("parquet", (".parquet",), typed=True),
    TableFormat("jsonl", (".jsonl",), typed=False),
)
SUFFIXES = tuple(suffix for table in FORMATS for suffix in table.suffixes)


def format_of(path: Path) -> TableFormat | None:
    """The format of a table file, by its suffix (any case); None for one batchchat cannot tell."""
    suffix = path.suffix.lower()
    return next((table for table in FORMATS if suffix in table.suffixes), None)
