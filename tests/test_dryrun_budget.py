"""--dry-run (plan and estimate, send nothing) and --max-cost (stop before the cap)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import batchchat
from batchchat.core.words import dollars as money
from batchchat.job.money import PER_MESSAGE_TOKENS, PER_REQUEST_TOKENS
from batchchat.simulator import BackgroundSimulator

from .helpers import cli, read_output, write_csv

ROOT = Path(__file__).resolve().parent.parent


def bound(*messages: str) -> int:
    """The prompt estimate: UTF-8 bytes, plus the chat template's tokens per message and request."""
    return PER_REQUEST_TOKENS + sum(len(m.encode("utf-8")) + PER_MESSAGE_TOKENS for m in messages)


def priced_job(folder: Path, url: str, rows: int = 20, extra: str = "") -> Path:
    write_csv(folder / "in.csv", ["prompt"], [[f"question number {i:03d}"] for i in range(rows)])  # 19 chars
    path = folder / "job.toml"
    path.write_text(f"""input = "in.csv"
output = "out.csv"
base_url = "{url}"
models = ["sim-chat", "sim-chat-large"]
max_tokens = 100
[prices]
"sim-chat" = {{ input = 1000.0, output = 2000.0 }}
"sim-chat-large" = {{ input = 3000.0, output = 6000.0 }}
{extra}""", encoding="utf-8")  # fmt: skip
    return path


def test_a_dry_run_plans_estimates_and_sends_nothing(tmp_path: Path, sim: BackgroundSimulator) -> None:
    job = priced_job(tmp_path, sim.url)
    result = cli("run", job, "--dry-run")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "dry run: nothing was sent" in out
    assert "40 rows (20 rows x 2 models)" in out and "40 requests to send" in out
    prompt, completion = 20 * bound("question number 000"), 20 * 100
    small = (prompt * 1000 + completion * 2000) / 1e6
    large = (prompt * 3000 + completion * 6000) / 1e6
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ")}
    assert lines["sim-chat"][2:] == ["20", f"{prompt:,}", f"{completion:,}", f"${small:.2f}"]
    assert lines["sim-chat-large"][2:] == ["20", f"{prompt:,}", f"{completion:,}", f"${large:,.2f}"]
    assert lines["total"][1:] == ["40", f"{2 * prompt:,}", f"{2 * completion:,}", f"${small + large:,.2f}"]
    assert (
        'first request: {"model": "sim-chat", "messages": [{"role": "user", "content": "question number 000"}]' in out
    )
    assert sim.requests == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "job.toml"]


def test_a_dry_run_counts_what_resume_and_dedup_spare_and_leaves_the_output_alone(
    tmp_path: Path, sim: BackgroundSimulator
) -> None:
    job = priced_job(tmp_path, sim.url, rows=10)
    assert cli("run", job).exit_code == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    write_csv(tmp_path / "in.csv", ["prompt"],
              [[f"question number {i:03d}"] for i in range(10)] + [["new"], ["new"], ["newer"]])  # fmt: skip
    before["in.csv"] = (tmp_path / "in.csv").read_bytes()
    sent = len(sim.requests)
    result = cli("run", job, "--dry-run")
    assert result.exit_code == 0
    assert (
        "20 rows answered by an earlier run (journal); 2 rows share a request with an identical row; 4 requests to send"
        in result.stdout
    )
    assert len(sim.requests) == sent
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_dry_run_needs_no_key_and_says_a_run_will(tmp_path: Path) -> None:
    write_csv(tmp_path / "in.csv", ["prompt"], [["hi"]])
    result = cli("run", "-i", tmp_path / "in.csv", "-m", "someone/unknown-model", "--dry-run")
    assert result.exit_code == 0
    assert "note: TOGETHER_API_KEY is not set; a real run needs it" in result.stdout
    assert "no price for some models" in result.stdout
    assert cli("run", "-i", tmp_path / "in.csv", "-m", "x").exit_code == 2


def test_a_dry_run_still_refuses_bad_input(tmp_path: Path) -> None:
    write_csv(tmp_path / "in.csv", ["text"], [["hi"]])
    result = cli("run", "-i", tmp_path / "in.csv", "-m", "m", "--provider", "sim", "--dry-run")
    assert result.exit_code == 2 and "has no column 'prompt'" in result.stderr


def test_dry_run_from_the_library(tmp_path: Path) -> None:
    write_csv(tmp_path / "in.csv", ["prompt"], [["abcd" * 10], ["x"]])
    plan = batchchat.dry_run(input=str(tmp_path / "in.csv"), model=["a", "b"], max_tokens=7,
                             provider="together")  # fmt: skip
    assert plan.plan.to_send == 4
    assert plan.prompt_tokens == 2 * (bound("abcd" * 10) + bound("x")) and plan.completion_tokens == 4 * 7
    assert plan.likely_prompt_tokens == 2 * (10 + 1)  # characters / 4
    assert plan.cost is None and plan.missing_key == "TOGETHER_API_KEY"


