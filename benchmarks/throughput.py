"""batchchat next to a bare aiohttp loop and the SDKs, where the client is the bottleneck.

Every client runs in its own process against a fresh `benchmarks/fast_server.py`, a chat
endpoint that answers with fixed bytes and costs a fraction of any client's CPU per request (its
own CPU is reported beside, to show it), on the same prompts, of two sets (`prompt_sets.py`): short
prompts of one shape, and a real table's mix (varied lengths, a tenth about 2 KB, some CJK and
emoji), where a client's cost per byte shows:

- the bare loop, as a user's script would be: the prompts read from the same Parquet file, one
  aiohttp session, a semaphore, each answer parsed, the answers and their tokens written to a
  Parquet file (the peer the ratios are taken against);
- the same loop with no files (prompts made in memory, answers dropped), for reference;
- `AsyncTogether` + `asyncio.gather` and `AsyncOpenAI` + `asyncio.gather` (the `bench` extra),
  bounded by the same semaphore;
- batchchat through its CLI on a Parquet file: reading it, the journal, the throttle, the keys
  and writing the output included.

Each is measured non-streaming and streaming. "req/s" is measured by the server, from the first
request to the last answer; "CPU us/req" is the client process's user + system CPU time over
the requests, start-up included. The bare loop and batchchat are measured in interleaved rounds
and their ratios taken within each round (the median is shown): these machines are shared and
their speed drifts from minute to minute. Then `batchchat --help` start-up and the rate-limited
figures of `rate_limited.py`. Memory is `memory.py`'s.

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

sys.path.insert(0, str(HERE))
from prompt_sets import PROMPT_SETS  # noqa: E402

BARE = r"""
import asyncio, json, sys, aiohttp
url, n, conc, stream = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "stream"
kind, here, source, output = sys.argv[5], sys.argv[6], sys.argv[7], sys.argv[8]
if source != "-":  # with I/O: the prompts from the Parquet file, the answers and tokens to another
    import pyarrow as pa, pyarrow.parquet as pq
    prompts = pq.read_table(source, columns=["prompt"]).column("prompt").to_pylist()
else:  # the same prompts, made in memory
    sys.path.insert(0, here)
    from prompt_sets import prompts_of
    prompts = prompts_of(kind, n)
async def main():
    sem = asyncio.Semaphore(conc)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:
        async def one(prompt):
            body = {"model": "sim-chat", "messages": [{"role": "user", "content": prompt}]}
            if stream:
                body["stream"] = True
            async with sem, session.post(url + "/chat/completions", data=json.dumps(body), headers=headers) as r:
                if not stream:
                    answer = json.loads(await r.read())
                    return answer["choices"][0]["message"]["content"], answer.get("usage") or {}
                parts, usage = [], {}
                async for line in r.content:
                    if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                        chunk = json.loads(line[6:])
                        usage = chunk.get("usage") or usage
                        for choice in chunk.get("choices") or []:
                            parts.append((choice.get("delta") or {}).get("content") or "")
                return "".join(parts), usage
        answers = await asyncio.gather(*(one(p) for p in prompts))
        assert all(a for a, _ in answers)
    if output != "-":
        pq.write_table(pa.table({"prompt": prompts, "answer": [a for a, _ in answers],
                                 "prompt_tokens": [u.get("prompt_tokens") for _, u in answers],
                                 "completion_tokens": [u.get("completion_tokens") for _, u in answers]}), output)
asyncio.run(main())
"""

SDK = r"""
import asyncio, sys
url, n, conc, stream, kind, here, sdk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "stream", *sys.argv[5:8]
sys.path.insert(0, here)
from prompt_sets import prompts_of
prompts = prompts_of(kind, n)
if sdk == "together":
    from together import AsyncTogether as Client
    url = url.removesuffix("/v1")  # Together's SDK adds /v1/chat/completions itself
else:
    from openai import AsyncOpenAI as Client
client = Client(api_key="not-needed", base_url=url)
async def one(i, sem):
    messages = [{"role": "user", "content": prompts[i]}]
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


