import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchchat.core.errors import JobError
from batchchat.input.source import open_source
from tests.helpers import write_csv, write_jsonl

AWKWARD = ["NA", "null", "0", "007", "", "  padded  ", 'say "hi", then leave', "line one\nline two", "🚀 émoji", "TRUE"]


def rows_of(source):
    return [row for batch in source.batches() for row in batch.to_pylist()]


def test_csv_cells_are_text_exactly_as_written(tmp_path):
    path = write_csv(tmp_path / "in.csv", ["id", "prompt"], [[str(i), v] for i, v in enumerate(AWKWARD)])
    source = open_source(path)
    assert source.schema.types == [pa.string(), pa.string()]
    assert [r["prompt"] for r in rows_of(source)] == AWKWARD
    assert [r["id"] for r in rows_of(source)] == [str(i) for i in range(len(AWKWARD))]


def test_csv_with_a_byte_order_mark_keeps_clean_column_names(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffprompt,n\nhello,1\n".encode())
    assert open_source(path).columns == ["prompt", "n"]


def test_csv_read_in_several_batches_keeps_every_row_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr("batchchat.input.source.CSV_BLOCK_BYTES", 4096)
    rows = [[str(i), f"prompt number {i} " + "x" * (i % 50)] for i in range(3000)]
    source = open_source(write_csv(tmp_path / "big.csv", ["id", "prompt"], rows))
    batches = list(source.batches())
    assert len(batches) > 1
    assert [r["id"] for b in batches for r in b.to_pylist()] == [str(i) for i in range(3000)]


def test_parquet_keeps_its_types(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["a", None], "n": [1, 2]}), path)
    source = open_source(path)
    assert source.schema.field("n").type == pa.int64()
    assert rows_of(source) == [{"prompt": "a", "n": 1}, {"prompt": None, "n": 2}]


def test_jsonl_columns_keep_their_types_nested_ones_on_output_and_mixed_ones_become_text(tmp_path):
    history = [{"role": "user", "content": "hi"}]
    path = write_jsonl(tmp_path / "in.jsonl", [
        {"prompt": "a", "n": 1, "x": 1.5, "mixed": 1, "history": history, "meta": {"a": 1}, "odd": [1]},
        {"prompt": "b", "n": 2, "x": 2, "mixed": "two", "meta": {"b": "x"}, "odd": {"k": 1}},
    ])  # fmt: skip
    source = open_source(path)
    read = dict(zip(source.columns, source.schema.types, strict=True))
    assert read == {"prompt": pa.string(), "n": pa.int64(), "x": pa.float64(), "mixed": pa.string(),
                    "history": pa.string(), "meta": pa.string(), "odd": pa.string()}  # fmt: skip
    rows = rows_of(source)
    assert rows[0]["mixed"] == "1" and rows[1]["mixed"] == "two"
    # each cell reads as its own JSON, whatever the other rows hold
    assert json.loads(rows[0]["history"]) == history and rows[1]["history"] is None
    assert rows[1]["meta"] == '{"b": "x"}' and json.loads(rows[1]["odd"]) == {"k": 1}
    written = dict(zip(source.output_schema.names, source.output_schema.types, strict=True))
    assert written["history"] == pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    assert written["meta"] == pa.struct([("a", pa.int64()), ("b", pa.string())])
    assert written["odd"] == pa.string()  # a list here, an object there: text
    out = source.for_output(next(iter(source.batches()))).to_pylist()
    assert out[0]["history"] == history and out[1]["meta"] == {"a": None, "b": "x"}


def test_jsonl_types_are_settled_over_the_whole_file(tmp_path, monkeypatch):
    monkeypatch.setattr("batchchat.input.source.BATCH_ROWS", 2)
    path = write_jsonl(tmp_path / "in.jsonl", [
        {"n": None, "h": []}, {"n": 1, "h": None}, {"n": 2.5, "h": [{"role": "user", "content": "x"}]},
        {"n": 3, "h": [{"role": "user", "content": "y", "name": "z"}]}, {"n": "four"},
    ])  # fmt: skip
    source = open_source(path)
    assert source.schema.field("n").type == pa.string()  # a text value at the end: the column is text
    assert source.output_schema.field("h").type == pa.list_(
        pa.struct([("role", pa.string()), ("content", pa.string()), ("name", pa.string())])
    )
    rows = rows_of(source)
    assert [r["n"] for r in rows] == [None, "1", "2.5", "3", "four"]
    assert json.loads(rows[3]["h"]) == [{"role": "user", "content": "y", "name": "z"}]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", b'{"prompt": "a"}\n{"prompt": \n', "line 2: not valid JSON"),
        ("list.jsonl", b'["a"]\n', "line 1: expected a JSON object"),
        ("latin1.jsonl", '{"prompt": "caf\u00e9"}\n'.encode("latin-1"), "not UTF-8"),
        ("fake.parquet", b"not parquet at all", "cannot read .* as Parquet"),
        ("empty.csv", b"", "is empty \\(0 bytes\\)"),
        ("dupes.csv", b"prompt,prompt\na,b\n", "more than one column named 'prompt'"),
    ],
)
def test_unreadable_inputs_say_what_is_wrong(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(JobError, match=message):
        list(open_source(path).batches())