@pytest.mark.parametrize("job", sorted(p.name for p in (ROOT / "jobs").glob("*.toml")))
def test_every_example_job_passes_a_dry_run(job: str) -> None:
    result = cli("run", ROOT / "jobs" / job, "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "requests to send" in result.stdout


PRICES = {"sim-chat": (1000, 2000), "sim-chat-large": (3000, 6000)}
# the prompt's bound and 100 completion tokens (max_tokens)
ESTIMATE = {model: (bound("question number 000") * p + 100 * c) / 1e6 for model, (p, c) in PRICES.items()}


def cost_of(rows: list[dict[str, Any]]) -> float:
    return sum((int(r["prompt_tokens"]) * PRICES[r["model"]][0] + int(r["completion_tokens"]) * PRICES[r["model"]][1])
               / 1e6 for r in rows)  # fmt: skip


def test_the_cost_cap_stops_dispatching_leaves_rows_pending_and_a_rerun_continues(
    tmp_path: Path, sim: BackgroundSimulator
) -> None:
    job = priced_job(tmp_path, sim.url, rows=20)
    # one at a time: each request is dispatched knowing what the earlier ones cost
    result = cli("run", job, "--max-cost", "1", "--concurrency", "1")
    assert result.exit_code == 1
    rows = read_output(tmp_path / "out.csv")
    finished = [r for r in rows if r["status"] != "pending"]
    pending = [r for r in rows if r["status"] == "pending"]
    assert finished and pending and rows[: len(finished)] == finished
    assert len(sim.requests) == len(finished)
    spent = cost_of(finished)
    # it stopped when the next request's estimate, with at most one more reserved (the bound
    # allows for a request taken while another's was reserved), would have passed the cap
    assert spent <= 1 < spent + ESTIMATE[pending[0]["model"]] + max(ESTIMATE.values())
    assert (
        f"stopped at the cost cap: spent {money(spent)} of $1.00 this run, {money(1 - spent)} left, once every answer "
        f"in flight had come: the next request may cost up to {money(ESTIMATE[pending[0]['model']])}; the "
        f"{len(pending)} rows not sent are 'pending'" in result.stderr
    )
    again = cli("run", job)
    assert again.exit_code == 0
    assert len(sim.requests) == 40
    assert all(r["status"] == "ok" for r in read_output(tmp_path / "out.csv"))


def test_the_cost_cap_holds_with_requests_in_flight(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(latency_ms=30)
    job = priced_job(tmp_path, sim.url, rows=20)
    assert cli("run", job, "--max-cost", "2", "--concurrency", "8").exit_code == 1
    rows = [r for r in read_output(tmp_path / "out.csv") if r["status"] != "pending"]
    assert cost_of(rows) <= 2  # estimates are upper bounds (max_tokens): what was in flight never passed the cap


def test_a_small_cap_waits_for_the_answers_in_flight_before_it_is_spent(tmp_path: Path, sim_factory: Any) -> None:
    """Estimates are upper bounds, several times what an answer costs: a request that does not fit
    beside those in flight waits for their answers, and the run stops only when it does not fit
    beside what was spent."""
    sim = sim_factory(latency_ms=40)
    job = priced_job(tmp_path, sim.url, rows=60)
    result = cli("run", job, "--max-cost", "3", "--concurrency", "8")
    assert result.exit_code == 1
    rows = read_output(tmp_path / "out.csv")
    finished = [r for r in rows if r["status"] != "pending"]
    spent = cost_of(finished)
    assert spent <= 3 < spent + max(ESTIMATE.values())  # within one request's bound of the cap
    assert (f"stopped at the cost cap: spent {money(spent)} of $3.00 this run, {money(3 - spent)} left, once every "
            "answer in flight had come: the next request may cost up to $") in result.stderr  # fmt: skip


def test_a_cap_below_the_first_requests_bound_says_to_raise_it(tmp_path: Path, sim: BackgroundSimulator) -> None:
    job = priced_job(tmp_path, sim.url, rows=3)
    result = cli("run", job, "--max-cost", "0.01")
    assert result.exit_code == 1 and not sim.requests
    assert "stopped at the cost cap: nothing was sent, since the first request may cost up to $" in result.stderr
    assert "more than the cap of $0.010; raise the cap to send it" in result.stderr
    assert "nothing to send" not in result.stderr and "run again to continue" not in result.stderr


def test_amounts_that_would_read_alike_are_shown_apart() -> None:
    from batchchat.reports.text import _apart

    assert _apart(0.1301, 0.1349) == ("$0.1301", "$0.1349")
    assert _apart(0.5, 1.25) == ("$0.50", "$1.25")


def test_a_cost_cap_needs_prices(tmp_path: Path, sim: BackgroundSimulator) -> None:
    write_csv(tmp_path / "in.csv", ["prompt"], [["hi"]])
    result = cli("run", "-i", tmp_path / "in.csv", "-m", "m", "--base-url", sim.url, "--max-cost", "1")
    assert result.exit_code == 2 and "--max-cost needs the price of every model" in result.stderr


def test_the_summary_reports_the_actual_cost(tmp_path: Path, sim: BackgroundSimulator) -> None:
    result = cli("run", priced_job(tmp_path, sim.url, rows=3))
    assert f"; cost {money(cost_of(read_output(tmp_path / 'out.csv')))}" in result.stderr


def test_a_cap_that_fits_requests_exactly_takes_them_all(tmp_path: Path, sim: BackgroundSimulator) -> None:
    """0.05 + 0.05 + 0.05 is a hair over 0.15 in floating point: the third request fits all the same."""
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"item {i}"] for i in range(10)])
    result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "m1", "--base-url", sim.url,
                 "--price", "m1=0,10000", "--max-tokens", "5", "--max-cost", "0.15", "--concurrency", "1")  # fmt: skip
    assert result.exit_code == 1
    assert [r["status"] for r in read_output(tmp_path / "out.csv")].count("ok") == 3
    assert "spent $0.15 of $0.15 this run" in result.stderr
