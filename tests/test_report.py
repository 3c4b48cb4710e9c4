"""The report (`batchchat report`, `run --report`) and `batchchat show`: the numbers in the HTML
are the table's, for a plain run, a scored fan-out, a labeling run, a streamed run and a stopped
one; the page is one offline file, escapes what the rows hold, and loads in a real browser."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .helpers import cli, read_output, write_csv

pytest.importorskip("matplotlib")


def figures(report: Path) -> dict[str, Any]:
    page = report.read_text(encoding="utf-8")
    found = re.search(r"<script type=application/json id=figures>(.*?)</script>", page, re.S)
    assert found is not None
    return json.loads(found.group(1).replace("<\\/", "</"))


def number(cell: Any) -> float:
    return float(cell) if cell not in (None, "") else 0.0


def check_against_table(report: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's figures, each worked out again from the table."""
    seen = figures(report)
    statuses = Counter(r["status"] for r in rows)
    assert (seen["rows"], seen["ok"], seen["errors"], seen["pending"]) == (
        len(rows), statuses["ok"], statuses["error"], statuses["pending"])  # fmt: skip
    assert seen["error_types"] == dict(Counter(r["error_type"] for r in rows if r["status"] == "error"))
    paid = [r for r in rows if r["paid"] != "shared"]  # a shared request's tokens are counted where it was paid
    assert seen["prompt_tokens"] == sum(int(number(r["prompt_tokens"])) for r in paid)
    assert seen["completion_tokens"] == sum(int(number(r["completion_tokens"])) for r in paid)
    if "cost" in rows[0] and all(r["cost"] not in (None, "") for r in paid if r["status"] != "pending"):
        assert seen["cost"] == pytest.approx(sum(number(r["cost"]) for r in paid))
    return seen


def test_a_plain_run_and_its_report_agree(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(latency_ms=5)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"], ["b"], ["a"], [""], ["[sim:fault=400] no"]])
    output = tmp_path / "out.csv"
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--price",
                 "sim-chat=1000,2000", "--report")  # fmt: skip
    report = tmp_path / "out.csv.report.html"
    assert result.exit_code == 1 and f"report: {report}" in result.stderr
    seen = check_against_table(report, read_output(output))
    assert seen["error_types"] == {"invalid_input": 1, "bad_request": 1}
    page = report.read_text(encoding="utf-8")
    assert "<svg" in page and "latency, s" in page  # a chart, inline
    assert not re.search(r'(src|href)\s*=\s*["\']?https?:|url\(\s*["\']?https?:|<link|<script src', page)  # offline
    shown = cli("show", output)
    assert shown.exit_code == 0
    assert f"{output}: 5 rows: 3 ok, 2 errors (invalid_input 1, bad_request 1)" in shown.stdout


def test_a_scored_fan_out_report_has_its_groups_and_disagreements(tmp_path: Path, sim: Any) -> None:
    rows = [[f"question {i}", "Simulated" if i % 2 else "nothing"] for i in range(8)]
    source = write_csv(tmp_path / "in.csv", ["question", "answer"], rows)
    output = tmp_path / "out.parquet"
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "-m", "sim-chat-large", "--base-url", sim.url,
                 "--prompt-column", "question", "--expected-column", "answer", "--score", "contains")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = Path(cli("report", output).stdout.strip())
    table = read_output(output)
    seen = check_against_table(report, table)
    for group in seen["groups"]:
        mine = [r for r in table if r["model"] == group["model"]]
        assert group["rows"] == len(mine)
        assert group["accuracy"] == pytest.approx(sum(r["score"] for r in mine) / len(mine))
    page = report.read_text(encoding="utf-8")
    assert "Models and variants" in page and "accuracy, %" in page
    shown = cli("show", output).stdout
    assert "sim-chat-large" in shown and "% of 8" in shown


def test_a_labeling_report_counts_the_labels_and_the_invalid_answers(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(labels=("yes", "no"), invalid_rate=0.6, seed=3)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"is {i} even?"] for i in range(40)])
    output = tmp_path / "out.jsonl"
    cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--labels", "yes,no",
        "--invalid-retries", "1", "--report")  # fmt: skip
    table = read_output(output)
    seen = check_against_table(tmp_path / "out.jsonl.report.html", table)
    assert seen["labels"] == dict(Counter(r["label"] for r in table if r["label"]))
    assert seen["error_types"].get("invalid_label", 0) == sum(r["error_type"] == "invalid_label" for r in table) > 0
    assert seen["retries"] >= 0 and seen["requests_timed"] == 40


def test_a_streamed_run_report_shows_time_to_first_token(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(latency_ms=20, tokens_per_s=400)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"q{i}"] for i in range(10)])
    output = tmp_path / "out.parquet"
    assert cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--stream",
               "--report").exit_code == 0  # fmt: skip
    page = (tmp_path / "out.parquet.report.html").read_text(encoding="utf-8")
    assert "time to first token, s" in page
    check_against_table(tmp_path / "out.parquet.report.html", read_output(output))


