"""Input tables read as Arrow record batches, in order, as often as a run needs them.

A run reads its input more than once (validate and count, send, join with the answers) rather
than holding it: reading a file is far cheaper than one API call, and memory then stays flat
however many rows there are.

CSV cells are always text: type inference would turn ``NA`` or ``null`` into a missing value
and ``007`` into 7, and a prompt must reach the API exactly as the cell holds it.
JSONL values keep their JSON types where a column's values share one, lists and objects included
(a history list is a list, as from Parquet); a column that mixes types is carried as text.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from ..core.errors import InputChanged, JobError
from ..core.reading import lone_surrogate
from ..core.tableformats import SUFFIXES, format_of

if TYPE_CHECKING:
    import pandas as pd

BATCH_ROWS = 8192
# Field metadata of a text column holding each cell's JSON (a JSONL list or object): a JSONL
# output writes it back as JSON, exactly as it was read.
JSON_TEXT = {b"batchchat": b"json"}
# A JSON escape of half a UTF-16 pair: a line holding one may hold text that is not valid Unicode.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_ARROW_INDEX = re.compile(r"index (\d+)")
CSV_BLOCK_BYTES = 1 << 20


class TableSource:
    """Where input rows come from: a file on disk or an in-memory Arrow table."""

    def __init__(self, schema: pa.Schema, name: str) -> None:
        self.schema = schema
        self.name = name
        dupes = sorted(name for name, count in Counter(schema.names).items() if count > 1)
        if dupes:
            raise JobError(f"{name} has more than one column named {', '.join(map(repr, dupes))}; rename them")

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    @property
    def output_schema(self) -> pa.Schema:
        """The input columns with the types a typed output (Parquet) gives them."""
        return self.schema

    def for_output(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """A batch of ``batches()`` with its columns as ``output_schema`` types them."""
        return batch

    limit: int | None = None  # only the first rows (--limit): a trial of a large job

    def check(self) -> None:
        """Raise ``InputChanged`` if the input is no longer the one read (a table in memory
        cannot change; a file can)."""

    def count_rows(self) -> int:
        """Its rows (all of them: ``limit`` aside), read through unless the format says."""
        return sum(batch.num_rows for batch in self._read_batches())

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The rows in order, in Arrow batches; no more than ``limit`` of them."""
        left = self.limit
        for batch in self._read_batches():
            if left is not None:
                if left <= 0:
                    return
                if batch.num_rows > left:
                    batch = batch.slice(0, left)
                left -= batch.num_rows
            yield batch
        # Arrow's allocator keeps what it freed for reuse; a pass reads the whole input, and the
        # next (sending, writing) is better off with that memory back in the process's hands.
        pa.default_memory_pool().release_unused()

    def _read_batches(self) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError


def open_source(path: Path, limit: int | None = None) -> TableSource:
    """The input file ``path``; ``limit``: only its first rows."""
    source = _open(path)
    source.limit = limit
    return source


def _open(path: Path) -> FileSource:
    if not path.is_file():
        raise JobError(f"input {path} does not exist or is not a file")
    try:
        with path.open("rb") as f:
            empty = not f.read(1)
    except OSError as e:
        raise JobError(f"cannot read input {path}: {e.strerror}; check its permissions") from None
    if empty:
        raise JobError(f"input {path} is empty (0 bytes); it needs a header and at least one row")
    table = format_of(path)
    if table is None:
        raise JobError(f"input {path}: unsupported suffix '{path.suffix}'; use one of {', '.join(SUFFIXES)}")
    return READERS[table.name](path)


class ArrowSource(TableSource):
    """A table already in memory, such as a DataFrame handed to ``run_frame``."""

    def __init__(self, table: pa.Table, name: str = "the DataFrame") -> None:
        super().__init__(table.schema, name)
        self._table = table

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, columns: Sequence[str], name: str = "the DataFrame") -> ArrowSource:
        """The ``columns`` of a DataFrame that the prompts need; the rest of it is never converted."""
        arrays = []
        for column in columns:
            series = frame[next(c for c in frame.columns if str(c) == column)]
            try:
                arrays.append(pa.array(series, from_pandas=True))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise JobError(f"DataFrame column '{column}' cannot be read as prompts: {e}") from None
            except UnicodeEncodeError:
                row = next((i for i, v in enumerate(series) if lone_surrogate(v)), None)
                where = f", row {row + 1}" if row is not None else ""
                raise JobError(f"DataFrame column '{column}'{where}: text that is not valid Unicode (a lone "
                               "surrogate, half of a character); fix the cell") from None  # fmt: skip
        return cls(pa.table(arrays, names=list(columns)), name)

    def _read_batches(self) -> Iterator[pa.RecordBatch]:
        yield from self._table.to_batches(max_chunksize=BATCH_ROWS)


