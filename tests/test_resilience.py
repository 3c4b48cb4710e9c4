"""Whole runs against a misbehaving simulator over real HTTP: faults, rate limits, a wrong key."""

import pytest

import batchchat
from batchchat.simulator import synthetic_reply
from tests.helpers import cli, read_output, write_csv


def body(text: str) -> dict:
    return {"model": "sim-chat", "messages": [{"role": "user", "content": text}]}


@pytest.mark.slow
def test_a_quarter_of_requests_failing_still_ends_with_every_row_ok_and_nothing_paid_twice(sim_factory, tmp_path):
    server = sim_factory(fault_rate=0.25, seed=11)
    prompts = [f"label row {i}" for i in range(400)]
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[p] for p in prompts])
    output = tmp_path / "out.parquet"
    result = batchchat.run(input=source, output=output, model="sim-chat", base_url=server.url,
                           max_attempts=10, concurrency=32)  # fmt: skip
    stats = server.stats()
    assert result.exit_code == 0 and result.summary.ok == 400
    assert stats["faults"] > 60  # the faults really happened
    assert stats["answered"] == 400 and stats["answered_twice"] == 0  # no answered request was sent again
    rows = read_output(output)
    assert [r["response"] for r in rows] == [synthetic_reply(body(p))[0] for p in prompts]
    assert result.summary.retries == stats["faults"]


def test_a_wrong_key_stops_the_job_with_exit_2_after_at_most_two_requests_per_slot(sim_factory, tmp_path, monkeypatch):
    server = sim_factory(api_key="the-right-key")
    monkeypatch.setenv("TOGETHER_API_KEY", "a-wrong-key")
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"q{i}"] for i in range(500)])
    output = tmp_path / "out.parquet"
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", server.url, "--concurrency", "8")
    assert result.exit_code == 2
    assert (
        "refused the API key (HTTP 401: Invalid API key provided); set a valid key in TOGETHER_API_KEY" in result.stderr
    )
    assert "no row finished, so nothing was written" in result.stderr
    assert server.stats()["received"] <= 2 * 8
    assert not output.exists()


def test_running_out_of_credit_midway_keeps_the_finished_rows(sim_factory, tmp_path):
    server = sim_factory()
    rows = [[f"q{i}"] for i in range(30)] + [["[sim:fault=402] no money"]] + [[f"r{i}"] for i in range(200)]
    source = write_csv(tmp_path / "in.csv", ["prompt"], rows)
    output = tmp_path / "out.parquet"
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", server.url, "--concurrency", "1")
    assert result.exit_code == 2
    assert "says the account has no credit (HTTP 402: simulated: credit limit reached); add credit" in result.stderr
    table = read_output(output)
    assert [r["status"] for r in table[:30]] == ["ok"] * 30
    assert {r["status"] for r in table[30:]} == {"pending"}
    assert "30 of 231 rows finished" in result.stderr


def test_rpm_keeps_a_rate_limited_server_from_answering_429(sim_factory, tmp_path):
    server = sim_factory(rpm=1200, latency_ms=20)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"q{i}"] for i in range(60)])
    result = cli(
        "run", "-i", source, "-m", "sim-chat", "--base-url", server.url, "--concurrency", "32", "--rpm", "1200"
    )
    assert result.exit_code == 0
    assert server.stats().get("rate_limited", 0) <= 1
    assert "60 sent, " in result.stderr


def test_without_rpm_the_run_adapts_to_the_servers_limit(sim_factory, tmp_path):
    server = sim_factory(rpm=1200, latency_ms=20)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"q{i}"] for i in range(60)])
    result = cli("run", "-i", source, "-m", "sim-chat", "--base-url", server.url, "--concurrency", "32")
    stats = server.stats()
    assert result.exit_code == 0 and stats["answered"] == 60
    assert stats.get("rate_limited", 0) <= 0.2 * stats["received"]
