"""Hostile conditions: a changing input, a hostile server, a hostile filesystem. The CLI runs in
real subprocesses where the condition needs one (signals, kills, mounts)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from batchchat.errors import InputChanged
from batchchat.simulator import BackgroundSimulator, synthetic_reply

from .helpers import KEY_VARIABLES, cli, read_output, write_csv


def body(text: str) -> dict[str, Any]:
    return {"model": "sim-chat", "messages": [{"role": "user", "content": text}]}


def test_damaged_journal_records_are_skipped_said_and_their_rows_sent_again(
    tmp_path: Path, sim: BackgroundSimulator
) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"q{i}"] for i in range(4)])
    output = tmp_path / "out.parquet"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url)
    assert cli("run", *common).exit_code == 0
    journal = Path(f"{output}.journal")
    lines = journal.read_text().splitlines()
    records = [json.loads(line) for line in lines if '"key"' in line]
    damaged = [{**records[0], "prompt_tokens": "abc"}, {**records[1], "response": 123},
               {**records[2], "attempts": 2**40}, {**records[3], "status": None}]  # fmt: skip
    kept = [line for line in lines if '"key"' not in line]
    journal.write_text("\n".join(kept + [json.dumps(r) for r in damaged]) + "\n")
    result = cli("run", *common)
    assert result.exit_code == 0, result.stderr
    assert "the journal holds 4 damaged records (wrong shape or types): skipped" in result.stderr
    assert len(sim.requests) == 8  # each sent again, once
    assert all(r["status"] == "ok" and r["attempts"] == 1 for r in read_output(output))


def start_run(source: Path, output: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARIABLES}
    return subprocess.Popen(
        [sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o", str(output), "-m", "sim-chat",
         "--base-url", url, "--concurrency", "8", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def wait_answered(server: BackgroundSimulator, count: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while server.stats().get("answered", 0) < count:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("change", ["shuffled", "appended"])
def test_an_input_changed_mid_run_is_refused_and_a_rerun_pays_nothing_twice(
    tmp_path: Path, sim_factory: Any, change: str
) -> None:
    server = sim_factory(latency_ms=20)
    texts = [f"changing question {i}" for i in range(400)]
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[t] for t in texts])
    output = tmp_path / "out.parquet"
    output.write_bytes(b"an older table")
    process = start_run(source, output, server.url)
    wait_answered(server, 40, process)
    changed = random.Random(1).sample(texts, len(texts)) if change == "shuffled" else texts + ["new 1", "new 2"]
    write_csv(tmp_path / "next.csv", ["prompt"], [[t] for t in changed])
    shutil.copyfile(tmp_path / "next.csv", source)  # like cp: the same file, rewritten in place
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2, stderr
    assert f"the input {source} changed while the run was going" in stderr and "internal error" not in stderr
    assert output.read_bytes() == b"an older table"  # never a table of mismatched rows
    paid = server.stats()["answered"]
    rerun = start_run(source, output, server.url)
    _, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    rows = read_output(output)
    assert [r["prompt"] for r in rows] == changed
    assert all(r["response"] == synthetic_reply(body(r["prompt"]))[0] for r in rows)  # each its own answer
    assert paid < 400
    assert server.stats()["answered"] == len(changed)  # every row answered once: nothing paid twice
    assert server.stats()["answered_twice"] == 0


def test_a_request_is_never_sent_under_another_rows_key(tmp_path: Path) -> None:
    import pyarrow as pa

    from batchchat.job import load_job
    from batchchat.journal import MemoryStore
    from batchchat.passes import plan
    from batchchat.prompts import RequestBuilder
    from batchchat.source import ArrowSource

    job = load_job(None, model="m", provider="sim")
    before = ArrowSource(pa.table({"prompt": ["a", "b", "c"]}))
    builder = RequestBuilder(job, before.columns, "in.csv")
    _, rows = plan(job, before, builder, MemoryStore(), None, "sim")
    assert [r.messages[-1]["content"] for r in builder.requests(before, rows.keys, rows.sends)] == ["a", "b", "c"]
    after = ArrowSource(pa.table({"prompt": ["a", "c", "b"]}))  # what a rewrite nobody noticed would give
    requests = builder.requests(after, rows.keys, rows.sends)
    assert next(requests).messages[-1]["content"] == "a"
    with pytest.raises(InputChanged, match="row 2 is not what it was"):
        next(requests)
