"""Crashes, Ctrl-C, resume, dedup and the lock, with the CLI in a real subprocess."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from batchchat.simulator import synthetic_reply
from tests.helpers import KEY_VARIABLES, cli, read_output, write_csv

ROWS = 240


def body(text: str) -> dict:
    return {"model": "sim-chat", "messages": [{"role": "user", "content": text}]}


def prompts(n: int = ROWS) -> list[str]:
    return [f"durable question {i}" for i in range(n)]


def start(source, output, url, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARIABLES}
    return subprocess.Popen(
        [sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o", str(output), "-m", "sim-chat",
         "--base-url", url, "--concurrency", "8", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def wait_for(server, answered: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while server.stats().get("answered", 0) < answered:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.01)


def check_complete(output, texts) -> None:
    rows = read_output(output)
    assert [r["prompt"] for r in rows] == texts  # one row per input row, in order
    assert all(r["status"] == "ok" for r in rows)
    assert [r["response"] for r in rows] == [synthetic_reply(body(t))[0] for t in texts]  # each its own answer


@pytest.mark.slow
def test_killed_at_random_points_and_resumed_the_table_is_whole_and_little_is_paid_twice(sim_factory, tmp_path):
    server = sim_factory(latency_ms=20, jitter_ms=40, seed=1)
    texts = prompts()
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[t] for t in texts])
    output = tmp_path / "out.parquet"
    kills = sorted(random.Random(7).sample(range(10, ROWS - 20), 3))
    for point in kills:
        process = start(source, output, server.url)
        wait_for(server, point, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
    final = start(source, output, server.url)
    assert final.wait(timeout=120) == 0, final.communicate()[1]
    check_complete(output, texts)
    stats = server.stats()
    assert stats["answered_twice"] <= 8 * len(kills)  # at most what was in flight at each kill
    received = stats["received"]
    again = start(source, output, server.url)  # a finished job, run again
    assert again.wait(timeout=60) == 0
    assert server.stats()["received"] == received  # sends no request at all
    assert "nothing to send" in again.communicate()[1]


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_lets_requests_in_flight_finish_keeps_everything_and_resumes(sim_factory, tmp_path, signal_number):
    server = sim_factory(latency_ms=100)
    texts = prompts(120)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[t] for t in texts])
    output = tmp_path / "out.parquet"
    process = start(source, output, server.url)
    wait_for(server, 20, process)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "stopping: no new requests" in stderr and "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    rows = read_output(output)
    finished = [r for r in rows if r["status"] == "ok"]
    assert len(rows) == 120 and {r["status"] for r in rows} == {"ok", "pending"}
    assert len(finished) == server.stats()["answered"]  # every answer the server gave was kept
    assert f"{len(finished)} of 120 rows finished" in stderr
    # the summary comes as at the end of a run: what was done, tokens, then how to resume
    assert f"stopped: 120 rows: {len(finished)} ok, 0 errors, {120 - len(finished)} pending" in stderr
    assert "tokens this run:" in stderr and stderr.index("tokens this run:") < stderr.index("to resume")
    # a pending row has no answer, but says which model it waits for
    assert all(r["response"] is None and r["model"] == "sim-chat" for r in rows if r["status"] == "pending")
    resumed = start(source, output, server.url)
    assert resumed.wait(timeout=60) == 0, resumed.communicate()[1]
    check_complete(output, texts)
    assert server.stats()["answered_twice"] == 0


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_journal(sim_factory, tmp_path):
    server = sim_factory(latency_ms=3000)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"], ["b"], ["[sim:delay_ms=0] quick"]])
    output = tmp_path / "out.parquet"
    process = start(source, output, server.url)
    deadline = time.monotonic() + 30
    while server.stats().get("received", 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130 and time.monotonic() - started < 2.5  # did not wait for the 3 s answers
    assert "stopped at once; the output was not written" in stderr
    assert not output.exists()


def test_a_changed_prompt_is_sent_again_and_nothing_else_is(sim, tmp_path):
    texts = prompts(20)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[t] for t in texts])
    output = tmp_path / "out.parquet"
    assert cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url).exit_code == 0
    texts[7] = "a question edited since"
    write_csv(source, ["prompt"], [[t] for t in texts])
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url)
    assert result.exit_code == 0
    assert "19 rows answered by an earlier run (journal); 1 request to send" in result.stderr
    assert [r["body"]["messages"][-1]["content"] for r in sim.requests[20:]] == ["a question edited since"]
    check_complete(output, texts)


def test_retry_errors_and_restart(sim, tmp_path):
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["fine"], ["[sim:fault=500,times=1] flaky"]])
    output = tmp_path / "out.parquet"
    args = ("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--max-attempts", "1")
    assert cli(*args).exit_code == 1  # the flaky row failed its only attempt
    assert cli(*args).exit_code == 1 and len(sim.requests) == 2  # its error is kept, not sent again
    retried = cli(*args, "--retry-errors")
    assert retried.exit_code == 0 and len(sim.requests) == 3
    assert [r["status"] for r in read_output(output)] == ["ok", "ok"]
    restarted = cli(*args, "--restart")
    assert restarted.exit_code == 0 and len(sim.requests) == 5  # everything again


def test_identical_requests_are_sent_once_unless_no_dedup(sim, tmp_path):
    texts = ["same question"] * 5 + ["other"] + ["same question"] * 2
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[t] for t in texts])
    output = tmp_path / "out.parquet"
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url)
    assert result.exit_code == 0 and "6 rows share a request with an identical row; 2 requests to send" in result.stderr
    assert len(sim.requests) == 2
    check_complete(output, texts)
    sampled = tmp_path / "sampled.parquet"
    args = ("run", "-i", source, "-o", sampled, "-m", "sim-chat", "--base-url", sim.url, "--no-dedup")
    assert cli(*args).exit_code == 0
    assert len(sim.requests) == 2 + 8  # each row sent
    assert cli(*args).exit_code == 0 and len(sim.requests) == 10  # and each one resumable


def test_a_second_run_on_the_same_output_is_refused_while_the_first_lives(sim_factory, tmp_path):
    server = sim_factory(latency_ms=200)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[t] for t in prompts(200)])
    output = tmp_path / "out.parquet"
    first = start(source, output, server.url)
    try:
        wait_for(server, 1, first)
        second = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", server.url)
        assert second.exit_code == 2
        assert f"another batchchat run is writing out.parquet (pid {first.pid} on" in second.stderr
    finally:
        first.kill()
        first.wait()
    # the killed run's lock is stale: the next run takes it over and finishes the job
    assert cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", server.url).exit_code == 0


def test_a_resumed_output_is_the_same_as_an_uninterrupted_one(sim_factory, tmp_path):
    server = sim_factory(latency_ms=30, jitter_ms=30)
    texts = [*prompts(150), "", "durable question 3"]  # an empty prompt and a duplicate too
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[t] for t in texts])
    straight = tmp_path / "straight.parquet"
    assert cli("run", "-i", source, "-o", straight, "-m", "sim-chat", "--base-url", server.url).exit_code == 1
    broken = tmp_path / "broken.parquet"
    process = start(source, broken, server.url)
    wait_for(server, 150 + 40, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert start(source, broken, server.url).wait(timeout=60) == 1  # the empty prompt is an error row
    same = (
        "prompt",
        "response",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "status",
        "error_type",
        "model",
    )
    assert [{k: r[k] for k in same} for r in read_output(broken)] == [
        {k: r[k] for k in same} for r in read_output(straight)
    ]


def test_requests_still_in_flight_when_the_grace_period_ends_are_cancelled_and_left_pending(sim_factory, tmp_path):
    server = sim_factory(latency_ms=4000)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[t] for t in prompts(20)])
    output = tmp_path / "out.parquet"
    process = start(source, output, server.url, "--grace", "0.5")
    deadline = time.monotonic() + 30
    while server.stats().get("received", 0) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    stopped_at = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130 and time.monotonic() - stopped_at < 3.5  # not the 4 s the answers take
    assert "those in flight have 0.5 s to finish" in stderr
    assert {r["status"] for r in read_output(output)} == {"pending"}