class FileSource(TableSource):
    """An input file. A run reads it several times (plan, send, assemble) and matches its rows by
    position, so it must be the same file every time: each read checks its size, modification and
    change times and inode against what they were when it was opened, and ``verify`` compares a
    hash of its whole content with the one ``seal`` took before the first pass. A change raises
    ``InputChanged`` rather than pair an answer with another row."""

    path: Path

    def _begin(self, path: Path) -> None:
        self.path = path
        self._stamp = _stamp(path)
        self._digest: bytes | None = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        for batch in super().batches():
            self.check()
            yield batch
        self.check()

    def check(self) -> None:
        """Raise ``InputChanged`` if the file is no longer the one opened."""
        now = _stamp(self.path)
        if now != self._stamp:
            before, after = self._stamp, now
            if after is None:
                what = "it was removed"
            elif before is not None and after[0] != before[0]:
                what = f"it was {before[0]:,} bytes and is now {after[0]:,}"
            else:
                what = "it was rewritten"
            raise InputChanged(self.path, what)

    def seal(self) -> None:
        """Take the hash of the content the run is about to read (before its first pass)."""
        self.check()
        self._digest = _digest(self.path)
        self.check()

    def verify(self) -> None:
        """Raise ``InputChanged`` unless the file still holds what ``seal`` hashed."""
        self.check()
        if self._digest is not None and _digest(self.path) != self._digest:
            raise InputChanged(self.path, "its content is not what it was")


