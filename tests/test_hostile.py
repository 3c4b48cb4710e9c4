"""Hostile conditions: a changing input, a hostile server, a hostile filesystem. The CLI runs in
real subprocesses where the condition needs one (signals, kills, mounts)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from batchchat.core.errors import InputChanged
from batchchat.simulator import BackgroundSimulator, synthetic_reply

from .helpers import KEY_VARIABLES, cli, read_output, write_csv
from .hostile_server import HostileServer, completion, json_response


def body(text: str) -> dict[str, Any]:
    return {"model": "sim-chat", "messages": [{"role": "user", "content": text}]}


def test_damaged_journal_records_are_skipped_said_and_their_rows_sent_again(
    tmp_path: Path, sim: BackgroundSimulator
) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"q{i}"] for i in range(4)])
    output = tmp_path / "out.parquet"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url)
    assert cli("run", *common).exit_code == 0
    journal = Path(f"{output}.journal")
    lines = journal.read_text().splitlines()
    records = [json.loads(line) for line in lines if '"key"' in line]
    damaged = [{**records[0], "prompt_tokens": "abc"}, {**records[1], "response": 123},
               {**records[2], "attempts": 2**40}, {**records[3], "status": None}]  # fmt: skip
    kept = [line for line in lines if '"key"' not in line]
    journal.write_text("\n".join(kept + [json.dumps(r) for r in damaged]) + "\n")
    result = cli("run", *common)
    assert result.exit_code == 0, result.stderr
    assert "the journal holds 4 damaged records (wrong shape or types): skipped" in result.stderr
    assert len(sim.requests) == 8  # each sent again, once
    assert all(r["status"] == "ok" and r["attempts"] == 1 for r in read_output(output))


def start_run(source: Path, output: Path, url: str, *extra: str, kept: bool = True) -> subprocess.Popen[str]:
    """``kept=False``: the plan keeps no request, so the sending pass builds each again from the
    input (as it does for an input too large to keep)."""
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARIABLES}
    cli = "from batchchat.cli.commands import main; import batchchat.plan.plan as plan; plan.KEPT_BYTES = int(sys.argv.pop(1)); main()"
    return subprocess.Popen(
        [sys.executable, "-c", f"import sys; {cli}", str(plan_keeps(kept)), "run", "-i", str(source), "-o",
         str(output), "-m", "sim-chat", "--base-url", url, "--concurrency", "8", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def plan_keeps(kept: bool) -> int:
    from batchchat.plan.plan import KEPT_BYTES

    return KEPT_BYTES if kept else 0


def wait_answered(server: BackgroundSimulator, count: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while server.stats().get("answered", 0) < count:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "built-again"])
@pytest.mark.parametrize("change", ["shuffled", "appended"])
def test_an_input_changed_mid_run_is_refused_and_a_rerun_pays_nothing_twice(
    tmp_path: Path, sim_factory: Any, change: str, kept: bool
) -> None:
    server = sim_factory(latency_ms=20)
    texts = [f"changing question {i}" for i in range(400)]
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[t] for t in texts])
    output = tmp_path / "out.parquet"
    output.write_bytes(b"an older table")
    process = start_run(source, output, server.url, kept=kept)
    wait_answered(server, 40, process)
    changed = random.Random(1).sample(texts, len(texts)) if change == "shuffled" else [*texts, "new 1", "new 2"]
    write_csv(tmp_path / "next.csv", ["prompt"], [[t] for t in changed])
    shutil.copyfile(tmp_path / "next.csv", source)  # like cp: the same file, rewritten in place
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2, stderr
    assert f"the input {source} changed while the run was going" in stderr and "internal error" not in stderr
    assert output.read_bytes() == b"an older table"  # never a table of mismatched rows
    paid = server.stats()["answered"]
    rerun = start_run(source, output, server.url)
    _, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    rows = read_output(output)
    assert [r["prompt"] for r in rows] == changed
    assert all(r["response"] == synthetic_reply(body(r["prompt"]))[0] for r in rows)  # each its own answer
    assert paid < 400
    assert server.stats()["answered"] == len(changed)  # every row answered once: nothing paid twice
    assert server.stats()["answered_twice"] == 0


def test_a_request_is_never_sent_under_another_rows_key(tmp_path: Path) -> None:
    import pyarrow as pa

    from batchchat.input.source import ArrowSource
    from batchchat.job.jobfile import load_job
    from batchchat.plan.plan import Setup
    from batchchat.store.journal import MemoryStore

    job = load_job(None, model="m", provider="sim")
    before = ArrowSource(pa.table({"prompt": ["a", "b", "c"]}))
    setup = Setup.of(job, before.columns, "in.csv")
    builder = setup.builder
    _, rows = setup.plan(before, MemoryStore(), None)
    assert [r.messages[-1]["content"] for r in builder.requests(before, rows.keys, rows.sends)] == ["a", "b", "c"]
    after = ArrowSource(pa.table({"prompt": ["a", "c", "b"]}))  # what a rewrite nobody noticed would give
    requests = builder.requests(after, rows.keys, rows.sends)
    assert next(requests).messages[-1]["content"] == "a"
    with pytest.raises(InputChanged, match="row 2 is not what it was"):
        next(requests)


def probe_folder(path: Path) -> bool:
    """Whether a file can be created in ``path`` (root ignores permissions, not immutability)."""
    try:
        (path / ".probe").touch()
    except OSError:
        return False
    (path / ".probe").unlink()
    return True


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry run"])
def test_what_would_fail_after_paying_is_refused_before_the_first_request(
    tmp_path: Path, sim: BackgroundSimulator, dry: bool
) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"], ["b"]])
    flags = ["--dry-run"] if dry else []
    folder_output = tmp_path / "taken.parquet"
    folder_output.mkdir()
    result = cli("run", "-i", source, "-o", folder_output, "-m", "m", "--base-url", sim.url, *flags)
    assert result.exit_code == 2 and f"the output {folder_output} is a folder" in result.stderr
    for bad in ("inf", "1e309", "nan", "-inf"):
        result = cli("run", "-i", source, "-o", tmp_path / "o.parquet", "-m", "m", "--base-url", sim.url,
                     "--timeout", bad, *flags)  # fmt: skip
        assert result.exit_code == 2 and "--timeout must be a finite number" in result.stderr, bad
    for setting in ("--temperature", "--max-cost", "--grace"):
        result = cli("run", "-i", source, "-o", tmp_path / "o.parquet", "-m", "m", "--base-url", sim.url,
                     setting, "inf", *flags)  # fmt: skip
        assert result.exit_code == 2 and f"{setting} must be a finite number" in result.stderr
    locked = tmp_path / "locked"
    locked.mkdir()
    subprocess.run(["chattr", "+i", str(locked)], capture_output=True)
    try:
        if probe_folder(locked):
            pytest.skip("cannot make a folder unwritable here (chattr +i is not permitted)")
        result = cli("run", "-i", source, "-o", locked / "out.parquet", "-m", "m", "--base-url", sim.url, *flags)
        assert result.exit_code == 2 and f"cannot write in the output folder {locked}" in result.stderr
    finally:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)
    assert sim.requests == []  # nothing was paid for


def test_symlinks_at_the_journal_lock_and_temp_names_are_never_written_through(
    tmp_path: Path, sim: BackgroundSimulator
) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"], ["b"]])
    output = tmp_path / "out.parquet"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("out.parquet.journal", "out.parquet.lock"):
        planted = tmp_path / name
        planted.symlink_to(victim)
        result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url)
        assert result.exit_code == 2 and "symlink" in result.stderr, result.stderr
        assert victim.read_text() == "precious"
        planted.unlink()
    for pid in (os.getpid(), 1, 99999):  # the old predictable temp names
        (tmp_path / f".out.parquet.{pid}.tmp").symlink_to(victim)
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url)
    assert result.exit_code == 0, result.stderr
    assert victim.read_text() == "precious" and len(read_output(output)) == 2
    assert not list(tmp_path.glob(".out.parquet.*"))  # temp files of dead runs (or planted) are removed


def test_an_output_symlinked_to_another_runs_output_shares_its_lock(tmp_path: Path, sim: BackgroundSimulator) -> None:
    from batchchat.store.lock import OutputLock

    real = tmp_path / "real.parquet"
    alias = tmp_path / "alias.parquet"
    real.write_bytes(b"")
    alias.symlink_to(real)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"]])
    with OutputLock(real):  # another run writes the real table
        result = cli("run", "-i", source, "-o", alias, "-m", "sim-chat", "--base-url", sim.url)
    assert result.exit_code == 2 and "another batchchat run is writing real.parquet" in result.stderr
    assert cli("run", "-i", source, "-o", alias, "-m", "sim-chat", "--base-url", sim.url).exit_code == 0
    assert alias.is_symlink() and len(read_output(real)) == 1  # the table behind the name was written


def test_rewriting_an_output_keeps_its_permissions(tmp_path: Path, sim: BackgroundSimulator) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"]])
    output = tmp_path / "out.parquet"
    assert cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url).exit_code == 0
    output.chmod(0o600)
    write_csv(source, ["prompt"], [["a"], ["b"]])
    assert cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url).exit_code == 0
    assert output.stat().st_mode & 0o777 == 0o600 and len(read_output(output)) == 2
    fresh = tmp_path / "fresh.parquet"
    assert cli("run", "-i", source, "-o", fresh, "-m", "sim-chat", "--base-url", sim.url).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask  # a new table gets the usual permissions


@pytest.mark.slow
def test_a_very_wide_csv_is_read_in_time_linear_in_its_columns(tmp_path: Path, sim: BackgroundSimulator) -> None:
    """100,000 columns once took 92 s (each column name was counted in the whole header)."""
    columns = 100_000
    header = ",".join(["prompt"] + [f"c{i}" for i in range(columns)])
    line = ",".join(["hi"] + ["x"] * columns)
    source = tmp_path / "wide.csv"
    source.write_text(f"{header}\n{line}\n{line}\n")
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARIABLES}
    result = subprocess.run([sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o",
                             str(tmp_path / "out.csv"), "-m", "sim-chat", "--base-url", sim.url],
                            capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(sim.requests) == 1  # the two rows are one request


@pytest.mark.parametrize("when", ["starting", "holding the lock"])
def test_sigterm_during_validation_exits_cleanly_and_leaves_no_lock(
    tmp_path: Path, sim: BackgroundSimulator, when: str
) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"question {i}"] for i in range(300_000)])
    output = tmp_path / "out.parquet"
    process = start_run(source, output, sim.url)
    lock = tmp_path / "out.parquet.lock"
    deadline = time.monotonic() + 60
    while when == "holding the lock" and not lock.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.3 if when == "starting" else 0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    if process.returncode == -signal.SIGTERM:  # so early that Python was still starting: nothing to clean
        assert when == "starting" and not stderr
    else:
        assert process.returncode == 130, stderr
        assert "interrupted before any request was answered; nothing written" in stderr
    assert not lock.exists() and not output.exists() and "Traceback" not in stderr


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A real file system of ``size`` bytes (tmpfs), mounted for the test; skipped where mounting
    is not permitted (it needs root)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small file system here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def fill(folder: Path) -> Path:
    """Take every free byte of the file system ``folder`` is on."""
    filler = folder / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)
    return filler


def journal_is_whole(path: Path) -> None:
    for line in path.read_bytes().splitlines(keepends=True):
        assert line.endswith(b"\n")
        json.loads(line)


@pytest.mark.slow
def test_a_full_disk_mid_run_stops_with_exit_74_and_a_whole_journal(
    tmp_path: Path, sim_factory: Any, small_disk: Any
) -> None:
    disk = small_disk("2m")
    server = sim_factory(latency_ms=20)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"disk question {i}"] for i in range(2000)])
    output = disk / "out.parquet"
    process = start_run(source, output, server.url)
    wait_answered(server, 40, process)
    filler = fill(disk)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 74, stderr
    assert f"the disk is full (No space left on device) while writing the journal {output}.journal" in stderr
    assert "internal error" not in stderr and "ExceptionGroup" not in stderr
    journal_is_whole(Path(f"{output}.journal"))
    filler.unlink()
    rerun = start_run(source, output, server.url)
    _, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    assert all(r["status"] == "ok" for r in read_output(output))
    assert server.stats()["answered_twice"] <= 8 + 1  # the answer the disk refused, and those in flight


def test_a_folder_turned_read_only_mid_run_stops_with_exit_74_and_keeps_the_journal(
    tmp_path: Path, sim_factory: Any, small_disk: Any
) -> None:
    disk = small_disk("8m")
    server = sim_factory(latency_ms=5)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"ro question {i}"] for i in range(300)])
    output = disk / "out.parquet"
    process = start_run(source, output, server.url)
    wait_answered(server, 40, process)
    # Linux will not remount a file system read-only while a run holds files open on it; a
    # read-only bind mount over the folder turns every new file there read-only, as a failing
    # disk does (the journal, already open, goes on)
    subprocess.run(["mount", "-o", "bind,ro", str(disk), str(disk)], check=True)
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    assert process.returncode == 74, stderr
    assert f"the file system is read-only (Read-only file system) while writing the output {output}" in stderr
    assert not output.exists()
    journal_is_whole(Path(f"{output}.journal"))
    paid = server.stats()["answered"]
    rerun = start_run(source, output, server.url)
    assert rerun.wait(timeout=120) == 0
    assert server.stats()["answered"] == paid == 300  # the journal kept every answer: nothing paid twice


def test_no_room_for_the_output_leaves_the_old_one_and_says_so(
    tmp_path: Path, sim: BackgroundSimulator, small_disk: Any
) -> None:
    disk = small_disk("256k")
    source = tmp_path / "in.csv"
    output = disk / "out.parquet"
    write_csv(source, ["prompt", "notes"], [[f"q{i}", "short"] for i in range(20)])
    assert cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url).exit_code == 0
    before = output.read_bytes()
    write_csv(source, ["prompt", "notes"], [[f"q{i}", os.urandom(15_000).hex()] for i in range(20)])
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url)
    assert result.exit_code == 74, result.stderr
    assert f"while writing the output {output}: the output was left as it was" in result.stderr
    assert output.read_bytes() == before and len(sim.requests) == 20  # nothing was sent again
    assert not list(disk.glob(".out.parquet.*"))  # no half-written temporary file left behind


CANARY = "sk-canary-0123456789abcdef"


def test_a_key_a_server_echoes_back_never_reaches_the_output_the_journal_or_the_terminal(tmp_path: Path) -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        prompt = json.loads(await request.read())["messages"][-1]["content"]
        if prompt == "answer":
            return json_response(completion(f"your key is {auth.removeprefix('Bearer ')}"))
        if prompt == "html":
            return web.Response(status=502, text=f"<html>proxy saw {auth}</html>", content_type="text/html")
        return json_response({"error": {"message": f"bad request; headers were Authorization: {auth}"}}, 400)

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["answer"], ["error"], ["html"]])
    output = tmp_path / "out.csv"
    with HostileServer(echo) as server:
        result = subprocess.run([sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o", str(output),
                                 "-m", "m", "--base-url", server.url, "--max-attempts", "1"],
                                capture_output=True, text=True, env={**clean_env(), "TOGETHER_API_KEY": CANARY})  # fmt: skip
    assert server.requests[0]["authorization"] == f"Bearer {CANARY}"  # it was sent, and echoed
    written = output.read_text() + Path(f"{output}.journal").read_text() + result.stdout + result.stderr
    assert CANARY not in written and "[redacted]" in output.read_text()
    rows = read_output(output)
    assert rows[0]["response"] == "your key is [redacted]"
    assert "Bearer [redacted]" in rows[1]["error"] and "Bearer [redacted]" in rows[2]["error"]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in KEY_VARIABLES}


def test_url_credentials_are_sent_as_basic_auth_and_never_shown(tmp_path: Path) -> None:
    async def refuse(request: web.Request) -> web.StreamResponse:
        return json_response({"error": {"message": f"no such model; you are {request.headers['Authorization']}"}},
                             404)  # fmt: skip

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hi"]])
    with HostileServer(refuse) as server:
        url = server.url.replace("http://", "http://alice:s3cr3t-pw@")
        result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "m", "--base-url", url)
        assert server.requests[0]["authorization"].startswith("Basic ")
        shown = result.stdout + result.stderr + (tmp_path / "out.csv").read_text()
        assert "s3cr3t-pw" not in shown and "alice:***@" in result.stderr
        both = subprocess.run([sys.executable, "-m", "batchchat", "run", "-i", str(source), "-m", "m",
                               "--base-url", url], capture_output=True, text=True,
                              env={**clean_env(), "TOGETHER_API_KEY": CANARY})  # fmt: skip
    assert both.returncode == 2 and "carries credentials (user:password@)" in both.stderr
    assert "ExceptionGroup" not in both.stderr and "s3cr3t-pw" not in both.stderr and CANARY not in both.stderr


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_not_followed_and_stop_the_run_naming_where_they_point(tmp_path: Path, status: int) -> None:
    async def elsewhere(request: web.Request) -> web.StreamResponse:
        return json_response(completion("an answer from somewhere else"))

    with HostileServer(elsewhere) as other:
        async def moved(request: web.Request) -> web.StreamResponse:
            return web.Response(status=status, headers={"Location": f"{other.url}/chat/completions"})

        source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"q{i}"] for i in range(5)])
        with HostileServer(moved) as server:
            result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "m", "--base-url", server.url)
    assert result.exit_code == 2
    assert f"redirects to {other.url}/chat/completions" in result.stderr and "base URL" in result.stderr
    assert other.requests == []  # the prompt never went to the other origin, nor a GET anywhere
    assert not (tmp_path / "out.csv").exists() or all(r["status"] != "ok" for r in read_output(tmp_path / "out.csv"))


def test_only_a_chat_completion_is_an_answer(tmp_path: Path) -> None:
    async def listing(request: web.Request) -> web.StreamResponse:
        return json_response({"object": "list", "data": [{"id": "m"}], "choices": [{"message": {"content": "x"}}]})

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hi"]])
    with HostileServer(listing) as server:
        result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "m", "--base-url", server.url)
    assert result.exit_code == 1
    row = read_output(tmp_path / "out.csv")[0]
    assert row["status"] == "error" and row["error_type"] == "bad_response" and "instead of a chat completion" in row["error"]
    assert len(server.requests) == 1  # the same would come again: not retried


def test_huge_bodies_are_read_only_as_far_as_needed(tmp_path: Path) -> None:
    async def enormous(request: web.Request) -> web.StreamResponse:
        prompt = json.loads(await request.read())["messages"][-1]["content"]
        response = web.StreamResponse(status=500 if prompt == "error" else 200,
                                      headers={"Content-Type": "application/json"})  # fmt: skip
        await response.prepare(request)
        chunk = b'{"error": {"message": "' + b"x" * (1 << 20)
        with contextlib.suppress(ConnectionError, RuntimeError):
            for _ in range(200):  # 200 MB, never all in memory on either side
                await response.write(chunk)
        return response

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["error"], ["answer"]])
    with HostileServer(enormous) as server:
        process = subprocess.Popen([sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o",
                                    str(tmp_path / "out.csv"), "-m", "m", "--base-url", server.url, "--max-attempts",
                                    "1", "--concurrency", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=clean_env())  # fmt: skip
        peak_mb = 0.0
        while process.poll() is None:  # the high-water mark of the process's own memory (VmHWM)
            with contextlib.suppress(OSError, IndexError):  # gone, or a zombie without memory
                status = Path(f"/proc/{process.pid}/status").read_text()
                peak_mb = max(peak_mb, int(status.split("VmHWM:")[1].split()[0]) / 1024)
            time.sleep(0.01)
    assert process.returncode == 1
    rows = read_output(tmp_path / "out.csv")
    assert rows[0]["error_type"] == "server_error" and len(rows[0]["error"]) < 1000
    assert rows[1]["error_type"] == "bad_response" and "larger than 64 MB" in rows[1]["error"]
    assert peak_mb < 250, f"peak memory {peak_mb:.0f} MB"


def test_compressed_bodies_are_capped_by_what_they_unpack_to(tmp_path: Path) -> None:
    """A gzip body's Content-Length is its compressed size: 80 KB that unpack to 80 MB are no
    answer within the cap, and an error body is still cut to its start."""
    import gzip

    packed = gzip.compress(b'{"error": {"message": "' + b"x" * (80 << 20), compresslevel=1)

    async def zipped(request: web.Request) -> web.StreamResponse:
        prompt = json.loads(await request.read())["messages"][-1]["content"]
        return web.Response(body=packed, status=500 if prompt == "error" else 200,
                            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})  # fmt: skip

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["error"], ["answer"]])
    with HostileServer(zipped) as server:
        result = subprocess.run([sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o",
                                 str(tmp_path / "out.csv"), "-m", "m", "--base-url", server.url, "--max-attempts",
                                 "1", "--concurrency", "1"], capture_output=True, text=True, env=clean_env())  # fmt: skip
    assert result.returncode == 1, result.stderr
    rows = read_output(tmp_path / "out.csv")
    assert rows[0]["error_type"] == "server_error" and len(rows[0]["error"]) < 1000
    assert rows[1]["error_type"] == "bad_response" and "larger than 64 MB" in rows[1]["error"]


def test_escape_sequences_from_a_server_are_never_printed_raw(tmp_path: Path) -> None:
    async def painter(request: web.Request) -> web.StreamResponse:
        prompt = json.loads(await request.read())["messages"][-1]["content"]
        if prompt == "fail":
            return json_response({"error": {"message": "\x1b[2J\x1b[31mcleared your screen\x1b[0m\x07"}}, 400)
        return json_response(completion("\x1b]0;new title\x07hello \x1b[1mbold\x1b[0m\u202eevil"))

    with HostileServer(painter) as server:
        answer = subprocess.run([sys.executable, "-m", "batchchat", "chat", "hi", "-m", "m", "--base-url", server.url],
                                capture_output=True, text=True, env=clean_env())  # fmt: skip
        failure = subprocess.run([sys.executable, "-m", "batchchat", "chat", "fail", "-m", "m", "--base-url",
                                  server.url], capture_output=True, text=True, env=clean_env())  # fmt: skip
    assert answer.returncode == 0 and "hello" in answer.stdout and "bold" in answer.stdout
    assert failure.returncode == 1 and "cleared your screen" in failure.stderr
    for printed in (answer.stdout, answer.stderr, failure.stdout, failure.stderr):
        assert "\x1b" not in printed and "\x07" not in printed and "\u202e" not in printed


def test_a_complete_stream_is_kept_whatever_follows_it(tmp_path: Path) -> None:
    async def sloppy(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": "s-1", "object": "chat.completion.chunk", "model": "m"}
        for chunk in ({**base, "choices": [{"index": 0, "delta": {"content": "whole answer"}, "finish_reason": None}]},
                      {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}):  # fmt: skip
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b'data: {"choices": [{"delta": {"content": \n\n')  # garbage, then the line drops
        request.transport.close()
        return response

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hi"]])
    with HostileServer(sloppy) as server:
        result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "m", "--base-url", server.url, "--stream")
    assert result.exit_code == 0, result.stderr
    row = read_output(tmp_path / "out.csv")[0]
    assert row["response"] == "whole answer" and row["attempts"] == "1" and row["total_tokens"] == "5"
    assert len(server.requests) == 1  # kept, not paid for again


def test_hard_links_at_the_journal_and_lock_names_are_refused(tmp_path: Path, sim: BackgroundSimulator) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"]])
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("out.csv.lock", "out.csv.journal"):
        os.link(victim, tmp_path / name)
        result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "sim-chat", "--base-url", sim.url)
        assert result.exit_code == 2 and "hard link" in result.stderr, result.stderr
        assert victim.read_text() == "precious"
        (tmp_path / name).unlink()
    assert sim.requests == []


def test_rewriting_an_output_keeps_its_owner(tmp_path: Path, sim: BackgroundSimulator) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"]])
    output = tmp_path / "out.csv"
    assert cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url).exit_code == 0
    os.chown(output, 65534, 65534)
    write_csv(source, ["prompt"], [["a"], ["b"]])
    assert cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url).exit_code == 0
    assert (output.stat().st_uid, output.stat().st_gid) == (65534, 65534)


def test_a_disk_with_no_room_is_found_before_anything_is_paid_for(tmp_path: Path, sim: BackgroundSimulator,
                                                                 small_disk: Any) -> None:  # fmt: skip
    disk = small_disk("256k")
    fill(disk)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"q{i}"] for i in range(20)])
    result = cli("run", "-i", source, "-o", disk / "out.csv", "-m", "sim-chat", "--base-url", sim.url)
    assert result.exit_code == 2 and f"the output folder {disk} has no room" in result.stderr
    assert sim.requests == [] and not list(disk.glob("out.csv*"))


def test_deeply_nested_json_from_a_server_is_a_bad_answer_not_a_crash(tmp_path: Path) -> None:
    async def deep(request: web.Request) -> web.StreamResponse:
        prompt = json.loads(await request.read())["messages"][-1]["content"]
        text = "[" * 200_000 + "]" * 200_000 if prompt == "deep" else json.dumps(completion("fine"))
        return web.Response(text=text, content_type="application/json")

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["plain"], ["deep"]])
    with HostileServer(deep) as server:
        result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "m", "--base-url", server.url,
                     "--max-attempts", "1")  # fmt: skip
    assert result.exit_code == 1, result.stderr
    rows = read_output(tmp_path / "out.csv")
    assert rows[0]["status"] == "ok" and rows[1]["error_type"] == "bad_response"
    journal = Path(f"{tmp_path / 'out.csv'}.journal")
    with journal.open("a") as f:
        f.write('{"key": ' + "[" * 100_000 + "]" * 100_000 + ', "status": "ok"}\n')
    again = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "m", "--base-url", server.url, "--dry-run")
    assert again.exit_code == 0 and "1 damaged record" in again.stdout


def test_param_values_a_cap_relies_on_are_checked(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hi"]])
    for param, message in (("max_tokens=100000.0", "must be a whole number of at least 1"),
                           ("temperature=Infinity", "NaN and Infinity are not JSON numbers"),
                           ("seed=NaN", "NaN and Infinity are not JSON numbers")):  # fmt: skip
        result = cli("run", "-i", source, "-m", "m", "--provider", "sim", "--param", param)
        assert result.exit_code == 2 and message in result.stderr, (param, result.stderr)
    job = tmp_path / "job.toml"
    job.write_text('input = "in.csv"\nmodel = "m"\nprovider = "sim"\n[params]\nseed = nan\n')
    result = cli("run", job)
    assert result.exit_code == 2 and "must be a finite number" in result.stderr


@pytest.mark.slow
def test_a_header_wider_than_a_megabyte_is_read(tmp_path: Path, sim: BackgroundSimulator) -> None:
    names = [f"a_rather_long_column_name_{i}" for i in range(60_000)]  # about 1.9 MB of header
    source = tmp_path / "wide.csv"
    source.write_text(",".join(["prompt", *names]) + "\n" + ",".join(["hi"] + ["x"] * len(names)) + "\n")
    result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "sim-chat", "--base-url", sim.url)
    assert result.exit_code == 0, result.stderr


def test_a_key_read_with_its_line_break_is_trimmed_or_refused(tmp_path: Path, sim: BackgroundSimulator) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hi"]])
    trimmed = subprocess.run([sys.executable, "-m", "batchchat", "run", "-i", str(source), "-m", "sim-chat",
                              "--base-url", sim.url], capture_output=True, text=True,
                             env={**clean_env(), "TOGETHER_API_KEY": f"{CANARY}\r\n"})  # fmt: skip
    assert trimmed.returncode == 0 and sim.requests[-1]["authorization"] == f"Bearer {CANARY}"
    broken = subprocess.run([sys.executable, "-m", "batchchat", "run", "-i", str(source), "-m", "sim-chat",
                             "--base-url", sim.url], capture_output=True, text=True,
                            env={**clean_env(), "TOGETHER_API_KEY": "sk-one\nsk-two"})  # fmt: skip
    assert broken.returncode == 2 and "holds spaces or control characters" in broken.stderr
    assert "sk-one" not in broken.stderr and "ExceptionGroup" not in broken.stderr


def test_chat_prints_an_answer_a_server_sent_whole_when_asked_to_stream() -> None:
    async def whole(request: web.Request) -> web.StreamResponse:
        return json_response(completion("the whole answer"))

    with HostileServer(whole) as server:
        result = subprocess.run([sys.executable, "-m", "batchchat", "chat", "hi", "--stream", "-m", "m",
                                 "--base-url", server.url], capture_output=True, text=True, env=clean_env())  # fmt: skip
    assert result.returncode == 0 and "the whole answer" in result.stdout


def test_a_placeholder_key_a_local_server_takes_leaves_the_answers_as_they_are(tmp_path: Path) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return json_response(completion("The box is EMPTY, an example with an x."))

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["what is in the box?"]])
    output = tmp_path / "out.csv"
    with HostileServer(answer) as server:
        for key in ("EMPTY", "x"):  # what vLLM's and other servers' docs tell users to pass
            result = subprocess.run([sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o", str(output),
                                     "-m", "m", "--base-url", server.url, "--restart"],
                                    capture_output=True, text=True, env={**clean_env(), "TOGETHER_API_KEY": key})  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert read_output(output)[0]["response"] == "The box is EMPTY, an example with an x."


def test_a_key_echoed_in_any_field_or_streamed_in_pieces_is_redacted(tmp_path: Path) -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        token = auth.split(" ", 1)[1]
        prompt = json.loads(await request.read())["messages"][-1]["content"]
        if prompt == "stream":
            response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            text = f"your key: {token}!"
            pieces = [text[i : i + 3] for i in range(0, len(text), 3)]  # the key split across chunks
            for piece in pieces:
                chunk = {"id": "s", "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}  # fmt: skip
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            last = {"id": "s", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            await response.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
            return response
        body = completion(f"token {token}", id=f"id-{auth}", model=f"m-{token}")
        body["choices"][0]["finish_reason"] = f"stop {auth}"
        return json_response(body)

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["fields"]])
    with HostileServer(echo) as server:
        url = server.url.replace("http://", "http://alice:hunter2pass@")
        run = subprocess.run([sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o",
                              str(tmp_path / "out.csv"), "-m", "m", "--base-url", url],
                             capture_output=True, text=True, env=clean_env())  # fmt: skip
        streamed = subprocess.run([sys.executable, "-m", "batchchat", "chat", "stream", "--stream", "-m", "m",
                                   "--base-url", server.url], capture_output=True, text=True,
                                  env={**clean_env(), "TOGETHER_API_KEY": CANARY})  # fmt: skip
    assert run.returncode == 0, run.stderr
    basic = base64.b64encode(b"alice:hunter2pass").decode()
    written = (tmp_path / "out.csv").read_text() + Path(f"{tmp_path / 'out.csv'}.journal").read_text()
    assert "hunter2pass" not in written and basic not in written
    assert streamed.returncode == 0 and CANARY not in streamed.stdout and "your key: [redacted]!" in streamed.stdout


LOCK_INTERRUPTED = r"""
import os, signal, sys
from pathlib import Path
from batchchat.store import lock

def stop(*_):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, stop)  # as the CLI has it
real = lock.fcntl.flock
def flock(fd, operation):  # SIGTERM arrives between the lock file's making and its locking
    os.kill(os.getpid(), signal.SIGTERM)
    return real(fd, operation)
lock.fcntl.flock = flock
try:
    lock.OutputLock(Path(sys.argv[1])).acquire()
except KeyboardInterrupt:
    print("interrupted")
"""


def test_a_sigterm_while_the_lock_is_taken_leaves_no_lock_file(tmp_path: Path) -> None:
    output = tmp_path / "out.parquet"
    done = subprocess.run([sys.executable, "-c", LOCK_INTERRUPTED, str(output)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.stdout.strip() == "interrupted", done.stderr
    assert not (tmp_path / "out.parquet.lock").exists()
