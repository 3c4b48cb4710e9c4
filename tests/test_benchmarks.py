"""The benchmark scripts still run (tiny sizes; speed is measured in benchmarks/, never asserted here)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_throughput_benchmark_runs_end_to_end():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--rows", "40", "--repeat", "1", "--no-sdks",
         "--no-rate-limited"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for mode in ("json", "stream"):
        assert any(line.startswith(f"| batchchat (CLI) | {mode} |") and line.endswith("| yes |") for line in lines)
        for bare in ("bare aiohttp loop, Parquet in and out", "bare aiohttp loop, no files"):
            assert any(line.startswith(f"| {bare} | {mode} |") and line.endswith("| yes |") for line in lines)
    assert "`batchchat --help`:" in result.stdout


@pytest.mark.slow
def test_the_memory_benchmark_runs_end_to_end():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--rows", "50", "--resume-rows", "60"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("| this | 50 |") and line.endswith("| 50 | 0 |") for line in lines)
    assert any(line.startswith("| 60 |") and line.endswith("| 0 | 0 |") for line in lines)  # the rerun sent nothing


@pytest.mark.slow
def test_the_rate_limited_benchmark_runs_end_to_end():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "rate_limited.py"), "--rows", "30", "--quick",
                             "--cases", "honest,sporadic"], capture_output=True, text=True, timeout=180)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("| --rpm 1200 |") for line in lines)
    assert any(line.startswith("| adaptive (no --rpm) |") for line in lines)
    assert any(line.startswith("| 200 | 15% 429 |") for line in lines)
