"""The output table: every input column, then the outcome columns, one row per input row.

The input is read again batch by batch and joined with the outcomes by row position, so the
output keeps input order whatever order answers arrived in. The file is written beside its
destination under a temporary name and renamed into place only when complete: a failed run
never leaves a half-written table where an older, complete one stood.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from .answers import Derived
from .arrays import array_of, positions
from .errors import JobError, StorageError
from .files import OutputFiles
from .records import OUTPUT_COLUMNS, PENDING, RowOutcome
from .source import JSON_TEXT, TableSource
from .version import installed

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


def typed_output(path: Path) -> bool:
    return path.suffix.lower() == ".parquet"


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


def write_output(
    files: OutputFiles,
    batches: Iterator[pa.RecordBatch],
    schema: pa.Schema,
    check: Callable[[], None] | None = None,
) -> None:
    """Write the whole table to a new temporary file beside the output, then rename it over the
    output, which keeps its permissions. The temporary file has an unpredictable name and is
    written through its own descriptor, so nothing planted beside the output is written to.
    ``check`` runs once the table is written and before it replaces the output; if it raises,
    the output is left as it was."""
    path = files.target
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv", ".jsonl"):  # job validation refuses others; this guards library misuse
        raise JobError(f"output {files.output}: unsupported suffix '{path.suffix}'; use .parquet, .csv or .jsonl")
    try:
        handle, temporary = files.open_temp()
    except OSError as e:
        raise StorageError("the output", files.output, e) from None
    try:
        with os.fdopen(handle, "wb") as f:
            _write_table(f, suffix, batches, schema)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check()
        os.replace(temporary, path)
    except OSError as e:  # the input's own errors are JobErrors; an OSError here is the disk's
        raise StorageError("the output", files.output, e) from None
    finally:
        with contextlib.suppress(OSError):  # a read-only folder: the next run removes it
            temporary.unlink(missing_ok=True)


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


def _write_table(f: BinaryIO, suffix: str, batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> None:
    if suffix == ".parquet":
        with pq.ParquetWriter(f, schema) as writer:  # its pandas description is output_schema's
            for batch in batches:
                writer.write_batch(batch)
    elif suffix == ".csv":
        csv_schema = pa.schema([pa.field(field.name, _csv_type(field.type)) for field in schema])
        with pcsv.CSVWriter(f, csv_schema) as writer:
            for batch in batches:
                writer.write_batch(_csv_ready(batch, csv_schema))
    else:
        as_json = [field.name for field in schema if field.metadata == JSON_TEXT]
        for batch in batches:
            rows = batch.to_pylist()
            for row in rows:  # lists and objects read from JSONL go back as they were
                for name in as_json:
                    row[name] = json.loads(row[name]) if row[name] is not None else None
            f.write("".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows).encode("utf-8"))


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
