"""Numbers that agree everywhere: the run's summary, ``batchchat show``, the report and
``overview()`` count the same rows the same way, and the table's own columns add up to them."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchchat import run
from batchchat.job.spec import SimConfig
from batchchat.reports.survey import overview
from batchchat.reports.text import group_table, summary_text
from batchchat.simulator import BackgroundSimulator

from .helpers import REPORTS, cli, read_output, write_csv

EXAMPLES = int(os.environ.get("BATCHCHAT_EXAMPLES", "6"))  # each a few real runs: more for a longer search


def per_model_from_table(rows: list[dict[str, Any]]) -> dict[str, tuple[int, int, float]]:
    """What README says to do: leave out the rows that shared another row's request, then sum."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for r in rows:
        if r["paid"] in ("this_run", "earlier_run"):
            total = sums[r["model"]]
            total[0] += r["prompt_tokens"] or 0
            total[1] += r["completion_tokens"] or 0
            total[2] += r["cost"] or 0.0
    return {model: (int(t[0]), int(t[1]), round(t[2], 9)) for model, t in sums.items()}


def figures(report: Path) -> dict[str, Any]:
    page = report.read_text(encoding="utf-8")
    found = re.search(r"<script type=application/json id=figures>(.*?)</script>", page, re.S)
    assert found is not None
    return dict(json.loads(found.group(1).replace("<\\/", "</")))


def test_tokens_are_counted_per_row_when_the_server_repeats_its_response_ids(tmp_path: Path) -> None:
    """A caching proxy's ids depend on the prompt alone: two models answering one prompt give one
    id, and nothing may count them as one answer."""
    prompts = [f"[sim:id=cached-{i % 3}] question {i % 3}" for i in range(6)]  # repeats share a request too
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[p] for p in prompts])
    output = tmp_path / "out.parquet"
    with BackgroundSimulator(SimConfig()) as sim:
        result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "-m", "sim-mini", "--base-url", sim.url,
                     "--price", "sim-chat=1000,2000", "--price", "sim-mini=3000,4000", "--report")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = read_output(output)
    assert len({r["request_id"] for r in rows}) == 3  # the server said three ids for six answers
    table = per_model_from_table(rows)
    seen = overview(output)
    assert {g.model: (g.prompt_tokens, g.completion_tokens, round(g.cost or 0, 9)) for g in seen.groups} == table
    assert all(g.tokens > 0 for g in seen.groups)
    assert (seen.prompt_tokens, seen.completion_tokens) == (sum(t[0] for t in table.values()),
                                                            sum(t[1] for t in table.values()))  # fmt: skip
    said = re.search(r"tokens this run: ([\d,]+) prompt \+ ([\d,]+) completion", result.stderr)
    assert said is not None
    assert (int(said[1].replace(",", "")), int(said[2].replace(",", ""))) == (seen.prompt_tokens, seen.completion_tokens)
    shown = cli("show", output)
    assert shown.exit_code == 0
    for line in group_table(seen.groups):  # the per-model table, as the run printed it
        assert line in result.stderr and line in shown.output
    if REPORTS:
        report = figures(tmp_path / "out.parquet.report.html")
        assert (report["prompt_tokens"], report["completion_tokens"]) == (seen.prompt_tokens, seen.completion_tokens)
        assert {g["model"]: g["tokens"] for g in report["groups"]} == {m: t[0] + t[1] for m, t in table.items()}


