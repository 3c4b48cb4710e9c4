"""Provider batches against the simulator's Batch API: what submitting and collecting cost the
client, next to a live run of the same requests measured in the same session.

For N distinct requests (100,000 by default) it measures, each in its own process against a
fresh ``batchchat serve``:

- a live run (the peer): every request sent and answered;
- ``--batch-api --detach``: the requests written to files (50,000 a file), uploaded, batched,
  and every step journaled, then exit;
- the collecting run: the batches' result files downloaded and every answer kept and written.

Wall time and peak RSS of the batchchat process alone; the simulator answers a batch at once
(``--batch-seconds 0``), so what is measured is the client's own work.

    python benchmarks/batch_api.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from throughput import simulator_stats, start_simulator, timed, write_prompts


def run(source: Path, output: Path, url: str, *flags: str) -> tuple[float, int, int, str]:
    wall, code, rss, _, errors = timed([sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o", str(output),
                                        "-m", "sim-chat", "--base-url", url, "-q", *flags])  # fmt: skip
    return wall, code, rss, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    print(f"# batchchat provider batches, {time.strftime('%Y-%m-%d %H:%M')}, {platform.python_implementation()} "
          f"{platform.python_version()}, {args.rows:,} distinct requests\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "prompts.parquet"
        write_prompts(source, args.rows)
        server, url = start_simulator("--batch-seconds", "0")
        try:
            live = run(source, Path(folder) / "live.parquet", url, "--concurrency", "64")
            output = Path(folder) / "batch.parquet"
            submit = run(source, output, url, "--batch-api", "--detach")
            stats = simulator_stats(url)
            collect = run(source, output, url, "--batch-api")
            steps = [json.loads(line)["batch_step"] for line in Path(f"{output}.journal").read_text().splitlines()
                     if '"batch_step"' in line]  # fmt: skip
        finally:
            server.terminate()
            server.wait()
    files = [s for s in steps if s.get("step") == "file"]
    per_file = [len(s["ids"].split()) for s in files]
    print("| run | wall s | vs live | peak RSS MB | vs live | exit |")
    print("|---|---|---|---|---|---|")
    for name, (wall, code, rss, errors) in (("live (peer)", live), ("batch: submit (--detach)", submit),
                                             ("batch: collect", collect)):  # fmt: skip
        print(f"| {name} | {wall:.1f} | {wall / live[0]:.2f} | {rss} | {rss / max(live[2], 1):.2f} | {code} |")
        if code != 0:
            print(f"<!-- {name}: {errors.strip()[-300:]} -->", file=sys.stderr)
    print(f"\nfiles: {len(files)}, requests per file: {', '.join(f'{n:,}' for n in per_file)}; batches the "
          f"simulator made: {stats.get('batches_created', 0)} over {stats.get('files_uploaded', 0)} uploads, "
          f"at most {stats.get('batches_per_file', 0)} a file")


if __name__ == "__main__":
    main()
