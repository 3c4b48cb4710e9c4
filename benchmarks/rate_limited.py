"""batchchat against a rate-limited endpoint: time to finish and 429s, with and without --rpm.

Starts `batchchat serve --rpm 1200 --latency-ms 50` (a fresh one per run, so each starts with a
full bucket), sends 300 rows at --concurrency 32 through the real CLI, and reads the server's
counters. The ideal is 300 requests at 20/s = 15 s.

    python benchmarks/rate_limited.py [--rows 300] [--rpm 1200] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def start_server(rpm: int, latency_ms: int) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "batchchat", "serve", "--port", "0", "--rpm", str(rpm), "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    return server, line.split(" on ")[1].split(" ")[0]


def run_case(label: str, rows: int, rpm: int, concurrency: int, extra: list[str]) -> dict[str, float | str]:
    server, url = start_server(rpm, 50)
    try:
        with tempfile.TemporaryDirectory() as folder:
            source = Path(folder) / "prompts.csv"
            source.write_text("prompt\n" + "".join(f"question {i}\n" for i in range(rows)), encoding="utf-8")
            started = time.perf_counter()
            result = subprocess.run(
                [sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o", str(Path(folder) / "out.parquet"),
                 "-m", "sim-chat", "--base-url", url, "--concurrency", str(concurrency), "--max-attempts", "10",
                 *extra],
                capture_output=True, text=True,
            )  # fmt: skip
            wall = time.perf_counter() - started
        with urllib.request.urlopen(url.removesuffix("/v1") + "/sim/stats") as response:
            stats = json.load(response)
    finally:
        server.terminate()
        server.wait()
    ideal = rows / (rpm / 60)
    job_s = float(
        re.search(r"this run: [\d,]+ requests finished in ([\d.]+) s", result.stderr).group(1)
    )  # its own timer
    received = stats.get("received", 0)
    limited = stats.get("rate_limited", 0)
    return {
        "case": label,
        "exit": result.returncode,
        "wall_s": wall,
        "job_s": job_s,
        "vs_ideal": job_s / ideal,
        "requests": received,
        "answered_429": limited,
        "share_429": limited / received if received else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--rpm", type=int, default=1200)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    ideal = args.rows / (args.rpm / 60)
    print(f"{args.rows} rows, server limit {args.rpm} rpm, latency 50 ms, concurrency {args.concurrency}; "
          f"ideal {ideal:.1f} s. job s: first request to last answer (the run's summary); wall s: the whole "
          "command, start-up included")  # fmt: skip
    print(f"{'case':<22}{'exit':>5}{'job s':>8}{'/ideal':>8}{'wall s':>8}{'requests':>10}{'429s':>7}{'429 share':>11}")
    for label, extra in (("--rpm " + str(args.rpm), ["--rpm", str(args.rpm)]), ("adaptive (no --rpm)", [])):
        r = run_case(label, args.rows, args.rpm, args.concurrency, extra)
        print(f"{r['case']:<22}{r['exit']:>5}{r['job_s']:>8.2f}{r['vs_ideal']:>8.2f}{r['wall_s']:>8.2f}{r['requests']:>10}"
              f"{r['answered_429']:>7}{r['share_429']:>11.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
