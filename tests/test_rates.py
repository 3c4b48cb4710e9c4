"""Rate limits as providers really behave, through the CLI against the simulator on loopback:
refusals no rate causes, limits that move, servers with a few slots."""

import re
from pathlib import Path
from typing import Any

from .helpers import cli, read_output, write_csv


def prompts(tmp_path: Path, rows: int) -> Path:
    return write_csv(tmp_path / "in.csv", ["prompt"], [[f"question {i}: what about {i}?"] for i in range(rows)])


def run_all_ok(tmp_path: Path, url: str, rows: int, *options: str) -> Any:
    """A run of ``rows`` prompts against the simulator at ``url``, checked to end with every row ok."""
    output = tmp_path / "out.parquet"
    result = cli("run", "-i", prompts(tmp_path, rows), "-o", output, "--base-url", url, *options)
    assert result.exit_code == 0, result.output
    assert [row["status"] for row in read_output(output)] == ["ok"] * rows
    return result


def test_refusals_no_rate_causes_are_retried_alone_and_every_row_ends_ok(sim_factory: Any, tmp_path: Path) -> None:
    server = sim_factory(share_429=0.15, share_503=0.05, latency_ms=20, seed=5)
    result = run_all_ok(tmp_path, server.url, 150, "-m", "sim-chat", "--concurrency", "16", "--max-attempts", "8")
    stats = server.stats()
    assert stats["status:429"] > 10 and stats["status:503"] > 2
    assert stats["answered_twice"] == 0
    assert f"{stats['status:429']:,} answered 429, {stats['status:503']:,} answered 503, " in result.output
    # any cut made for them was undone: their share did not follow the rate
    told = re.search(r"^rate: (.*)$", result.output, re.MULTILINE)
    assert told is None or "undone" in told.group(1), result.output


def test_a_limit_that_falls_mid_run_is_followed_and_the_summary_and_progress_say_when_and_why(
        sim_factory: Any, tmp_path: Path) -> None:  # fmt: skip
    server = sim_factory(rpm=60_000, rpm_later=6000, rpm_change_s=0.1, latency_ms=10)
    result = run_all_ok(tmp_path, server.url, 400, "-m", "sim-chat", "--concurrency", "16", "--progress-every", "0.5")
    told = re.search(r"^rate: (.*)$", result.output, re.MULTILINE)
    assert told is not None, result.output
    assert re.match(r"at \d\d:\d\d:\d\d UTC from 1,000\.0/s to 100\.0/s: the server's headers state 6,000 "
                    r"requests/min, 60,000 before", told.group(1)), told.group(1)  # fmt: skip
    assert told.group(1).endswith("allowed 100.0/s at the end")
    progress = [line for line in result.output.splitlines() if line.startswith("batchchat: progress:")]
    told_there = [line for line in progress if "; rate changed at " in line]
    assert len(told_there) == 1, progress  # the change, told once, on the line after it
    assert re.search(r"\(the throttle allows 100\.0/s\).*; rate changed at \d\d:\d\d:\d\d UTC from", told_there[0])
    assert server.stats().get("rate_limited", 0) <= 16  # a burst at the change at most, not a storm


def test_a_server_with_two_slots_is_sent_two_at_a_time(sim_factory: Any, tmp_path: Path) -> None:
    """llama.cpp's server with --parallel 2: a third stream arriving cuts the oldest short."""
    server = sim_factory(slots=2, latency_ms=20, tokens_per_s=2000)
    result = run_all_ok(tmp_path, server.url, 40, "-m", "local", "--stream", "--concurrency", "8", "--max-attempts", "6",
                        "--progress-every", "0.1")  # fmt: skip
    stats = server.stats()
    assert 1 <= stats["streams_cut"] <= 12  # a burst at first, not one per row
    assert "concurrency lowered: the server cut" in result.output and "ran at 2" in result.output, result.output
    progress = [line for line in result.output.splitlines() if line.startswith("batchchat: progress:")]
    assert any("; concurrency lowered: the server cut" in line for line in progress), progress


def test_every_change_of_the_rate_says_why_and_the_last_agrees_with_the_rate_at_the_end(
        sim_factory: Any, tmp_path: Path) -> None:  # fmt: skip
    """A limit stated in headers that halves while 32 requests are in flight: a burst of 429s
    over it, each change told with its reason, none contradicting the next."""
    server = sim_factory(rpm=2400, rpm_later=1200, rpm_change_s=1.0, latency_ms=50)
    result = run_all_ok(tmp_path, server.url, 100, "-m", "sim-chat", "--concurrency", "32")
    told = re.search(r"^rate: (.*)$", result.output, re.MULTILINE)
    assert told is not None, result.output
    changes = told.group(1).split("; ")
    allowed = re.fullmatch(r"allowed ([\d,.]+/s|no bound but concurrency) at the end", changes.pop())
    assert allowed is not None, told.group(1)
    for change in changes:
        found = re.fullmatch(r"at \d\d:\d\d:\d\d UTC from (.+?) to (.+?): (\w.+)", change)
        assert found is not None and "  " not in change, change
    assert re.fullmatch(r".* to (.+?): .*", changes[-1]).group(1) == allowed.group(1)  # type: ignore[union-attr]
