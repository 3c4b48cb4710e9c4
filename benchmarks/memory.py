"""batchchat's peak memory on large jobs: real runs, and the path to ten million rows.

1. Real runs: `batchchat run` on N distinct prompts against `fast_server.py`, peak RSS of the
   process (wait4), with the output's size.
2. The path to ten million rows, without sending ten million requests: an input of that many
   rows whose journal already holds every answer, as a rerun of a finished job finds it. Its
   journal is written through batchchat's own `Journal`, with the keys its own planning gives.
   `batchchat run` then plans every row (the keys, the journal's index of every record, which
   row is the first of its request), sends nothing, and assembles and writes the whole output:
   everything a fresh run holds but the requests in flight. `--dry-run` is measured too.

    python benchmarks/memory.py                       # 100,000 and 1,000,000 rows; 10,000,000 resumed
    python benchmarks/memory.py --compare HEAD~3       # the same real runs at another commit too
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from throughput import checkout, server_stats, start_server, timed, write_prompts  # noqa: E402


def real_run(rows: int, source: Path, folder: Path, concurrency: int, env: dict[str, str] | None = None) -> dict:
    output = folder / f"answers-{rows}.parquet"
    server, url = start_server()
    try:
        wall, code, rss, _, errors = timed([sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o",
                                              str(output), "-m", "m", "--base-url", url, "--concurrency",
                                              str(concurrency), "-q"], env, folder)  # fmt: skip
        answered = server_stats(url)["answered"]
    finally:
        server.terminate()
        server.wait()
    if code != 0:
        print(f"<!-- run of {rows:,} rows exited {code}: {errors.strip()[-300:]} -->", file=sys.stderr)
    size = output.stat().st_size / (1 << 20) if output.exists() else 0.0
    for leftover in folder.glob(f"answers-{rows}.parquet*"):
        leftover.unlink()
    return {"rows": rows, "exit": code, "rss_mb": rss, "wall_s": wall, "output_mb": size, "answered": answered}


FINISHED = r"""
import sys
from pathlib import Path
from batchchat.store.journal import Journal
from batchchat.job.jobfile import load_job
from batchchat.execute.pipeline import journal_scope
from batchchat.plan.plan import Setup
from batchchat.core.records import RowOutcome
from batchchat.store.journal import MemoryStore
from batchchat.input.source import open_source
source_path, output, url = sys.argv[1:4]
job = load_job(input=source_path, output=output, model="m", base_url=url)
source = open_source(Path(source_path), None)
setup = Setup.of(job, source.columns, source.name)
_, rows = setup.plan(source, MemoryStore(), None)
journal = Journal(Path(output + ".journal"), journal_scope(job.endpoint, job.answers))
journal.describe({"benchmark": "every request answered"})
journal.begin()
for row in range(len(rows.keys)):
    journal.add(RowOutcome(row=-1, key=rows.keys[row], status="ok", attempts=1, model="m",
                           response="Fixed answer: the server does no work.", finish_reason="stop",
                           prompt_tokens=12, completion_tokens=8, total_tokens=20, latency_s=0.01))
journal.close()
"""


def resumed(rows: int, folder: Path) -> dict:
    """A rerun of a finished job of ``rows`` rows: its peak RSS planning, and running."""
    source = folder / f"prompts-{rows}.parquet"
    write_prompts(source, rows)
    output = folder / f"answers-{rows}.parquet"
    server, url = start_server()
    try:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", FINISHED, str(source), str(output), url], check=True)
        journal_s = time.perf_counter() - started
        journal_mb = Path(str(output) + ".journal").stat().st_size / (1 << 20)
        command = [sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o", str(output), "-m", "m",
                   "--base-url", url, "-q"]  # fmt: skip
        dry_wall, dry_code, dry_rss, _, dry_errors = timed([*command, "--dry-run"], cwd=folder)
        wall, code, rss, _, errors = timed(command, cwd=folder)
        answered = server_stats(url)["answered"]
    finally:
        server.terminate()
        server.wait()
    for code_, errors_ in ((dry_code, dry_errors), (code, errors)):
        if code_ != 0:
            print(f"<!-- resumed run of {rows:,} rows exited {code_}: {errors_.strip()[-300:]} -->", file=sys.stderr)
    size = output.stat().st_size / (1 << 20) if output.exists() else 0.0
    for leftover in folder.glob(f"*-{rows}.parquet*"):
        leftover.unlink()
    return {"rows": rows, "journal_mb": journal_mb, "journal_s": journal_s, "dry_rss_mb": dry_rss,
            "dry_wall_s": dry_wall, "rss_mb": rss, "wall_s": wall, "output_mb": size, "sent": answered,
            "exit": max(code, dry_code)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000], help="real runs")
    parser.add_argument("--resume-rows", type=int, nargs="*", default=[10_000_000], help="reruns of finished jobs")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--compare", action="append", default=[], metavar="REF",
                        help="also measure the real runs at this git commit")  # fmt: skip
    args = parser.parse_args()

    print(f"# batchchat memory, {time.strftime('%Y-%m-%d %H:%M')}, {platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if args.rows:
            compare = {ref: checkout(ref, folder) for ref in args.compare}
            print("## Real runs (every row a distinct request, fixed-answer server)\n")
            print("| batchchat | rows | peak RSS MB | output MB | wall s | sent | exit |")
            print("|---|---|---|---|---|---|---|")
            try:
                for rows in args.rows:
                    source = folder / f"prompts-{rows}.parquet"
                    write_prompts(source, rows)
                    for label, env in [("this", None), *((ref, {"PYTHONPATH": path}) for ref, path in compare.items())]:
                        r = real_run(rows, source, folder, args.concurrency, env)
                        print(f"| {label} | {r['rows']:,} | {r['rss_mb']:,} | {r['output_mb']:.0f} | {r['wall_s']:.0f} | "
                              f"{r['answered']:,} | {r['exit']} |", flush=True)  # fmt: skip
                    source.unlink()
            finally:
                for path in compare.values():
                    subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", path],
                                   capture_output=True)  # fmt: skip
        if args.resume_rows:
            print("\n## Reruns of finished jobs (plan every row, send nothing, write the whole output)\n")
            print("| rows | journal MB | dry run: peak RSS MB | wall s | run: peak RSS MB | wall s | output MB | "
                  "sent | exit |")  # fmt: skip
            print("|---|---|---|---|---|---|---|---|---|")
            for rows in args.resume_rows:
                r = resumed(rows, folder)
                print(f"| {r['rows']:,} | {r['journal_mb']:,.0f} | {r['dry_rss_mb']:,} | {r['dry_wall_s']:.0f} | "
                      f"{r['rss_mb']:,} | {r['wall_s']:.0f} | {r['output_mb']:,.0f} | {r['sent']:,} | {r['exit']} |",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
