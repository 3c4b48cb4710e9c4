"""The Ray engine's scaling: rows/s with 1, 2 and 4 workers, next to a local run, in one session.

Each run goes through the CLI (``batchchat run --ray --ray-workers W``, a Ray started for the
run) against a fresh ``batchchat serve``. Rows/s is counted by the server, first request to last
answer, so Ray's start-up does not count.

- Latency-bound: the simulator answers after 200 ms with no limit, and each worker gets 16 places
  in flight (``--concurrency 16 x W``): the work waits on the network, so rows/s should grow with
  the workers until the machine's cores run out. The peer is a local run at concurrency 16.
- Limited: the simulator allows 1,200 requests a minute and ``--rpm 1200`` says so: the total
  stays at the limit (20/s) whatever the workers, and nothing is answered 429.

    pip install -e '.[ray]' && python benchmarks/ray_scaling.py [--rows 800]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from throughput import simulator_stats, start_simulator, timed, write_prompts


def measure(source: Path, folder: Path, server_options: list[str], flags: list[str]) -> dict[str, float]:
    server, url = start_simulator(*server_options)
    try:
        output = folder / f"out-{time.monotonic_ns()}.parquet"
        wall, code, _, _, errors = timed([sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o", str(output),
                                       "-m", "sim-chat", "--base-url", url, "-q", *flags])  # fmt: skip
        stats = simulator_stats(url)
    finally:
        server.terminate()
        server.wait()
    if code != 0:
        print(f"<!-- {' '.join(flags)} exited {code}: {errors.strip()[-300:]} -->", file=sys.stderr)
    return {"rows_s": stats.get("answered_per_s") or 0.0, "wall_s": wall, "limited": stats.get("rate_limited", 0),
            "answered": stats.get("answered", 0)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=800)
    args = parser.parse_args()
    print(f"# batchchat on Ray, {time.strftime('%Y-%m-%d %H:%M')}, {platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} cores, {args.rows:,} rows\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        source = folder / "prompts.parquet"
        write_prompts(source, args.rows)
        print("## Latency-bound: 200 ms an answer, no limit, 16 in flight per worker\n")
        print("| run | rows/s | vs local | wall s |")
        print("|---|---|---|---|")
        local = measure(source, folder, ["--latency-ms", "200"], ["--concurrency", "16"])
        print(f"| local, concurrency 16 (peer) | {local['rows_s']:.1f} | 1.00 | {local['wall_s']:.1f} |")
        for workers in (1, 2, 4):
            r = measure(source, folder, ["--latency-ms", "200"],
                        ["--ray", "--ray-workers", str(workers), "--concurrency", str(16 * workers)])  # fmt: skip
            print(f"| Ray, {workers} worker{'s' if workers > 1 else ''} | {r['rows_s']:.1f} | "
                  f"{r['rows_s'] / local['rows_s']:.2f} | {r['wall_s']:.1f} |")  # fmt: skip
        print("\n## Limited: the server allows 1,200 requests/min, and --rpm 1200\n")
        print("| run | rows/s | of the limit (20/s) | answered 429 |")
        print("|---|---|---|---|")
        for workers in (1, 2, 4):
            r = measure(source, folder, ["--rpm", "1200"],
                        ["--ray", "--ray-workers", str(workers), "--concurrency", "64", "--rpm", "1200"])  # fmt: skip
            print(f"| Ray, {workers} worker{'s' if workers > 1 else ''} | {r['rows_s']:.1f} | {r['rows_s'] / 20:.2f} | "
                  f"{r['limited']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
