"""batchchat next to the ceiling and the SDKs, measured side by side in one run.

Every client runs in its own process against a fresh `batchchat serve` with no added latency, on
the same prompts:

- the ceiling: a bare aiohttp loop (one session, a semaphore, parse the answer, nothing else);
- `AsyncTogether` + `asyncio.gather` and `AsyncOpenAI` + `asyncio.gather` (the `bench` extra),
  bounded by the same semaphore as the ceiling;
- batchchat through its CLI on a Parquet file.

Each is measured non-streaming and streaming. "req/s" is measured by the server, from the first
request to the last answer, so start-up does not count; "wall s" is the whole process. Both are
also given as a ratio to the ceiling of the same run, because these machines are shared and noisy.
Then: batchchat's peak memory (RSS) for large inputs, `batchchat --help` start-up, and the
rate-limited figures of `rate_limited.py`.

    pip install -e '.[bench]' && python benchmarks/throughput.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent

PROMPT = "Question {i}: what about {i}?"

BARE = r"""
import asyncio, json, sys, aiohttp
url, n, conc, stream = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "stream"
PROMPT = sys.argv[5]
async def main():
    sem = asyncio.Semaphore(conc)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:
        async def one(i):
            body = {"model": "sim-chat", "messages": [{"role": "user", "content": PROMPT.format(i=i)}]}
            if stream:
                body["stream"] = True
            async with sem, session.post(url + "/chat/completions", data=json.dumps(body), headers=headers) as r:
                if not stream:
                    return json.loads(await r.read())["choices"][0]["message"]["content"]
                parts = []
                async for line in r.content:
                    if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                        for choice in json.loads(line[6:]).get("choices") or []:
                            parts.append((choice.get("delta") or {}).get("content") or "")
                return "".join(parts)
        answers = await asyncio.gather(*(one(i) for i in range(n)))
        assert all(answers)
asyncio.run(main())
"""

SDK = r"""
import asyncio, sys
url, n, conc, stream, PROMPT, sdk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "stream", sys.argv[5], sys.argv[6]
if sdk == "together":
    from together import AsyncTogether as Client
    url = url.removesuffix("/v1")  # Together's SDK adds /v1/chat/completions itself
else:
    from openai import AsyncOpenAI as Client
client = Client(api_key="not-needed", base_url=url)
async def one(i, sem):
    messages = [{"role": "user", "content": PROMPT.format(i=i)}]
    async with sem:  # unbounded, these SDKs slow down superlinearly (see benchmarks/README.md)
        if not stream:
            answer = await client.chat.completions.create(model="sim-chat", messages=messages)
            return answer.choices[0].message.content
        parts = []
        async for chunk in await client.chat.completions.create(model="sim-chat", messages=messages, stream=True):
            for choice in chunk.choices:
                parts.append(choice.delta.content or "")
        return "".join(parts)
async def main():
    sem = asyncio.Semaphore(conc)
    answers = await asyncio.gather(*(one(i, sem) for i in range(n)))
    assert all(answers)
