"""Input tables read as Arrow record batches, in order, as often as a run needs them.

A run reads its input more than once (validate and count, send, join with the answers) rather
than holding it: reading a file is far cheaper than one API call, and memory then stays flat
however many rows there are.

CSV cells are always text: type inference would turn ``NA`` or ``null`` into a missing value
and ``007`` into 7, and a prompt must reach the API exactly as the cell holds it.
JSONL values keep their JSON types where a column is consistent; a column that mixes types, and
any nested list or object, is carried as JSON text (so a messages column may hold real lists).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from .errors import JobError

BATCH_ROWS = 8192
CSV_BLOCK_BYTES = 1 << 20


class TableSource:
    """Where input rows come from: a file on disk or an in-memory Arrow table."""

    def __init__(self, schema: pa.Schema, name: str) -> None:
        self.schema = schema
        self.name = name
        names = schema.names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise JobError(f"{name} has more than one column named {', '.join(map(repr, dupes))}; rename them")

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def batches(self) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def row_count_hint(self) -> int | None:
        """Rows known without reading the data, where the format stores it."""
        return None


def open_source(path: Path) -> TableSource:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise JobError(f"input {path} does not exist or is not a file")
    if suffix == ".csv":
        return CsvSource(path)
    if suffix == ".parquet":
        return ParquetSource(path)
    if suffix == ".jsonl":
        return JsonlSource(path)
    raise JobError(f"input {path}: unsupported suffix '{path.suffix}'; use .csv, .parquet or .jsonl")


class ArrowSource(TableSource):
    """A table already in memory, such as a DataFrame handed to ``run_frame``."""

    def __init__(self, table: pa.Table, name: str = "the DataFrame") -> None:
        super().__init__(table.schema, name)
        self._table = table

    def batches(self) -> Iterator[pa.RecordBatch]:
        yield from self._table.to_batches(max_chunksize=BATCH_ROWS)

    def row_count_hint(self) -> int | None:
        return self._table.num_rows


class CsvSource(TableSource):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._parse = pcsv.ParseOptions(newlines_in_values=True)
        self._read = pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES)
        try:
            with pcsv.open_csv(path, read_options=self._read, parse_options=self._parse) as reader:
                names = reader.schema.names
        except (pa.ArrowInvalid, UnicodeDecodeError) as e:
            raise JobError(f"cannot read CSV {path}: {_arrow_message(e)}") from None
        self._convert = pcsv.ConvertOptions(
            column_types={name: pa.string() for name in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        super().__init__(pa.schema([(name, pa.string()) for name in names]), str(path))

    def batches(self) -> Iterator[pa.RecordBatch]:
        try:
            with pcsv.open_csv(
                self.path,
                read_options=self._read,
                parse_options=self._parse,
                convert_options=self._convert,
            ) as reader:
                yield from reader
        except pa.ArrowInvalid as e:
            raise JobError(f"cannot read CSV {self.path}: {_arrow_message(e)}") from None


class ParquetSource(TableSource):
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise JobError(f"cannot read {path} as Parquet: {_arrow_message(e)}") from None
        super().__init__(self._file.schema_arrow, str(path))

    def batches(self) -> Iterator[pa.RecordBatch]:
        try:
            yield from self._file.iter_batches(batch_size=BATCH_ROWS)
        except (pa.ArrowInvalid, OSError) as e:
            raise JobError(f"cannot read {self.path} as Parquet: {_arrow_message(e)}") from None

    def row_count_hint(self) -> int | None:
        return self._file.metadata.num_rows


class JsonlSource(TableSource):
    """JSON Lines, one object per line; the column types are settled by one pass over the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        kinds: dict[str, set[str]] = {}
        for rows in self._row_chunks():
            for row in rows:
                for key, value in row.items():
                    kinds.setdefault(key, set()).add(_kind(value))
        schema = pa.schema([(name, _arrow_type(k)) for name, k in kinds.items()])
        super().__init__(schema, str(path))
        self._as_text = {name for name, t in zip(schema.names, schema.types, strict=True) if t == pa.string()}

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
                    if not isinstance(row, dict):
                        raise JobError(
                            f"{self.path}, line {number}: expected a JSON object per line, got {type(row).__name__}"
                        )
                    rows.append(row)
                    if len(rows) == BATCH_ROWS:
                        yield rows
                        rows = []
                if rows:
                    yield rows
        except UnicodeDecodeError as e:
            raise JobError(f"{self.path} is not UTF-8 text (byte offset {e.start}); convert it to UTF-8") from None

    def batches(self) -> Iterator[pa.RecordBatch]:
        schema = self.schema
        as_text = self._as_text
        for rows in self._row_chunks():
            columns = []
            for name in schema.names:
                values = [row.get(name) for row in rows]
                if name in as_text:
                    values = [_as_text(v) for v in values]
                columns.append(values)
            yield pa.record_batch(columns, schema=schema)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -(2**63) <= value < 2**63 else "text"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "text"  # lists and objects travel as JSON text


def _arrow_type(kinds: set[str]) -> pa.DataType:
    kinds = kinds - {"null"}
    if kinds == {"bool"}:
        return pa.bool_()
    if kinds == {"int"}:
        return pa.int64()
    if kinds and kinds <= {"int", "float"}:
        return pa.float64()
    return pa.string()


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _arrow_message(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
