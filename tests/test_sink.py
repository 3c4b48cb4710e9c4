"""The output behind a ``Sink``, and table formats named once (``tableformats``): what a sink
counts, reads back and replaces, and a new format added by its three entries alone."""

import pyarrow as pa
import pytest

from batchchat.core import tableformats
from batchchat.core.errors import JobError
from batchchat.input.source import READERS, JsonlSource
from batchchat.output.sink import WRITERS, sink_for, write_jsonl
from batchchat.store.files import OutputFiles
from tests.helpers import cli, write_table

SCHEMA = pa.schema([("prompt", pa.string()), ("n", pa.int64())])


def batches():
    yield pa.RecordBatch.from_arrays([pa.array(["a", "b", "c"]), pa.array([1, 2, 3])], schema=SCHEMA)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_a_file_sink_replaces_whole_counts_and_reads_back(tmp_path, suffix):
    sink = sink_for(OutputFiles.of(tmp_path / f"out{suffix}"))
    assert sink.count_rows() is None  # nothing there yet
    sink.replace(batches(), SCHEMA)
    assert sink.count_rows() == 3
    assert [row["prompt"] for batch in sink.read().batches() for row in batch.to_pylist()] == ["a", "b", "c"]
    assert sink.typed is (suffix == ".parquet")


def test_a_replace_whose_check_fails_leaves_the_output_as_it_was(tmp_path):
    path = tmp_path / "out.csv"
    sink = sink_for(OutputFiles.of(path))
    sink.replace(batches(), SCHEMA)
    before = path.read_bytes()

    def refuse() -> None:
        raise JobError("the input changed")

    with pytest.raises(JobError):
        sink.replace(batches(), SCHEMA, refuse)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]  # no temporary file left


def test_a_file_no_reader_can_read_counts_as_no_rows(tmp_path):
    path = tmp_path / "out.parquet"
    path.write_bytes(b"not parquet at all")
    assert sink_for(OutputFiles.of(path)).count_rows() is None


def test_a_new_format_is_its_three_entries_and_nothing_else(sim, tmp_path, monkeypatch):
    """NDJSON (JSONL by another suffix) added as the recipe says: the registry, a reader and a
    writer. Input, output, --limit's row count and `show` all follow."""
    monkeypatch.setattr(tableformats, "FORMATS", (*tableformats.FORMATS, tableformats.TableFormat(
        "ndjson", (".ndjson",), typed=False)))  # fmt: skip
    monkeypatch.setitem(READERS, "ndjson", JsonlSource)
    monkeypatch.setitem(WRITERS, "ndjson", write_jsonl)
    source = write_table(tmp_path / "in.jsonl", {"prompt": [f"question {i}" for i in range(5)]})
    source = source.rename(tmp_path / "in.ndjson")
    output = tmp_path / "out.ndjson"
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url)
    assert result.exit_code == 0, result.stderr
    rows = output.read_text().splitlines()
    assert len(rows) == 5 and all('"status": "ok"' in row for row in rows)
    trial = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--limit", "2")
    assert trial.exit_code == 2 and "holds 5 rows" in trial.stderr  # the sink counted the output's rows
    shown = cli("show", output)
    assert shown.exit_code == 0 and "5 rows" in shown.output, shown.output
