"""The output table: every input column, then the outcome columns, one row per input row.

The input is read again batch by batch and joined with the outcomes by row position, so the
output keeps input order whatever order answers arrived in. Where it goes is a ``Sink``: it is
written whole and replaces what was there only once complete, so a failed run never leaves a
half-written table where an older, complete one stood. A file (``FileSink``, any format of
``tableformats``) is written beside its destination under a temporary name and renamed into
place; ``sink_for`` picks the sink of an output, in one place.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from ..core.arrays import array_of, positions
from ..core.errors import JobError, StorageError
from ..core.records import OUTPUT_COLUMNS, PENDING, RowOutcome
from ..core.tableformats import SUFFIXES, format_of
from ..core.version import installed
from ..input.source import JSON_TEXT, TableSource, open_source
from ..plan.answers import Derived
from ..store.files import OutputFiles

if TYPE_CHECKING:
    import pandas as pd

_TYPES: dict[str, pa.DataType] = {"prompt_tokens": pa.int64(), "completion_tokens": pa.int64(), "total_tokens": pa.int64(),
                                   "latency_s": pa.float64(), "ttft_s": pa.float64(), "attempts": pa.int32()}  # fmt: skip
OUTPUT_FIELDS: tuple[tuple[str, pa.DataType], ...] = tuple(
    (name, _TYPES.get(name, pa.string())) for name in OUTPUT_COLUMNS
)
KINDS: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
}


def added_fields(derived: Derived) -> list[pa.Field[Any]]:
    """Every column batchchat adds, in output order: the outcome's, the variant beside the model,
    then what the job derives from answers, and the cost last."""
    fields = [pa.field(name, kind) for name, kind in OUTPUT_FIELDS]
    for name, kind in derived.columns():
        field = pa.field(name, KINDS[kind])
        if name == "variant":
            fields.insert(OUTPUT_COLUMNS.index("model") + 1, field)
        else:
            fields.append(field)
    return fields


def output_schema(source: TableSource, derived: Derived, typed: bool = True) -> pa.Schema:
    """Input fields, then the fields batchchat adds. ``typed`` outputs (Parquet) carry the
    input's lists and objects with their types (``for_output``); CSV and JSONL carry them as the
    JSON they were read as."""
    inputs = source.output_schema if typed else source.schema
    added = added_fields(derived)
    schema = pa.schema(list(inputs) + added)
    return schema.with_metadata(pandas_metadata(schema, [f.name for f in added])) if typed else schema


def added_arrays(outcomes: Sequence[RowOutcome | None], extras: Mapping[str, list[Any]],
                 fields: Sequence[pa.Field[Any]]) -> list[pa.Array[Any]]:  # fmt: skip
    """The added columns of a run of rows; an outcome of None is a row not finished (``pending``)."""
    arrays = []
    for field in fields:
        if field.name in extras:
            values = extras[field.name]
        elif field.name == "status":
            values = [o.status if o is not None else PENDING for o in outcomes]
        else:
            values = [getattr(o, field.name) if o is not None else None for o in outcomes]
        arrays.append(array_of(values, field.type))
    return arrays


def output_batches(
    rows: Iterable[tuple[pa.RecordBatch, Sequence[RowOutcome | None], Mapping[str, list[Any]]]],
    schema: pa.Schema,
    fanout: int = 1,
    restore: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Input batches joined with their rows' outcomes and derived cells, in input order; with a
    fan-out, each input row is repeated once per model and variant. ``restore`` gives the input
    columns the types the output carries (``TableSource.for_output``)."""
    for batch, outcomes, extras in rows:
        if restore is not None:
            batch = restore(batch)
        if fanout > 1:
            batch = batch.take(positions([i for i in range(batch.num_rows) for _ in range(fanout)]))
        added = list(schema)[batch.num_columns :]
        yield pa.RecordBatch.from_arrays(list(batch.columns) + added_arrays(outcomes, extras, added), schema=schema)


