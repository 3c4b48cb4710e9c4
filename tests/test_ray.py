"""The Ray engine on a local Ray (``pytest -m ray`` runs these alone): the same table as a local
run, one shared rate limit for every worker, a kill of the driver paying nothing twice, a bad key
stopping the whole job, and ``batchchat.ray.chat`` over a dataset."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .helpers import cli, read_output, write_csv

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
TIMING = ("latency_s", "ttft_s", "request_id")


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Any:
    """One Ray for these tests: 4 logical CPUs (workers wait on the network, not the CPU)."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    if started:
        ray.shutdown()


def without_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def prompts(tmp_path: Path, n: int, repeat_every: int = 0) -> Path:
    rows = [[f"question {i % repeat_every if repeat_every else i}"] for i in range(n)]
    return write_csv(tmp_path / "in.csv", ["prompt"], rows)


def test_a_ray_run_writes_the_table_a_local_run_writes(tmp_path: Path, sim: Any) -> None:
    source = prompts(tmp_path, 60, repeat_every=45)  # repeats across the workers' chunks: asked once
    common = ("-i", source, "-m", "sim-chat", "-m", "sim-chat-large", "--base-url", sim.url)
    local = cli("run", *common, "-o", tmp_path / "local.csv")
    assert local.exit_code == 0, local.stderr
    before = sim.stats()["answered"]
    on_ray = cli("run", *common, "-o", tmp_path / "ray.csv", "--ray", "--ray-workers", "2")
    assert on_ray.exit_code == 0, on_ray.stderr
    assert without_timing(read_output(tmp_path / "ray.csv")) == without_timing(read_output(tmp_path / "local.csv"))
    assert sim.stats()["answered"] - before == 90  # 45 distinct prompts x 2 models, each asked once
    parts = list((tmp_path / "ray.csv.journal.parts").glob("*.journal"))
    assert len(parts) == 2  # one part per worker
    again = cli("run", *common, "-o", tmp_path / "ray.csv", "--ray", "--ray-workers", "2")
    assert again.exit_code == 0 and "nothing to send" in again.stderr  # resumed from the parts
    plain = cli("run", *common, "-o", tmp_path / "ray.csv")  # a local run reads them too
    assert plain.exit_code == 0 and "nothing to send" in plain.stderr


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 4])
def test_a_shared_rpm_is_never_exceeded_whatever_the_workers(tmp_path: Path, sim_factory: Any, workers: int) -> None:
    sim = sim_factory(rpm=1200)
    source = prompts(tmp_path, 100)
    result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "sim-chat", "--base-url", sim.url, "--ray",
                 "--ray-workers", str(workers), "--rpm", "1200", "--concurrency", "16")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    stats = sim.stats()
    assert stats["answered"] == 100
    assert stats.get("rate_limited", 0) <= 1  # at most 1% of requests answered 429


@pytest.mark.slow
def test_a_429_storm_cools_every_worker(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(rpm=600, latency_ms=20)
    source = prompts(tmp_path, 150)
    result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "sim-chat", "--base-url", sim.url, "--ray",
                 "--ray-workers", "4", "--concurrency", "16")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    stats = sim.stats()
    limited = stats.get("rate_limited", 0)
    assert stats["answered"] == 150 and limited / stats["received"] < 0.2, stats  # the first 429 slowed them all


def test_the_shared_throttles_changes_of_the_rate_reach_the_summary(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(rpm=60_000, rpm_later=3000, rpm_change_s=0.5, latency_ms=10)  # the stated limit falls
    result = cli("run", "-i", prompts(tmp_path, 300), "-o", tmp_path / "out.csv", "-m", "sim-chat", "--base-url",
                 sim.url, "--ray", "--ray-workers", "2", "--concurrency", "8")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    told = re.search(r"^rate: at \d\d:\d\d:\d\d UTC from [\d,.]+/s to 50\.0/s: the server's headers state 3,000 "
                     r"requests/min, 60,000 before", result.stderr, re.MULTILINE)  # fmt: skip
    assert told is not None, result.stderr


def test_a_bad_key_stops_the_whole_job_with_exit_2(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(api_key="the-right-key")
    source = prompts(tmp_path, 40)
    result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "sim-chat", "--base-url", sim.url, "--ray",
                 "--ray-workers", "2")  # fmt: skip
    assert result.exit_code == 2
    assert f"stopped: {sim.url} wants an API key, and none was sent" in result.stderr
    assert sim.stats()["received"] <= 16  # it stopped early, not after every row


@pytest.mark.slow
def test_killing_the_driver_mid_run_pays_again_at_most_what_was_in_flight(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(latency_ms=300)
    source = prompts(tmp_path, 200)
    output = tmp_path / "out.csv"
    args = ["run", "-i", str(source), "-o", str(output), "-m", "sim-chat", "--base-url", sim.url, "--ray", "auto",
            "--ray-workers", "2", "--concurrency", "8", "-q"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen([sys.executable, "-m", "batchchat", *args], env=env)
    deadline = time.monotonic() + 60
    while sim.stats().get("answered", 0) < 40:
        assert time.monotonic() < deadline and driver.poll() is None
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    resumed = cli(*args)
    assert resumed.exit_code == 0, resumed.stderr
    assert [r["status"] for r in read_output(output)] == ["ok"] * 200
    assert sim.stats()["answered_twice"] <= 8  # no more than the concurrency: those in flight


@pytest.mark.slow
def test_chat_adds_the_output_columns_to_a_dataset_and_resumes_from_its_journal(tmp_path: Path, sim: Any) -> None:
    import pandas as pd

    import batchchat
    import batchchat.ray

    # 4 blocks of 20: the second asks 10 prompts of its own and 10 the first claimed (a block
    # whose requests the plan kept sent those too, and paid for them twice)
    frame = pd.DataFrame({"prompt": [f"question {i % 30}" for i in range(80)], "n": range(80)})
    local = batchchat.run_frame(frame, model="sim-chat", base_url=sim.url)
    answered = sim.stats()["answered"]
    ds = ray.data.from_pandas(frame).repartition(4)
    journal = tmp_path / "parts"
    out = batchchat.ray.chat(ds, model="sim-chat", base_url=sim.url, journal=journal, ray_workers=2).to_pandas()
    out = out.sort_values("n").reset_index(drop=True)
    assert list(out["response"]) == list(local["response"]) and set(out["status"]) == {"ok"}
    assert sim.stats()["answered"] - answered == 30  # each distinct prompt once, across the blocks
    again = batchchat.ray.chat(ds, model="sim-chat", base_url=sim.url, journal=journal, ray_workers=2).to_pandas()
    assert set(again["status"]) == {"ok"} and sim.stats()["answered"] - answered == 30  # nothing asked again
