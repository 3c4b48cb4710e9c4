"""batchchat against rate limits as providers really behave, through the real CLI and a fresh
`batchchat serve` per run (so each starts with a full bucket), side by side with the clean run
and the ideal time, over several seeds (min, median, max):

- an honest limit (`--rpm 1200`, stated in headers), with and without `--rpm` given;
- sporadic refusals: a share of requests answered 429 (retry-after 1) or 503 whatever the rate;
- a limit that moves: 600 requests/min rising to 1,200 (or falling from 1,200 to 600) after 10 s,
  stated in headers or not;
- a local server with N slots (one more stream cuts the oldest), against `--concurrency N`.

"job s" is the run's own timer (first request to last answer); ratios are to the clean run of
the same size measured in the same session (the median of its seeds), or to the ideal.

    python benchmarks/rate_limited.py [--seeds 3] [--quick] [--cases honest,sporadic,moving,slots]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def start_server(*options: str) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen([sys.executable, "-m", "batchchat", "serve", "--port", "0", *options],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert server.stdout is not None
    line = server.stdout.readline()
    return server, line.split(" on ")[1].split(" ")[0]


def run_job(rows: int, server_options: list[str], client_options: list[str]) -> dict[str, float]:
    """One run: the job's own time, what the server saw, and the summary's rate and concurrency lines."""
    server, url = start_server(*server_options)
    try:
        with tempfile.TemporaryDirectory() as folder:
            source = Path(folder) / "prompts.csv"
            source.write_text("prompt\n" + "".join(f"question {i}\n" for i in range(rows)), encoding="utf-8")
            started = time.perf_counter()
            result = subprocess.run(
                [sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o", str(Path(folder) / "out.parquet"),
                 "-m", "sim-chat", "--base-url", url, "--max-attempts", "10", *client_options],
                capture_output=True, text=True,
            )  # fmt: skip
            wall = time.perf_counter() - started
        with urllib.request.urlopen(url.removesuffix("/v1") + "/sim/stats") as response:
            stats = json.load(response)
    finally:
        server.terminate()
        server.wait()
    if result.returncode != 0:
        raise SystemExit(f"the run failed ({result.returncode}):\n{result.stderr}")
    found = re.search(r"this run: [\d,]+ requests finished in ([\d.]+) s", result.stderr)
    assert found is not None, result.stderr
    received = stats.get("received", 0)
    return {"job_s": float(found.group(1)), "wall_s": wall, "requests": received,
            "answered_429": stats.get("status:429", 0), "answered_503": stats.get("status:503", 0),
            "cut_streams": stats.get("streams_cut", 0), "rows": rows}  # fmt: skip


def run_case(label: str, rows: int, rpm: int, concurrency: int, extra: list[str]) -> dict[str, float | str]:
    """The honest limit (`throughput.py` reads this too): 50 ms answers, `--rpm` on the server."""
    r = run_job(rows, ["--rpm", str(rpm), "--latency-ms", "50"], ["--concurrency", str(concurrency), *extra])
    ideal = rows / (rpm / 60)
    return {"case": label, "exit": 0, "wall_s": r["wall_s"], "job_s": r["job_s"], "vs_ideal": r["job_s"] / ideal,
            "requests": r["requests"], "answered_429": r["answered_429"],
            "share_429": r["answered_429"] / r["requests"] if r["requests"] else 0.0}  # fmt: skip


def spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def sporadic(seeds: list[int], sizes: list[int]) -> None:
    print("\n## Refusals no rate causes (200 ms answers, --concurrency 16)\n")
    print("| rows | case | job s (min / median / max) | vs clean (min / median / max) | 429s | 503s |")
    print("|---|---|---|---|---|---|")
    base = ["--latency-ms", "200"]
    for rows in sizes:
        clean = [run_job(rows, [*base, "--seed", str(s)], ["--concurrency", "16"])["job_s"] for s in seeds]
        middle = statistics.median(clean)
        print(f"| {rows:,} | clean | {spread(clean)} | 1.00 | 0 | 0 |", flush=True)
        for label, option in (("5% 429", "--share-429=0.05"), ("15% 429", "--share-429=0.15"),
                              ("5% 503", "--share-503=0.05"), ("15% 503", "--share-503=0.15")):  # fmt: skip
            runs = [run_job(rows, [*base, option, "--seed", str(s)], ["--concurrency", "16"]) for s in seeds]
            times = [r["job_s"] for r in runs]
            print(f"| {rows:,} | {label} | {spread(times)} | {spread([t / middle for t in times])} | "
                  f"{sum(r['answered_429'] for r in runs) // len(runs):,} | "
                  f"{sum(r['answered_503'] for r in runs) // len(runs):,} |", flush=True)  # fmt: skip


def honest(rows: int) -> None:
    print(f"\n## An honest limit (server 1,200 requests/min in headers, 50 ms answers, {rows} rows, --concurrency 32)\n")
    print(f"Ideal: {rows / 20:.1f} s.\n")
    print("| case | job s | vs ideal | requests | answered 429 |")
    print("|---|---|---|---|---|")
    for label, extra in (("--rpm 1200", ["--rpm", "1200"]), ("adaptive (no --rpm)", [])):
        r = run_case(label, rows, 1200, 32, extra)
        print(f"| {r['case']} | {r['job_s']:.2f} | {r['vs_ideal']:.2f} | {r['requests']} | "
              f"{r['answered_429']} ({r['share_429']:.1%}) |", flush=True)  # fmt: skip


def moving(rows: int) -> None:
    print(f"\n## Limits that move after 10 s ({rows} rows, 50 ms answers, --concurrency 32)\n")
    print("| limit | job s | ideal s | vs ideal | requests | answered 429 |")
    print("|---|---|---|---|---|---|")
    for label, before, after in (("rises 600 -> 1,200/min", 600, 1200), ("falls 1,200 -> 600/min", 1200, 600)):
        first = min(rows, before / 60 * 10)  # rows the first 10 s allow
        ideal = first / (before / 60) + (rows - first) / (after / 60)
        r = run_job(rows, ["--rpm", str(before), "--rpm-later", str(after), "--rpm-change-s", "10",
                           "--latency-ms", "50"], ["--concurrency", "32"])  # fmt: skip
        print(f"| {label} | {r['job_s']:.2f} | {ideal:.1f} | {r['job_s'] / ideal:.2f} | {r['requests']:,} | "
              f"{r['answered_429']:,} |", flush=True)  # fmt: skip


def slots(rows: int) -> None:
    print(f"\n## A local server with N slots (streams, 20 ms to the first token, 2,000 tokens/s, {rows} rows)\n")
    print("| slots | --concurrency | job s | vs told N | requests | cut streams |")
    print("|---|---|---|---|---|---|")
    for n in (1, 2, 4):
        server = ["--slots", str(n), "--latency-ms", "20", "--tokens-per-s", "2000"]
        told = run_job(rows, server, ["--concurrency", str(n), "--stream"])
        for concurrency in (n, 16):
            r = told if concurrency == n else run_job(rows, server, ["--concurrency", str(concurrency), "--stream"])
            print(f"| {n} | {concurrency} | {r['job_s']:.2f} | {r['job_s'] / told['job_s']:.2f} | {r['requests']:,} | "
                  f"{r['cut_streams']:,} |", flush=True)  # fmt: skip
    r = run_job(8, ["--slots", "1", "--latency-ms", "20", "--tokens-per-s", "2000"], ["--concurrency", "4", "--stream"])
    print(f"\n8 streamed rows at --concurrency 4 on a one-slot server: {r['requests']} requests, "
          f"{r['cut_streams']} cut streams.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per sporadic case")
    parser.add_argument("--quick", action="store_true", help="200 rows only, one seed, small moving and slot runs")
    parser.add_argument("--rows", type=int, default=300, help="rows of the honest-limit case")
    parser.add_argument("--cases", default="honest,sporadic,moving,slots", help="which, comma-separated")
    args = parser.parse_args()
    cases = set(args.cases.split(","))
    seeds = list(range(1 if args.quick else args.seeds))
    if "honest" in cases:
        honest(args.rows)
    if "sporadic" in cases:
        sporadic(seeds, [200] if args.quick else [200, 2000])
    if "moving" in cases:
        moving(300 if args.quick else 600)
    if "slots" in cases:
        slots(40 if args.quick else 1000)


if __name__ == "__main__":
    main()