def start_server() -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen([sys.executable, str(HERE / "fast_server.py")], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    return server, server.stdout.readline().split(" on ")[1].strip()


def server_stats(url: str) -> dict:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats") as response:
        return json.load(response)


def start_simulator(*options: str) -> tuple[subprocess.Popen[str], str]:
    """`batchchat serve`, for what the fixed-answer server cannot do (batches, limits, latency)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "batchchat", "serve", "--port", "0", *options], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    return server, server.stdout.readline().split(" on ")[1].split(" ")[0]


def simulator_stats(url: str) -> dict:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/sim/stats") as response:
        return json.load(response)


def timed(command: list[str], env: dict[str, str] | None = None,
          cwd: Path | None = None) -> tuple[float, int, int, float, str]:  # fmt: skip
    """(wall seconds, exit code, peak RSS in MB, CPU seconds, end of stderr) of one process.
    ``cwd``: not the repository, whose ``batchchat`` folder ``python -m`` would put before an
    A/B checkout's ``PYTHONPATH``."""
    with tempfile.TemporaryFile("w+") as errors:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, text=True, cwd=cwd,
                                   env={**os.environ, **env} if env else None)  # fmt: skip
        _, status, usage = os.wait4(process.pid, 0)  # wait4: this child's own peak RSS and CPU time
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        cpu = usage.ru_utime + usage.ru_stime
        return wall, process.returncode, usage.ru_maxrss // 1024, cpu, errors.read()[-500:]


def write_prompts(path: Path, rows: int, kind: str = "fixed") -> None:
    """In a process of its own: the peak RSS a child reports (wait4) starts from its parent's
    size when it was started, so this process stays small."""
    code = ("import sys, pyarrow as pa, pyarrow.parquet as pq; sys.path.insert(0, sys.argv[4]); "
            "from prompt_sets import prompts_of; "
            "pq.write_table(pa.table({'prompt': prompts_of(sys.argv[3], int(sys.argv[2]))}), sys.argv[1])")  # fmt: skip
    subprocess.run([sys.executable, "-c", code, str(path), str(rows), kind, str(HERE)], check=True)