@st.composite
def jobs(draw: st.DrawFn) -> dict[str, Any]:
    distinct = draw(st.integers(1, 6))
    rows = draw(st.lists(st.integers(0, distinct - 1), min_size=1, max_size=14))  # repeats: dedup
    return {
        "prompts": [f"item {i}" for i in rows],
        "models": draw(st.sampled_from([["sim-chat"], ["sim-chat", "sim-mini"]])),  # fan-out
        "labels": draw(st.booleans()),  # with invalid answers re-asked
        "limit": draw(st.none() | st.integers(1, len(rows))),  # a trial first: the rest resumes
        "batch": draw(st.booleans()),
        "priced": draw(st.booleans()),
        "seed": draw(st.integers(0, 3)),
    }


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(job=jobs())
def test_the_summary_show_the_report_and_overview_agree_and_the_table_adds_up_to_them(job: dict[str, Any]) -> None:
    config = SimConfig(labels=("yes", "no"), invalid_rate=0.3, seed=job["seed"], batch_seconds=0.2)
    with tempfile.TemporaryDirectory() as folder, BackgroundSimulator(config) as sim:
        tmp = Path(folder)
        source = write_csv(tmp / "in.csv", ["prompt"], [[p] for p in job["prompts"]])
        output = tmp / "out.parquet"
        common: dict[str, Any] = {"input": source, "output": output, "models": job["models"], "base_url": sim.url,
                                  "batch_api": job["batch"], "invalid_retries": 1}  # fmt: skip
        if job["labels"]:
            common["labels"] = ["yes", "no"]
        if job["priced"]:
            prices = {"sim-chat": {"input": 1000.0, "output": 2000.0}, "sim-mini": {"input": 3000.0, "output": 4000.0}}
            common["prices"] = {model: prices[model] for model in job["models"]}
        if job["limit"] is not None:
            run(**{**common, "output": tmp / "trial.parquet"}, limit=job["limit"])
            run(**common, limit=job["limit"])
        result = run(**common)
        rows = read_output(output)
        seen = overview(output)
        s = result.summary
        # the run's summary and overview() count the same rows alike
        assert (s.rows, s.ok, s.errors, s.pending) == (seen.rows, seen.ok, seen.errors_count, seen.pending_count)
        assert s.groups == seen.groups
        assert (s.output_prompt_tokens, s.output_completion_tokens) == (seen.prompt_tokens, seen.completion_tokens)
        assert s.output_cost == seen.cost
        # the table's columns add up to them, as README says
        table = per_model_from_table(rows)
        assert {g.model: (g.prompt_tokens, g.completion_tokens) for g in seen.groups if g.rows} == {
            m: t[:2] for m, t in table.items()} | {g.model: (0, 0) for g in seen.groups if g.model not in table}  # fmt: skip
        # this run paid for the rows it says it paid for
        this_run = [r for r in rows if r["paid"] == "this_run"]
        assert s.prompt_tokens == sum(r["prompt_tokens"] or 0 for r in this_run)
        assert s.completion_tokens == sum(r["completion_tokens"] or 0 for r in this_run)
        # show and the report say what overview() says
        shown = cli("show", output)
        lines = summary_text(result).splitlines()
        tabled = len(seen.groups) > 1 or any(g.scored for g in seen.groups)  # else a table of one row is left out
        for line in group_table(seen.groups):
            assert (line in shown.output.splitlines()) == (line in lines) == tabled
        if REPORTS:
            report = cli("report", output)
            assert report.exit_code == 0, report.stderr
            page = figures(output.with_name("out.parquet.report.html"))
            assert (page["rows"], page["prompt_tokens"], page["completion_tokens"], page["cost"]) == (
                seen.rows, seen.prompt_tokens, seen.completion_tokens, seen.cost)  # fmt: skip


def test_a_table_from_before_the_paid_column_is_summed_row_by_row_and_says_so(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"], ["a"], ["a"], ["b"]])
    output = tmp_path / "out.parquet"
    with BackgroundSimulator(SimConfig()) as sim:
        assert cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url).exit_code == 0
    table = pq.read_table(output)
    pq.write_table(table.drop_columns(["paid"]), output)  # as an older batchchat wrote it
    rows = read_output(output)
    shown = cli("show", output).output
    every = sum(r["prompt_tokens"] for r in rows)
    assert "the output's rows, each counted (a table without the paid column, from an older batchchat" in shown
    assert f": {every:,} prompt + " in shown and "each counted once" not in shown


def test_the_summary_says_how_the_rows_of_this_run_differ_from_what_it_paid(tmp_path: Path) -> None:
    """Under changed checks, a row asked again now counts the answer an earlier run paid for too."""
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"item {i}"] for i in range(30)])
    output = tmp_path / "out.parquet"
    with BackgroundSimulator(SimConfig(labels=("yes", "no", "maybe"))) as sim:
        common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url)
        assert cli("run", *common, "--labels", "yes,no,maybe").exit_code == 0
        again = cli("run", *common, "--labels", "yes,no", "--invalid-retries", "3")
    rows = read_output(output)
    this_run = [r for r in rows if r["paid"] == "this_run"]
    assert this_run  # the "maybe" rows, asked again
    said = re.search(r"tokens this run: ([\d,]+) prompt \+ ([\d,]+) completion = ([\d,]+)", again.stderr)
    assert said is not None
    held = sum((r["prompt_tokens"] or 0) + (r["completion_tokens"] or 0) for r in this_run)
    more = held - int(said[3].replace(",", ""))
    assert more > 0 and f"(the rows it answered count {more:,} more: they count answers earlier runs paid for" in again.stderr