def _stamp(path: Path) -> tuple[int, int, int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _digest(path: Path) -> bytes:
    hasher = hashlib.blake2b(digest_size=32)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.digest()


class CsvSource(FileSource):
    def __init__(self, path: Path) -> None:
        self._begin(path)
        self._parse = pcsv.ParseOptions(newlines_in_values=True)
        # A block must hold the header line whole: a very wide table's can pass a megabyte.
        self._read = pcsv.ReadOptions(block_size=max(CSV_BLOCK_BYTES, 2 * _first_line_bytes(path)))
        try:
            with pcsv.open_csv(path, read_options=self._read, parse_options=self._parse) as reader:
                names = reader.schema.names
        except (pa.ArrowInvalid, UnicodeDecodeError) as e:
            raise JobError(csv_problem(path, e)) from None
        unclosed = unclosed_quote(path)
        if unclosed:
            raise JobError(unclosed)
        self._convert = pcsv.ConvertOptions(
            column_types={name: pa.string() for name in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        super().__init__(pa.schema([(name, pa.string()) for name in names]), str(path))

    def _read_batches(self) -> Iterator[pa.RecordBatch]:
        try:
            with pcsv.open_csv(
                self.path,
                read_options=self._read,
                parse_options=self._parse,
                convert_options=self._convert,
            ) as reader:
                yield from reader
        except pa.ArrowInvalid as e:
            raise JobError(csv_problem(self.path, e)) from None


class ParquetSource(FileSource):
    def __init__(self, path: Path) -> None:
        self._begin(path)
        try:
            self._file = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise JobError(f"cannot read {path} as Parquet: {_arrow_message(e)}") from None
        super().__init__(self._file.schema_arrow, str(path))

    def count_rows(self) -> int:
        return int(self._file.metadata.num_rows)  # its footer says

    def _read_batches(self) -> Iterator[pa.RecordBatch]:
        start = 0
        try:
            for batch in self._file.iter_batches(batch_size=BATCH_ROWS):
                self._valid(batch, start)
                start += batch.num_rows
                yield batch
        except (pa.ArrowInvalid, OSError) as e:
            raise JobError(f"cannot read {self.path} as Parquet: {_arrow_message(e)}") from None

    def _valid(self, batch: pa.RecordBatch, start: int) -> None:
        """Parquet does not promise that its text is UTF-8: text that is not is refused here,
        naming its cell, rather than failing once requests are under way."""
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            try:
                column.validate(full=True)
            except pa.ArrowInvalid as e:
                found = _ARROW_INDEX.search(str(e))
                row = f"row {start + int(found.group(1)) + 1}" if found else "a row"
                raise JobError(f"{self.path}, {row}, column '{name}': text that is not valid UTF-8 "
                               f"({_arrow_message(e)}); fix the cell, or write the file again from valid text") from None  # fmt: skip


class JsonlSource(FileSource):
    """JSON Lines, one object per line; the column types are settled by one pass over the file.

    A column of numbers, booleans or text keeps that type; one mixing them is text. A column of
    lists or objects is read as each cell's JSON text, so a cell reads the same whatever the other
    rows hold (its prompt, and so its request's key, never change when rows are added), and is
    written to the output as the list or object it is (``for_output``), as from Parquet.
    """

    def __init__(self, path: Path) -> None:
        self._begin(path)
        types: dict[str, pa.DataType | None] = {}  # None: no value seen yet
        shapes: dict[str, set[bool]] = {}  # per column: whether values are lists/objects (True) or not
        mixed: set[str] = set()  # no common type: text, in and out
        for rows in self._row_chunks():
            for name in dict.fromkeys(key for row in rows for key in row):
                types.setdefault(name, None)
                shapes.setdefault(name, set())
            for name, known in types.items():
                if name in mixed:
                    continue
                values = [row.get(name) for row in rows]
                shapes[name].update(isinstance(v, (list, dict)) for v in values if v is not None)
                kind = _infer(values) if len(shapes[name]) < 2 else None
                kind = _unify(known, kind) if kind is not None else None
                if kind is None:
                    mixed.add(name)
                else:
                    types[name] = kind
        read: list[pa.Field[Any]] = []
        self._restored: dict[str, pa.DataType] = {}  # nested columns: JSON text in, their type out
        for name, kind in types.items():
            nested = True in shapes[name]
            if name in mixed or kind is None or pa.types.is_null(kind) or nested:
                read.append(pa.field(name, pa.string(), metadata=JSON_TEXT if nested else None))
                if nested and name not in mixed and kind is not None:
                    self._restored[name] = kind
            else:
                read.append(pa.field(name, kind))
        super().__init__(pa.schema(read), str(path))
        self._as_text = {field.name for field in read if field.type == pa.string()}

    @property
    def output_schema(self) -> pa.Schema:
        return pa.schema([pa.field(f.name, self._restored.get(f.name, f.type)) for f in self.schema])

    def for_output(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if not self._restored:
            return batch
        columns = [
            pa.array([None if v is None else json.loads(v) for v in column.to_pylist()], type=self._restored[name])
            if name in self._restored else column
            for name, column in zip(batch.schema.names, batch.columns, strict=True)
        ]  # fmt: skip
        return pa.RecordBatch.from_arrays(columns, schema=self.output_schema)

    def _row_chunks(self) -> Iterator[list[dict[str, Any]]]:
        try:
            with self.path.open("r", encoding="utf-8", newline="") as f:
                rows: list[dict[str, Any]] = []
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise JobError(
                            f"{self.path}, line {number}: not valid JSON ({e.msg}, column {e.colno})"
                        ) from None
                    except RecursionError:
                        raise JobError(f"{self.path}, line {number}: JSON nested too deeply to read") from None
                    if not isinstance(row, dict):
                        raise JobError(
                            f"{self.path}, line {number}: expected a JSON object per line, got {type(row).__name__}"
                        )
                    if _SURROGATE_ESCAPE.search(line):
                        self._check_text(row, number)
                    rows.append(row)
                    if len(rows) == BATCH_ROWS:
                        yield rows
                        rows = []
                if rows:
                    yield rows
        except UnicodeDecodeError:
            raise JobError(utf8_problem(self.path) or f"{self.path} is not UTF-8 text; convert it to UTF-8") from None

    def _check_text(self, row: dict[str, Any], number: int) -> None:
        """A cell whose text is not valid Unicode (a lone surrogate, ``\\ud83d``: half of an emoji)
        could be neither sent nor written: the file is refused, naming it."""
        for name, value in row.items():
            if lone_surrogate(name) or lone_surrogate(value):
                raise JobError(f"{self.path}, line {number}, column '{name.encode('utf-8', 'replace').decode()}': text "
                               "that is not valid Unicode (a lone surrogate such as \\ud83d, half of a character); "
                               "fix the cell, or write the file again from valid text")  # fmt: skip

    def _read_batches(self) -> Iterator[pa.RecordBatch]:
        schema = self.schema
        as_text = self._as_text
        for rows in self._row_chunks():
            columns = []
            for field in schema:
                values = [row.get(field.name) for row in rows]
                if field.name in as_text:
                    values = [_as_text(v) for v in values]
                columns.append(pa.array(values, type=field.type))
            yield pa.record_batch(columns, schema=schema)


def _infer(values: list[Any]) -> pa.DataType | None:
    """The Arrow type of a column's values, or None when they have none in common."""
    try:
        kind = pa.array(values).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, ValueError, TypeError):
        return None
    return kind if _storable(kind) else None


def _unify(known: pa.DataType | None, new: pa.DataType) -> pa.DataType | None:
    """One type for two chunks of a column (``null`` fits anything; ints widen to floats; objects
    gather every field), or None when there is none."""
    if known is None or known == new or pa.types.is_null(known):
        return new
    if pa.types.is_null(new):
        return known
    try:
        merged = pa.unify_schemas([pa.schema([("c", known)]), pa.schema([("c", new)])], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError):
        return None
    kind = merged.field("c").type
    return kind if _storable(kind) else None


def _storable(kind: pa.DataType) -> bool:
    """Every output format can hold it: no empty object (Parquet refuses a struct without fields)."""
    if pa.types.is_struct(kind):
        return kind.num_fields > 0 and all(_storable(kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _storable(kind.value_type)
    return True


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _first_line_bytes(path: Path, limit: int = 1 << 30) -> int:
    """The length of a file's first line (up to ``limit``)."""
    size = 0
    with path.open("rb") as f:
        while size < limit:
            chunk = f.read(1 << 20)
            newline = chunk.find(b"\n")
            if newline >= 0 or not chunk:
                return size + (newline if newline >= 0 else 0)
            size += len(chunk)
    return size


def csv_problem(path: Path, error: BaseException) -> str:
    """What is wrong with a CSV file pyarrow could not read, with a line number where possible."""
    text = _arrow_message(error)
    if "UTF8" in text or "UTF-8" in text or isinstance(error, UnicodeDecodeError):
        found = utf8_problem(path)
        if found:
            return found
    found = _field_count_problem(path)
    return found or f"cannot read CSV {path}: {text}"


def utf8_problem(path: Path) -> str | None:
    """The first line holding bytes that are not UTF-8, and how to convert the file."""
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                converted = path.with_name(f"{path.stem}-utf8{path.suffix}")
                return (
                    f"{path} is not UTF-8 text: line {number}, byte {e.start + 1} (0x{line[e.start]:02x}) "
                    f"cannot be read. Convert the file, e.g. iconv -f latin1 -t utf-8 {path} > {converted} "
                    "(or save it from Excel as 'CSV UTF-8')"
                )
    return None


def _field_count_problem(path: Path) -> str | None:
    """The first record whose number of cells differs from the header's."""
    csv.field_size_limit(sys.maxsize)
    with path.open("r", encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return None
        start = reader.line_num + 1
        for record in reader:
            if record and len(record) != len(header):
                return (
                    f"{path}, line {start}: {len(record)} cells where the header has {len(header)}; "
                    "a cell holding a comma must be in double quotes"
                )
            start = reader.line_num + 1
    return None


def unclosed_quote(path: Path) -> str | None:
    """A quote opened and never closed swallows the rest of the file into one cell; say where.

    Counting quote characters is cheap; only an odd count needs the strict (slower) look.
    """
    quotes = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            quotes += chunk.count(b'"')
    if quotes % 2 == 0:
        return None
    csv.field_size_limit(sys.maxsize)
    with path.open("r", encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f, strict=True)
        start = 1
        try:
            for _ in reader:
                start = reader.line_num + 1
        except csv.Error:
            return (
                f"{path}, line {start}: a double quote opened there is never closed, so the rest of the "
                'file would be one cell; close it, or write a quote inside a quoted cell as ""'
            )
    return None


def _arrow_message(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# The reader of each format of ``tableformats.FORMATS``, by its name.
READERS: dict[str, Callable[[Path], FileSource]] = {"parquet": ParquetSource, "csv": CsvSource, "jsonl": JsonlSource}