def measure(name: str, command: list[str], rows: int, stream: bool, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> dict:  # fmt: skip
    server, url = start_server()
    try:
        wall, code, rss, cpu, errors = timed([*command[:1], *[a.replace("{url}", url) for a in command[1:]]], env, cwd)
        stats = server_stats(url)
    finally:
        server.terminate()
        server.wait()
    answered = stats.get("answered", 0)
    if code != 0:
        print(f"<!-- {name} exited {code}: {errors.strip()[-300:]} -->", file=sys.stderr)
    return {"client": name, "stream": stream, "exit": code, "wall_s": wall, "req_s": stats.get("answered_per_s") or 0.0,
            "answered": answered, "rss_mb": rss, "cpu_us": 1e6 * cpu / max(1, rows),
            "server_cpu_us": 1e6 * stats.get("cpu_s", 0.0) / max(1, answered),
            "complete": answered >= rows and code == 0}  # fmt: skip


def throughput(rows: int, concurrency: int, sdks: bool, repeat: int, folder: Path, compare: dict[str, str],
               modes: tuple[str, ...] = ("json", "stream"), prompt_sets: tuple[str, ...] = PROMPT_SETS) -> list[dict]:  # fmt: skip
    """Each client's figures on each prompt set; the bare loop and batchchat (and each ``compare``
    checkout, by label -> folder) as the median of ``repeat`` interleaved rounds, ratios taken
    within a round."""
    results = []
    for kind in prompt_sets:
        source = folder / f"prompts-{kind}.parquet"
        write_prompts(source, rows, kind)
        for mode in modes:
            results += _rounds(rows, concurrency, sdks, repeat, folder, compare, mode, kind, source)
    return results


def _rounds(rows: int, concurrency: int, sdks: bool, repeat: int, folder: Path, compare: dict[str, str],
            mode: str, kind: str, source: Path) -> list[dict]:  # fmt: skip
    """One mode on one prompt set: the interleaved rounds, then the SDKs once each."""
    stream = mode == "stream"
    bare = [sys.executable, "-c", BARE, "{url}", str(rows), str(concurrency), mode, kind, str(HERE)]
    bare_io = [*bare, str(source), str(folder / f"answers-{mode}-bare.parquet")]
    output = folder / f"answers-{mode}.parquet"
    ours = [sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o", str(output), "-m", "sim-chat",
            "--base-url", "{url}", "--concurrency", str(concurrency), "-q", *(["--stream"] if stream else [])]  # fmt: skip
    clients = [("batchchat (CLI)", None), *((label, {"PYTHONPATH": path}) for label, path in compare.items())]
    rounds: list[list[dict]] = []
    for _ in range(repeat):
        measured = [measure(BARE_LABEL, bare_io, rows, stream, cwd=folder),
                    measure(BARE_PLAIN_LABEL, [*bare, "-", "-"], rows, stream, cwd=folder)]  # fmt: skip
        for label, env in clients:
            measured.append(measure(label, ours, rows, stream, env, cwd=folder))
            for leftover in folder.glob("answers-*"):
                leftover.unlink()
        rounds.append(measured)
    results = []
    for i in range(len(clients) + 2):
        median = _median_of([r[i] for r in rounds])
        median["ratio"] = statistics.median(r[i]["req_s"] / r[0]["req_s"] for r in rounds)
        median["cpu_ratio"] = statistics.median(r[i]["cpu_us"] / r[0]["cpu_us"] for r in rounds)
        median["rounds"] = repeat
        median["prompts"] = kind
        results.append(median)
        if i == 0:
            for sdk, label in (("together", "AsyncTogether + gather"), ("openai", "AsyncOpenAI + gather")):
                if sdks and importlib.util.find_spec(sdk):
                    command = [sys.executable, "-c", SDK, "{url}", str(rows), str(concurrency), mode, kind, str(HERE),
                               sdk]  # fmt: skip
                    r = measure(label, command, rows, stream)
                    r["ratio"] = r["req_s"] / median["req_s"]
                    r["cpu_ratio"] = r["cpu_us"] / median["cpu_us"]
                    r["rounds"] = 1
                    r["prompts"] = kind
                    results.append(r)
    return results


BARE_LABEL = "bare aiohttp loop, Parquet in and out"
BARE_PLAIN_LABEL = "bare aiohttp loop, no files"


def _median_of(runs: list[dict]) -> dict:
    return {**runs[0], **{name: statistics.median(r[name] for r in runs)
                          for name in ("req_s", "wall_s", "cpu_us", "server_cpu_us")},
            "complete": all(r["complete"] for r in runs)}  # fmt: skip


def startup(runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "batchchat", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def compiled(checkout: Path) -> None:
    """Byte-compile a checkout's package, as installing it does. Where ``PYTHONDONTWRITEBYTECODE``
    is set (this machine sets it), a checkout run from source compiles every module of its own
    on each start, 0.1-0.2 s of CPU, while the libraries it imports were compiled when they were
    installed: the bare loop's imports would be measured compiled and batchchat's not."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(checkout / "batchchat")], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def checkout(ref: str, folder: Path) -> str:
    """A worktree of ``ref`` (a commit before, for an A/B in the same rounds); its folder."""
    path = folder / f"at-{ref.replace('/', '_')}"
    subprocess.run(["git", "-C", str(HERE.parent), "worktree", "add", "--detach", str(path), ref], check=True,
                   capture_output=True)  # fmt: skip
    found = subprocess.run([sys.executable, "-c", "import batchchat; print(batchchat.__file__)"], cwd=folder,
                           env={**os.environ, "PYTHONPATH": str(path)}, capture_output=True, text=True, check=True)  # fmt: skip
    if not found.stdout.startswith(str(path)):  # else the A/B would measure this checkout twice
        raise SystemExit(f"batchchat at {ref} is not what runs: {found.stdout.strip()}")
    compiled(path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--compare", action="append", default=[], metavar="REF",
                        help="also measure batchchat at this git commit, in the same rounds (an A/B)")  # fmt: skip
    parser.add_argument("--mode", choices=["json", "stream"], action="append", help="only this mode (default: both)")
    parser.add_argument("--prompts", choices=PROMPT_SETS, action="append",
                        help="only this prompt set (default: both): fixed, short prompts of one shape; mix, a real "
                             "table's (varied lengths, a tenth about 2 KB, some CJK and emoji)")  # fmt: skip
    parser.add_argument("--no-sdks", action="store_true", help="skip the SDK clients")
    parser.add_argument("--no-rate-limited", action="store_true", help="skip the rate-limited runs")
    args = parser.parse_args()

    print(f"# batchchat benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        compiled(HERE.parent)
        compare = {f"batchchat at {ref}": checkout(ref, folder) for ref in args.compare}
        try:
            results = throughput(args.rows, args.concurrency, not args.no_sdks, args.repeat, folder, compare,
                                 tuple(args.mode or ("json", "stream")), tuple(args.prompts or PROMPT_SETS))  # fmt: skip
        finally:
            for path in compare.values():
                subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", path],
                               capture_output=True)  # fmt: skip
        print(f"## Throughput: {args.rows:,} requests, concurrency {args.concurrency}, fixed-answer server\n")
        print(f"Bare loop and batchchat: median of {args.repeat} interleaved rounds, ratios taken within each "
              "round. CPU: the client process's, start-up included. Server CPU: the server's, per request.\n")  # fmt: skip
        print("| client | mode | prompts | req/s | vs bare | CPU us/req | vs bare | server CPU us/req | wall s | rounds "
              "| complete |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            complete = "yes" if r["complete"] else f"NO (exit {r['exit']})"
            print(f"| {r['client']} | {'stream' if r['stream'] else 'json'} | {r['prompts']} | {r['req_s']:,.0f} | {r['ratio']:.2f} | "
                  f"{r['cpu_us']:.0f} | {r['cpu_ratio']:.2f} | {r['server_cpu_us']:.0f} | {r['wall_s']:.1f} | "
                  f"{r['rounds']} | {complete} |")  # fmt: skip

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