def test_a_stopped_run_report_says_what_is_pending(tmp_path: Path) -> None:
    from batchchat.execute.base import Ending
    from batchchat.reports.htmlreport import write_report
    from batchchat.runs.runfile import arun

    from .test_first_hour import Stopper

    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"q{i}"] for i in range(6)])
    output = tmp_path / "out.csv"
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(arun(input=source, output=output, model="m", provider="sim", executor=Stopper(Ending.STOPPED)))
    report = write_report(output)
    seen = check_against_table(report, read_output(output))
    assert seen["pending"] == 5
    page = report.read_text(encoding="utf-8")
    assert "Pending (the first 5)" in page and "5 rows not finished" in page
    assert "5 rows not finished: run the job again to go on" in cli("show", output).stdout


def test_the_report_escapes_what_rows_hold_and_never_holds_the_key(tmp_path: Path, sim: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    canary = "sk-canary-report-0123456789"
    monkeypatch.setenv("TOGETHER_API_KEY", canary)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["[sim:reply=<script>alert(1)</script><b>x</b>]"]])
    output = tmp_path / "out.parquet"
    assert cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--report").exit_code == 0
    page = (tmp_path / "out.parquet.report.html").read_text(encoding="utf-8")
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert canary not in page and "TOGETHER_API_KEY" in page  # the variable is named, its value never


def test_dollars_in_labels_models_and_fields_are_text_not_tex(tmp_path: Path, sim: Any) -> None:
    """Price tiers ("$$", "$5") are ordinary model output: charts show them as written, they are
    never TeX to parse (which failed the report after every row was answered)."""
    labels = ["$$ tier", "$5 tier", "free $", "red \x1b[31m"]
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"[sim:reply={label}] q{i}"] for i, label in
                                                         enumerate(labels * 3)])  # fmt: skip
    output = tmp_path / "out.csv"
    result = cli("run", "-i", source, "-o", output, "-m", "sim$chat$", "-m", "$$", "--base-url", sim.url,
                 "--labels", ",".join(labels), "--report")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    page = (tmp_path / "out.csv.report.html").read_text(encoding="utf-8")
    assert "$$ tier" in page and "sim$chat$" in page
    assert "\x1b" not in page and "red [31m" in page  # text, without its control characters
    fields = write_csv(tmp_path / "fields.csv", ["prompt"], [['[sim:reply={"tier": "$$$", "price": "$5"}] q'],
                                                             ['[sim:reply={"tier": "$", "price": "$$"}] r']])  # fmt: skip
    schema = json.dumps({"type": "object", "properties": {"tier": {"type": "string"}, "price": {"type": "string"}}})
    fields_out = tmp_path / "fields.parquet"
    assert cli("run", "-i", fields, "-o", fields_out, "-m", "m", "--base-url", sim.url, "--json-schema",
               schema).exit_code == 0  # fmt: skip
    made = cli("report", fields_out)
    assert made.exit_code == 0, made.stderr
    assert "$$$" in (tmp_path / "fields.parquet.report.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_large_output_gives_a_small_report(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batchchat.reports.htmlreport import write_report

    n = 200_000
    table = pa.table({
        "prompt": [f"question {i}" for i in range(n)], "response": [f"answer {i} " * 5 for i in range(n)],
        "prompt_tokens": [10] * n, "completion_tokens": [i % 50 for i in range(n)], "total_tokens": [10 + i % 50 for i in range(n)],
        "latency_s": [0.1 + (i % 97) / 100 for i in range(n)], "status": ["ok" if i % 13 else "error" for i in range(n)],
        "error_type": [None if i % 13 else "server_error" for i in range(n)], "model": ["m"] * n,
        "request_id": [f"id{i}" for i in range(n)], "label": [("yes", "no", "maybe")[i % 3] for i in range(n)],
    })  # fmt: skip
    output = tmp_path / "big.parquet"
    pq.write_table(table, output)
    report = write_report(output)
    assert report.stat().st_size < 3 * 1024 * 1024  # aggregates and samples, never every row
    assert figures(report)["rows"] == n


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium here: `apt-get install chromium` to check "
                                                             "the report in a real browser (.ci/run installs it)")
def test_the_report_loads_in_a_real_browser_without_console_errors(tmp_path: Path, sim: Any) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"q{i}"] for i in range(12)])
    output = tmp_path / "out.parquet"
    cli("run", "-i", source, "-o", output, "-m", "sim-chat", "-m", "sim-chat-large", "--base-url", sim.url, "--report")
    report = tmp_path / "out.parquet.report.html"
    shot = tmp_path / "report.png"
    browser = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--window-size=1200,2400",
         f"--screenshot={shot}", report.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 20_000, browser.stderr[-2000:]  # a page was drawn
    console = [line for line in browser.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
