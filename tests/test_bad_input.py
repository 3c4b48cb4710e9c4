"""Every bad input is caught before the first request: exit 2, one clear line, nothing damaged."""

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import cli

OLD_OUTPUT = b"yesterday's complete results"
GOOD_CSV = "id,prompt,history\n1,hello,\n2,world,\n"


def files(folder: Path, spec: dict[str, str | bytes]) -> None:
    for name, content in spec.items():
        path = folder / name
        if name.endswith("/"):
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


PARQUET_WITH_STATUS = "parquet-with-status"

CASES = [
    # (id, files, arguments after `run`, what the message must say)
    ("missing-input", {}, ["-i", "{d}/nope.csv"], "input file {d}/nope.csv does not exist"),
    ("input-is-a-folder", {"in.csv/": ""}, ["-i", "{d}/in.csv"], "input {d}/in.csv does not exist or is not a file"),
    ("empty-file", {"in.csv": ""}, ["-i", "{d}/in.csv"], "input {d}/in.csv is empty (0 bytes)"),
    ("header-only", {"in.csv": "id,prompt\n"}, ["-i", "{d}/in.csv"], "{d}/in.csv has no rows"),
    ("no-prompt-column", {"in.csv": "id,question\n1,hi\n"}, ["-i", "{d}/in.csv"],
     "has no column 'prompt' (the prompt column, --prompt-column); its columns are 'id', 'question'"),
    ("prompt-column-typo", {"in.csv": GOOD_CSV}, ["-i", "{d}/in.csv", "--prompt-column", "promt"],
     "has no column 'promt'"),
    ("closest-column", {"in.csv": "id,prompts\n1,hi\n"}, ["-i", "{d}/in.csv"], "did you mean 'prompts'?"),
    ("no-messages-column", {"in.csv": GOOD_CSV}, ["-i", "{d}/in.csv", "--messages-column", "conversation"],
     "has no column 'conversation' (the messages column"),
    ("template-column", {"in.csv": GOOD_CSV}, ["-i", "{d}/in.csv", "--template", "Translate {text}"],
     "has no column 'text' (a placeholder in the template)"),
    ("template-syntax", {"in.csv": GOOD_CSV}, ["-i", "{d}/in.csv", "--template", "Say {prompt"], "is never closed"),
    ("ragged-csv", {"in.csv": "id,prompt\n1,hi\n2,a,b\n"}, ["-i", "{d}/in.csv"],
     "{d}/in.csv, line 3: 3 cells where the header has 2"),
    ("unclosed-quote", {"in.csv": 'id,prompt\n1,hi\n2,"oops\n3,more\n'}, ["-i", "{d}/in.csv"],
     "{d}/in.csv, line 3: a double quote opened there is never closed"),
    ("not-utf8", {"in.csv": "id,prompt\n1,caf\u00e9\n".encode("latin-1")}, ["-i", "{d}/in.csv"],
     "{d}/in.csv is not UTF-8 text: line 2, byte 6 (0xe9) cannot be read. Convert the file, e.g. iconv"),
    ("not-utf8-jsonl", {"in.jsonl": '{"prompt": "ok"}\n{"prompt": "caf\u00e9"}\n'.encode("latin-1")},
     ["-i", "{d}/in.jsonl"], "{d}/in.jsonl is not UTF-8 text: line 2"),
    ("bad-jsonl-line", {"in.jsonl": '{"prompt": "a"}\n{"prompt": b}\n'}, ["-i", "{d}/in.jsonl"],
     "{d}/in.jsonl, line 2: not valid JSON"),
    ("corrupt-parquet", {"in.parquet": b"PAR1 this is not really parquet"}, ["-i", "{d}/in.parquet"],
     "cannot read {d}/in.parquet as Parquet"),
    ("input-suffix", {"in.xlsx": "x"}, ["-i", "{d}/in.xlsx"], "cannot tell the format of input file"),
    ("output-suffix", {"in.csv": GOOD_CSV}, ["-i", "{d}/in.csv", "-o", "{d}/out.xlsx"],
     "cannot tell the format of output file {d}/out.xlsx from its suffix '.xlsx'; use one of .csv, .parquet, .jsonl"),
    ("messages-not-json", {"in.csv": 'id,prompt,history\n1,hi,\n2,hi,"[{role: user}]"\n'},
     ["-i", "{d}/in.csv", "--messages-column", "history"], "{d}/in.csv, row 2, column 'history': not valid JSON"),
    ("messages-not-a-list", {"in.csv": 'id,history\n1,"{""role"": ""user"", ""content"": ""x""}"\n'},
     ["-i", "{d}/in.csv", "--messages-column", "history"], "row 1, column 'history': got a JSON dict"),
    ("messages-bad-role", {"in.csv": 'id,history\n1,"[{""role"": ""bot"", ""content"": ""x""}]"\n'},
     ["-i", "{d}/in.csv", "--messages-column", "history"], "row 1, column 'history': message 1 has role 'bot'"),
    ("output-column-clash", {"in.csv": "prompt,response\nhi,draft\n"}, ["-i", "{d}/in.csv"],
     "has column(s) 'response', which batchchat adds to the output; rename them in the input"),
    (PARQUET_WITH_STATUS, {}, ["-i", "{d}/in.parquet"], "has column(s) 'status', which batchchat adds"),
    ("negative-concurrency", {"in.csv": GOOD_CSV}, ["-i", "{d}/in.csv", "--concurrency", "-3"],
     "--concurrency must be at least 1, got -3"),
    ("temperature-word", {"in.csv": GOOD_CSV}, ["-i", "{d}/in.csv", "--temperature", "hot"],
     "'hot' is not a valid float"),
    ("zero-max-tokens", {"in.csv": GOOD_CSV}, ["-i", "{d}/in.csv", "--max-tokens", "0"],
     "--max-tokens must be at least 1, got 0"),
    ("param-without-value", {"in.csv": GOOD_CSV}, ["-i", "{d}/in.csv", "--param", "novalue"],
     "expected KEY=VALUE, got 'novalue'"),
    ("top-p-too-big", {"in.csv": GOOD_CSV}, ["-i", "{d}/in.csv", "--top-p", "2"], "--top-p must be at most 1"),
    ("toml-syntax", {"in.csv": GOOD_CSV, "job.toml": 'input = "in.csv"\nmodel = "sim-chat"\nconcurrency = = 3\n'},
     ["{d}/job.toml"], "job file {d}/job.toml is not valid TOML: ") ,
    ("toml-unknown-key", {"in.csv": GOOD_CSV, "job.toml": 'input = "in.csv"\nmodel = "sim-chat"\ntemprature = 0.5\n'},
     ["{d}/job.toml"], "unknown key 'temprature'; did you mean 'temperature'?"),
    ("toml-wrong-type", {"in.csv": GOOD_CSV, "job.toml": 'input = "in.csv"\nmodel = "sim-chat"\nconcurrency = "many"\n'},
     ["{d}/job.toml"], "'concurrency' in {d}/job.toml must be a whole number, got 'many'"),
    ("no-model", {"in.csv": GOOD_CSV}, ["-i", "{d}/in.csv", "--no-model"], "no model: give one with -m/--model"),
    ("no-key", {"in.csv": GOOD_CSV}, ["-i", "{d}/in.csv", "--remote"],
     "no API key: the variable TOGETHER_API_KEY is not set"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "spec", "args", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_clear_line_sends_nothing_and_damages_nothing(
    sim, tmp_path, case, spec, args, message
):
    files(tmp_path, spec)
    if case == PARQUET_WITH_STATUS:
        pq.write_table(pa.table({"prompt": ["hi"], "status": ["draft"]}), tmp_path / "in.parquet")
    output = tmp_path / "out.parquet"
    output.write_bytes(OLD_OUTPUT)
    before = sorted(os.listdir(tmp_path))
    argv = [a.replace("{d}", str(tmp_path)) for a in args if a not in ("--no-model", "--remote")]
    if "-o" not in argv:
        argv += ["-o", str(output)]
    if "--no-model" not in args and not any(a.endswith(".toml") for a in argv):
        argv += ["-m", "sim-chat"]
    argv += ["--base-url", "https://api.example.com/v1" if "--remote" in args else sim.url]

    result = cli("run", *argv)

    assert result.exit_code == 2, result.stderr
    assert message.replace("{d}", str(tmp_path)) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("batchchat: error: ")
    assert sim.requests == []
    assert output.read_bytes() == OLD_OUTPUT
    assert sorted(os.listdir(tmp_path)) == before  # no journal, lock or temporary file left


def test_debug_shows_the_traceback_of_a_bad_input(tmp_path):
    files(tmp_path, {"in.csv": "id,question\n1,hi\n"})
    result = cli("run", "-i", tmp_path / "in.csv", "-m", "sim-chat", "--provider", "sim", "--debug")
    assert result.exit_code == 2 and "Traceback" in result.stderr and "has no column 'prompt'" in result.stderr


def test_empty_prompt_cells_are_counted_before_the_run_and_become_invalid_input_rows(sim, tmp_path):
    files(tmp_path, {"in.csv": 'id,prompt\n1,hi\n2,\n3,"   "\n4,there\n'})
    output = tmp_path / "out.jsonl"
    result = cli("run", "-i", tmp_path / "in.csv", "-o", output, "-m", "sim-chat", "--base-url", sim.url)
    assert result.exit_code == 1
    assert "2 input rows have nothing to send, an empty prompt (rows 2, 3): they become error rows" in result.stderr
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["status"], r["error_type"], r["attempts"]) for r in rows] == [
        ("ok", None, 1), ("error", "invalid_input", 0), ("error", "invalid_input", 0), ("ok", None, 1),
    ]  # fmt: skip
    assert len(sim.requests) == 2