def table_of(batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    """Batches as one table (a Ray Data block)."""
    return pa.Table.from_batches(list(batches), schema=schema)


NULLABLE = {pa.int64(): ("int64", "Int64"), pa.int32(): ("int32", "Int32"), pa.bool_(): ("bool", "boolean")}


def pandas_metadata(schema: pa.Schema, added: Sequence[str]) -> dict[bytes, bytes]:
    """The pandas description of a table whose columns batchchat ``added`` are read back with
    nullable dtypes, as ``run_frame`` gives them: ``pd.read_parquet`` of the output then has
    ``Int64`` token counts, not floats with NaN. Written by hand, naming only those columns
    (the others convert as they would with no description): making it with pandas would load
    pandas, 40 MB, into a run that has no other use for it."""
    names = set(added)
    columns = [{"name": field.name, "field_name": field.name, "pandas_type": NULLABLE[field.type][0],
                "numpy_type": NULLABLE[field.type][1], "metadata": None}
               for field in schema if field.name in names and field.type in NULLABLE]  # fmt: skip
    description = {"index_columns": [], "column_indexes": [], "columns": columns, "attributes": {},
                   "creator": {"library": "pyarrow", "version": pa.__version__},
                   "pandas_version": installed("pandas")}  # fmt: skip
    return {**(schema.metadata or {}), b"pandas": json.dumps(description).encode()}


def write_parquet(f: BinaryIO, batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> None:
    with pq.ParquetWriter(f, schema) as writer:  # its pandas description is output_schema's
        for batch in batches:
            writer.write_batch(batch)


def write_csv(f: BinaryIO, batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> None:
    csv_schema = pa.schema([pa.field(field.name, _csv_type(field.type)) for field in schema])
    with pcsv.CSVWriter(f, csv_schema) as writer:
        for batch in batches:
            writer.write_batch(_csv_ready(batch, csv_schema))


def write_jsonl(f: BinaryIO, batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> None:
    as_json = [field.name for field in schema if field.metadata == JSON_TEXT]
    for batch in batches:
        rows = batch.to_pylist()
        for row in rows:  # lists and objects read from JSONL go back as they were
            for name in as_json:
                row[name] = json.loads(row[name]) if row[name] is not None else None
        f.write("".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows).encode("utf-8"))


# The writer of each format of ``tableformats.FORMATS``, by its name.
WRITERS: dict[str, Callable[[BinaryIO, Iterator[pa.RecordBatch], pa.Schema], None]] = {
    "parquet": write_parquet, "csv": write_csv, "jsonl": write_jsonl}  # fmt: skip


class Sink(Protocol):
    """Where an output table goes: written whole, replacing what was there only once complete."""

    @property
    def typed(self) -> bool:
        """Whether lists and objects keep their types (else they are written as JSON text)."""
        ...

    def replace(self, batches: Iterator[pa.RecordBatch], schema: pa.Schema,
                check: Callable[[], None] | None = None) -> None:  # fmt: skip
        """The whole table written; ``check`` runs once it is written and before it replaces
        the output, which is left as it was if it raises."""
        ...

    def count_rows(self) -> int | None:
        """The rows of the table there now; None when there is none (or none batchchat can read)."""
        ...

    def read(self) -> TableSource:
        """The table there now, read back (``show``, the report)."""
        ...


class FileSink:
    """An output file, in the format its suffix names."""

    def __init__(self, files: OutputFiles) -> None:
        table = format_of(files.target)
        if table is None:  # job validation refuses others; this guards library misuse
            raise JobError(f"output {files.output}: unsupported suffix '{files.target.suffix}'; use one of "
                           f"{', '.join(SUFFIXES)}")  # fmt: skip
        self.files = files
        self.format = table

    @property
    def typed(self) -> bool:
        return self.format.typed

    def replace(self, batches: Iterator[pa.RecordBatch], schema: pa.Schema,
                check: Callable[[], None] | None = None) -> None:  # fmt: skip
        """Written to a new temporary file beside the output, then renamed over it (which keeps
        its permissions). The temporary file has an unpredictable name and is written through its
        own descriptor, so nothing planted beside the output is written to."""
        files = self.files
        try:
            handle, temporary = files.open_temp()
        except OSError as e:
            raise StorageError("the output", files.output, e) from None
        try:
            with os.fdopen(handle, "wb") as f:
                WRITERS[self.format.name](f, batches, schema)
                f.flush()
                os.fsync(f.fileno())
            if check is not None:
                check()
            os.replace(temporary, files.target)
        except OSError as e:  # the input's own errors are JobErrors; an OSError here is the disk's
            raise StorageError("the output", files.output, e) from None
        finally:
            with contextlib.suppress(OSError):  # a read-only folder: the next run removes it
                temporary.unlink(missing_ok=True)

    def count_rows(self) -> int | None:
        if not self.files.target.exists():
            return None
        try:
            return self.read().count_rows()
        except JobError:
            return None  # not a table batchchat can read

    def read(self) -> TableSource:
        return open_source(self.files.target)


def sink_for(files: OutputFiles) -> Sink:
    """The sink of an output."""
    return FileSink(files)


def to_frame(
    frame: pd.DataFrame,
    outcomes: Sequence[RowOutcome | None],
    extras: Mapping[str, list[Any]],
    derived: Derived,
    fanout: int = 1,
) -> pd.DataFrame:
    """The caller's DataFrame (index and dtypes untouched; each row repeated once per model and
    variant when the job fans out) with the outcome and derived columns added."""

    result = frame.loc[frame.index.repeat(fanout)] if fanout > 1 else frame.copy()
    fields = added_fields(derived)
    schema = pa.schema(fields)
    # Converted as pd.read_parquet converts the output file, so both give the same dtypes.
    schema = schema.with_metadata(pandas_metadata(schema, [f.name for f in fields]))
    added = pa.Table.from_arrays(added_arrays(outcomes, extras, fields), schema=schema).to_pandas()
    added.index = result.index
    for name in added.columns:
        result[name] = added[name]
    return result


def _csv_type(kind: pa.DataType) -> pa.DataType:
    nested = pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
    return pa.string() if nested else kind


def _csv_ready(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """CSV has no lists or structs: such cells are written as JSON text."""
    columns = []
    for column, field in zip(batch.columns, schema, strict=True):
        if column.type != field.type:
            column = pa.array([_json_text(v) for v in column.to_pylist()], type=pa.string())
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return json.dumps(value, ensure_ascii=False, default=str)
