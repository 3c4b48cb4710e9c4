"""The first hour with batchchat: cost, labels and usage in the summary; a notebook user's
run_frame; grouped help and plain wording."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from batchchat.report import money
from batchchat.simulator import BackgroundSimulator

from .helpers import cli, read_output, write_csv
from .hostile_server import HostileServer

PRICE = {"sim-chat": (1000.0, 2000.0)}  # dollars per million input and output tokens


def cost_of(row: dict[str, Any], price: tuple[float, float]) -> float:
    return (int(row["prompt_tokens"]) * price[0] + int(row["completion_tokens"]) * price[1]) / 1e6


def test_each_row_has_its_cost_and_the_summary_totals_it(tmp_path: Path, sim: BackgroundSimulator) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"], ["b"], ["a"]])  # the third shares the first's answer
    output = tmp_path / "out.parquet"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--price", "sim-chat=1000,2000")
    result = cli("run", *common)
    assert result.exit_code == 0, result.stderr
    rows = read_output(output)
    assert list(rows[0])[-1] == "cost"
    assert rows[0]["cost"] == pytest.approx(cost_of(rows[0], PRICE["sim-chat"]))
    assert rows[1]["cost"] == pytest.approx(cost_of(rows[1], PRICE["sim-chat"]))
    assert rows[2]["cost"] == 0.0  # paid once, by the identical row: the column sums to what was paid
    spent = sum(r["cost"] for r in rows)
    assert f"; cost {money(spent)}" in result.stderr
    again = cli("run", *common)
    assert again.exit_code == 0 and "nothing to send" in again.stderr
    assert f"the output's rows cost {money(spent)} in all" in again.stderr  # nothing sent now, but it was paid
    unpriced = cli("run", "-i", source, "-o", tmp_path / "other.csv", "-m", "other", "--base-url", sim.url)
    assert unpriced.exit_code == 0
    assert all(r["cost"] == "" for r in read_output(tmp_path / "other.csv"))  # no price, no cost


def test_prices_come_from_the_catalogue_for_known_models_and_the_job_wins(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hi"]])
    model = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    known = cli("run", "-i", source, "-m", model, "--dry-run")
    assert known.exit_code == 0
    assert f"price of {model}: $0.88 input, $0.88 output per million tokens (from the catalogue" in known.stdout
    assert "no price for some models" not in known.stdout
    mine = cli("run", "-i", source, "-m", model, "--price", f"{model}=0.5,0.6", "--dry-run")
    assert "from the catalogue" not in mine.stdout
    capped = cli("run", "-i", source, "-m", model, "--max-cost", "1", "--max-tokens", "10", "--dry-run")
    assert capped.exit_code == 0  # the catalogue's price is enough for a cost cap
    local = cli("run", "-i", source, "-m", model, "--base-url", "http://127.0.0.1:9/v1", "--dry-run")
    assert "from the catalogue" not in local.stdout  # a local server's model is not priced as Together's


def test_a_server_that_reports_no_usage_is_said_not_counted_as_zero(tmp_path: Path) -> None:
    async def no_usage(request: web.Request) -> web.StreamResponse:
        body = {"id": "x", "object": "chat.completion", "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
        return web.Response(text=json.dumps(body), content_type="application/json")  # fmt: skip

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"], ["b"]])
    with HostileServer(no_usage) as server:
        result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "m", "--base-url", server.url)
    assert result.exit_code == 0, result.stderr
    assert "tokens this run: usage not reported for 2 answers" in result.stderr
    assert "0 prompt + 0 completion" not in result.stderr


def test_a_labeling_run_says_how_many_rows_got_each_label(tmp_path: Path, sim_factory: Any) -> None:
    server = sim_factory(labels=("yes", "no"))
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"q{i}"] for i in range(30)])
    result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "sim-chat", "--base-url", server.url,
                 "--labels", "yes,no")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = read_output(tmp_path / "out.csv")
    counts = {label: sum(r["label"] == label for r in rows) for label in ("yes", "no")}
    line = next(line for line in result.stderr.splitlines() if line.startswith("labels: "))
    assert all(f"{label} {count}" in line for label, count in counts.items() if count)