asyncio.run(main())
"""


def start_server(*options: str) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "batchchat", "serve", "--port", "0", *options], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    return server, server.stdout.readline().split(" on ")[1].split(" ")[0]


def server_stats(url: str) -> dict:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/sim/stats") as response:
        return json.load(response)


def timed(command: list[str]) -> tuple[float, int, int, str]:
    """(wall seconds, exit code, peak RSS in MB, end of stderr) of one process."""
    with tempfile.TemporaryFile("w+") as errors:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, text=True)
        _, status, usage = os.wait4(process.pid, 0)  # wait4: the peak RSS of this child alone
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        return wall, process.returncode, usage.ru_maxrss // 1024, errors.read()[-500:]


def write_prompts(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": [PROMPT.format(i=i) for i in range(rows)]}), path)


def measure(name: str, command: list[str], rows: int, stream: bool) -> dict:
    server, url = start_server()
    try:
        wall, code, rss, errors = timed([*command[:1], *[a.replace("{url}", url) for a in command[1:]]])
        stats = server_stats(url)
    finally:
        server.terminate()
        server.wait()
    answered = stats.get("answered", 0)
    if code != 0:
        print(f"<!-- {name} exited {code}: {errors.strip()[-300:]} -->", file=sys.stderr)
    return {"client": name, "stream": stream, "exit": code, "wall_s": wall, "req_s": stats.get("answered_per_s") or 0.0,
            "answered": answered, "rss_mb": rss, "complete": answered >= rows and code == 0}  # fmt: skip


def throughput(rows: int, concurrency: int, sdks: bool, repeat: int, folder: Path) -> list[dict]:
    """Each client's figures, the ceiling and batchchat as the median of ``repeat`` interleaved rounds.

    A round measures the ceiling and batchchat back to back, and the ratio is taken within the
    round: the machine's speed drifts between rounds far more than within one.
    """
    source = folder / "prompts.parquet"
    write_prompts(source, rows)
    results = []
    for stream in (False, True):
        mode = "stream" if stream else "json"
        bare = (
            "bare aiohttp loop (ceiling)",
            [sys.executable, "-c", BARE, "{url}", str(rows), str(concurrency), mode, PROMPT],
        )
        output = folder / f"answers-{mode}.parquet"
        batch = ("batchchat (CLI)", [sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o", str(output),
                                     "-m", "sim-chat", "--base-url", "{url}", "--concurrency", str(concurrency), "-q",
                                     *(["--stream"] if stream else [])])  # fmt: skip
        rounds = []
        for _ in range(repeat):
            ceiling = measure(bare[0], bare[1], rows, stream)
            ours = measure(batch[0], batch[1], rows, stream)
            for leftover in folder.glob("answers-*"):
                leftover.unlink()
            rounds.append((ceiling, ours))
        ceiling_median = _median_of([c for c, _ in rounds])
        results.append({**ceiling_median, "ratio": 1.0, "wall_ratio": 1.0, "rounds": repeat})
        ours_median = _median_of([o for _, o in rounds])
        ours_median["ratio"] = statistics.median(o["req_s"] / c["req_s"] for c, o in rounds)
        ours_median["wall_ratio"] = statistics.median(c["wall_s"] / o["wall_s"] for c, o in rounds)
        ours_median["rounds"] = repeat
        for sdk, label in (("together", "AsyncTogether + gather"), ("openai", "AsyncOpenAI + gather")):
            if sdks and importlib.util.find_spec(sdk):
                command = [sys.executable, "-c", SDK, "{url}", str(rows), str(concurrency), mode, PROMPT, sdk]
                r = measure(label, command, rows, stream)
                r["ratio"] = r["req_s"] / ceiling_median["req_s"]
                r["wall_ratio"] = ceiling_median["wall_s"] / r["wall_s"]
                r["rounds"] = 1
                results.append(r)
        results.append(ours_median)
    return results


def _median_of(runs: list[dict]) -> dict:
    return {**runs[0], "req_s": statistics.median(r["req_s"] for r in runs),
            "wall_s": statistics.median(r["wall_s"] for r in runs), "complete": all(r["complete"] for r in runs)}  # fmt: skip


def memory(rows: int, concurrency: int, folder: Path) -> dict:
    source = folder / f"big-{rows}.parquet"
    write_prompts(source, rows)
    output = folder / f"big-{rows}-answers.parquet"
    server, url = start_server()
    try:
        wall, code, rss, _ = timed([sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o", str(output),
                                    "-m", "sim-chat", "--base-url", url, "--concurrency", str(concurrency), "-q"])  # fmt: skip
    finally:
        server.terminate()
        server.wait()
    size = output.stat().st_size // (1 << 20) if output.exists() else 0
    for leftover in folder.glob(f"big-{rows}*"):
        leftover.unlink()
    return {"rows": rows, "exit": code, "wall_s": wall, "rss_mb": rss, "output_mb": size}


def startup(runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "batchchat", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5, help="rounds of ceiling and batchchat")
    parser.add_argument("--memory-rows", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--no-sdks", action="store_true", help="skip the SDK clients")
    parser.add_argument("--no-rate-limited", action="store_true", help="skip the rate-limited runs")
    args = parser.parse_args()

    print(f"# batchchat benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        results = throughput(args.rows, args.concurrency, not args.no_sdks, args.repeat, folder)
        print(f"## Throughput: {args.rows:,} requests, concurrency {args.concurrency}, simulator with no latency\n")
        print(f"Ceiling and batchchat: median of {args.repeat} interleaved rounds, ratios taken within each round.\n")
        print("| client | mode | req/s | vs ceiling | wall s | wall vs ceiling | rounds | complete |")
        print("|---|---|---|---|---|---|---|---|")
        for r in results:
            complete = "yes" if r["complete"] else f"NO (exit {r['exit']})"
            print(f"| {r['client']} | {'stream' if r['stream'] else 'json'} | {r['req_s']:,.0f} | {r['ratio']:.2f} | "
                  f"{r['wall_s']:.1f} | {r['wall_ratio']:.2f} | {r['rounds']} | {complete} |")  # fmt: skip
        batch = next(r for r in results if r["client"].startswith("batchchat") and not r["stream"])
        together = next((r for r in results if r["client"].startswith("AsyncTogether") and not r["stream"]), None)
        if together and together["req_s"]:
            print(f"\nbatchchat vs AsyncTogether + gather (json): {batch['req_s'] / together['req_s']:.1f}x req/s")

        if args.memory_rows:
            print("\n## Peak memory of `batchchat run` (every row a distinct request)\n")
            print("| rows | peak RSS MB | output MB | wall s | exit |")
            print("|---|---|---|---|---|")
            for rows in args.memory_rows:
                m = memory(rows, args.concurrency, folder)
                print(f"| {m['rows']:,} | {m['rss_mb']:,} | {m['output_mb']:,} | {m['wall_s']:.0f} | {m['exit']} |")

    print(f"\n## Start-up\n\n`batchchat --help`: {startup():.2f} s (median of 7)")

    if not args.no_rate_limited:
        sys.path.insert(0, str(HERE))
        from rate_limited import run_case

        print("\n## Rate-limited endpoint (`rate_limited.py`: 300 rows, server 1200 rpm, 50 ms, concurrency 32)\n")
        print("| case | job s | vs ideal (15 s) | requests | answered 429 |")
        print("|---|---|---|---|---|")
        for label, extra in (("--rpm 1200", ["--rpm", "1200"]), ("adaptive", [])):
            r = run_case(label, 300, 1200, 32, extra)
            print(f"| {r['case']} | {r['job_s']:.2f} | {r['vs_ideal']:.2f} | {r['requests']} | "
                  f"{r['answered_429']} ({r['share_429']:.1%}) |")  # fmt: skip


if __name__ == "__main__":
    main()
