"""Provider batches pay once: result files of any shape are read whole (one bad line costs no
other answer, a good line wins over an error line for the same request, repeats are counted),
and calls that make something (uploads, batches) are made once, whatever fails or is killed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from batchchat.core.reading import read_completion

from .helpers import cli, read_output, write_csv
from .hostile_server import HostileServer, completion
from .test_batch_api import run_until
from .test_paid import COMPLETION, PROPERTY

QUESTIONS = [f"question {i}" for i in range(6)]


@dataclass
class Misbehaving:
    """How ``FakeBatches`` misbehaves, as providers and proxies may."""

    seconds: float = 0.0  # a batch runs this long (0: finished when made)
    create_fails: int = 0  # the first creates make their batch, then answer 502
    list_lag: float = 0.0  # a batch shows in the list only this long after it was made
    list_404_after_fail: float = 0.0  # after a create that failed, the list answers 404 this long
    get_404s: int = 0  # the first looks at a batch answer 404
    cancel_finished: int = 200  # the status of a cancel of a batch that has finished
    id_case: bool = False  # a batch looked at answers with its id in capitals
    endless_list: bool = False  # the list says there is more, whatever "after" asks


class FakeBatches:
    """A Batch API whose batches answer with the result lines a test gives, by row."""

    def __init__(self) -> None:
        self.server = HostileServer(self.handle)
        self.reset()

    def reset(self, **misbehaving: Any) -> None:
        self.how = Misbehaving(**misbehaving)
        self.lines: dict[int, list[bytes]] = {}  # row -> its result lines, in order (output file first)
        self.errors: dict[int, list[bytes]] = {}  # row -> its lines in the error file
        self.stray: list[bytes] = []  # lines for no request: malformed, unknown ids
        self.files: dict[str, tuple[str, bytes]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.made_at: dict[str, float] = {}
        self.failed_at = 0.0
        self.posts = 0
        self.creates = 0
        self.cancels = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.removeprefix("/v1")
        if request.method == "POST":
            self.posts += 1
        if request.method == "POST" and path == "/files":
            name, data = uploaded(request.headers["Content-Type"], await request.read())
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = (name, data)
            return web.json_response({"id": file_id, "filename": name, "purpose": "batch-api"})
        if request.method == "GET" and path == "/files":
            return web.json_response({"data": [{"id": i, "filename": n} for i, (n, _) in self.files.items()]})
        if request.method == "POST" and path == "/batches":
            body = await request.json()
            made = self._made(body["input_file_id"])
            self.creates += 1
            if self.creates <= self.how.create_fails:
                self.failed_at = time.monotonic()
                return web.Response(status=502, text="<html>502 Bad Gateway</html>", content_type="text/html")
            return web.json_response({"job": made})
        if request.method == "GET" and path == "/batches":
            if time.monotonic() < self.failed_at + self.how.list_404_after_fail:
                return web.json_response({"error": {"message": "not found"}}, status=404)
            now = time.monotonic()
            listed = [self._shown(b) for b in self.batches if now >= self.made_at[b] + self.how.list_lag]
            if self.how.endless_list:
                return web.json_response({"data": listed, "has_more": True})
            return web.json_response(listed)
        if request.method == "GET" and path.startswith("/batches/"):
            if self.how.get_404s > 0:
                self.how.get_404s -= 1
                return web.json_response({"error": "no such batch"}, status=404)
            shown = self._shown(path.split("/")[2])
            return web.json_response({**shown, "id": shown["id"].upper()} if self.how.id_case else shown)
        if request.method == "POST" and path.endswith("/cancel"):
            batch = self._shown(path.split("/")[2])
            if batch["status"] == "COMPLETED":
                return web.json_response({"error": "cannot cancel a completed batch"}, status=self.how.cancel_finished)
            self.cancels += 1
            self.batches[batch["id"]]["status"] = "CANCELLED"
            return web.json_response(self._shown(batch["id"]))
        if request.method == "GET" and path.endswith("/content"):
            return web.Response(body=self.files[path.split("/")[2]][1])
        return web.json_response({"error": {"message": f"no {request.method} {path}"}}, status=404)

    def _shown(self, batch_id: str) -> dict[str, Any]:
        batch = self.batches[batch_id]
        if batch["status"] == "IN_PROGRESS" and time.monotonic() >= self.made_at[batch_id] + self.how.seconds:
            batch["status"] = "COMPLETED"
        return dict(batch)

    def _made(self, file_id: str) -> dict[str, Any]:
        output: list[bytes] = []
        errors: list[bytes] = []
        for raw in self.files[file_id][1].splitlines():
            line = json.loads(raw)
            row = int(line["body"]["messages"][-1]["content"].split()[-1])
            custom_id = line["custom_id"].encode()
            given = self.lines.get(row, [answer_line(completion(f"answer {row}"))])
            output += [part.replace(b"@ID@", custom_id) for part in given]
            errors += [part.replace(b"@ID@", custom_id) for part in self.errors.get(row, [])]
        output += self.stray
        batch_id = f"batch-{len(self.batches) + 1}"
        out, err = f"out-{batch_id}", f"err-{batch_id}"
        self.files[out] = ("output.jsonl", b"\n".join(output) + b"\n")
        self.files[err] = ("errors.jsonl", b"\n".join(errors) + b"\n")
        self.batches[batch_id] = {"id": batch_id, "status": "IN_PROGRESS", "input_file_id": file_id,
                                  "output_file_id": out, "error_file_id": err}  # fmt: skip
        self.made_at[batch_id] = time.monotonic()
        return self._shown(batch_id)

    def per_file(self) -> dict[str, int]:
        return dict(Counter(batch["input_file_id"] for batch in self.batches.values()))


def uploaded(content_type: str, body: bytes) -> tuple[str, bytes]:
    """The name and bytes of the multipart field ``file`` (the server has read the body already)."""
    boundary = content_type.split("boundary=")[1].strip('"').encode()
    for part in body.split(b"--" + boundary):
        head, _, data = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            name = head.split(b'filename="')[1].split(b'"')[0].decode()
            return name, data.removesuffix(b"\r\n")
    raise AssertionError("no file in the upload")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBatches]:
    server = FakeBatches()
    with server.server:
        yield server


def answer_line(body: Any, status: Any = 200) -> bytes:
    return json.dumps({"custom_id": "@ID@", "response": {"status_code": status, "body": body}}).encode()


def error_line(message: str = "it failed") -> bytes:
    return json.dumps({"custom_id": "@ID@", "error": {"message": message, "code": "server_error"}}).encode()


KINDS = st.sampled_from(["ok", "odd", "error", "status500", "empty_choices"])
LINE = st.tuples(KINDS, COMPLETION)
STRAY = st.lists(st.sampled_from([b"{not json", b"[1, 2]", b'{"response": {}}',
                                  json.dumps({"custom_id": "unknown-id", "response": {
                                      "status_code": 200, "body": completion("stray", id="s")}}).encode()]),
                 max_size=3)  # fmt: skip


def lines_of(kind: str, body: dict[str, Any], row: int) -> tuple[bytes | None, bytes | None, Any]:
    """(output line, error line, the body if it is an answer)."""
    if kind == "ok":
        good = completion(f"answer {row}", id=f"r{row}")
        return answer_line(good), None, good
    if kind == "odd":
        return answer_line(body), None, body
    if kind == "error":
        return None, error_line(), None
    if kind == "status500":
        return answer_line({"error": {"message": "boom"}}, 500), None, None
    empty = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 0}}
    return answer_line(empty), None, empty


def rank(body: Any) -> int:
    if body is None:
        return 0
    return 1 if read_completion(body).problem is not None else 2


@PROPERTY
@given(st.lists(st.lists(LINE, max_size=3), min_size=1, max_size=4), STRAY)
def test_result_files_of_any_shape_give_one_row_each_the_best_line_winning(fake: FakeBatches, rows: list[Any],
                                                                          stray: list[bytes]) -> None:  # fmt: skip
    import tempfile

    fake.reset()
    fake.stray = stray
    expected: list[Any] = []
    prompt_tokens = 0
    for row, kinds in enumerate(rows):
        best: Any = None
        seen = False
        fake.lines[row] = []  # no line unless given
        for kind, body in kinds:
            out, err, answer = lines_of(kind, body, row)
            fake.lines.setdefault(row, []).extend([out] if out else [])
            fake.errors.setdefault(row, []).extend([err] if err else [])
            if answer is not None:
                prompt_tokens += read_completion(answer).usage.prompt_tokens or 0
            if not seen or rank(answer) > rank(best):
                best, seen = answer, True
        expected.append((seen, best))
    prompt_tokens += 3 * sum(b"unknown-id" in line for line in stray)  # an answer to no request is paid too
    folder = Path(tempfile.mkdtemp())
    args = fake_job(fake, folder, len(rows), "out.parquet")
    output = folder / "out.parquet"
    first = cli(*args)
    assert first.exit_code in (0, 1), first.stderr
    assert "internal error" not in first.stderr
    assert f"tokens this run: {prompt_tokens:,} prompt" in first.stderr or prompt_tokens == 0, first.stderr
    out = read_output(output)
    assert len(out) == len(rows)
    for row, (seen, best) in zip(out, expected, strict=True):
        if best is not None and read_completion(best).problem is None:
            assert row["status"] == "ok" and row["response"] == read_completion(best).content
        elif best is not None:
            assert row["status"] == "error" and row["error_type"] == "bad_response"
        elif seen:
            assert row["status"] == "error" and row["error_type"] in ("server_error", "bad_response")
        else:
            assert row["status"] == "error" and "completed without a result for this request" in row["error"]
    posts = fake.posts
    again = cli(*args)
    assert again.exit_code == first.exit_code and fake.posts == posts  # nothing uploaded or made again
    reread = read_output(output)
    assert {r.pop("paid") for r in reread} <= {"earlier_run", "shared"}  # this run paid for nothing
    assert reread == [{k: v for k, v in r.items() if k != "paid"} for r in out]


def fake_job(fake: FakeBatches, folder: Path, rows: int, output: str) -> tuple[str | Path, ...]:
    """A batch run of ``rows`` rows (``row 0``, ``row 1``, ...) against ``fake``."""
    source = write_csv(folder / "in.csv", ["prompt"], [[f"row {i}"] for i in range(rows)])
    return ("run", "-i", source, "-o", folder / output, "-m", "m", "--base-url", fake.server.url, "--batch-api",
            "--poll-every", "0.01")  # fmt: skip


def test_a_good_line_then_an_error_line_for_it_keeps_the_answer_and_says_so(fake: FakeBatches, tmp_path: Path) -> None:
    fake.reset()
    fake.lines = {0: [answer_line(completion("kept")), answer_line({"choices": []})], 1: [answer_line(completion("b"))]}
    fake.errors = {0: [error_line("a later error")]}
    args = fake_job(fake, tmp_path, 2, "out.csv")
    output = tmp_path / "out.csv"
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    rows = read_output(output)
    assert [(r["status"], r["response"], r["prompt_tokens"]) for r in rows] == [("ok", "kept", "3"), ("ok", "b", "3")]
    assert "gave 2 result lines for requests answered already" in result.stderr
    assert "tokens this run: 6 prompt" in result.stderr  # the answer's tokens, not zero
    posts = fake.posts
    assert cli(*args, "--retry-errors").exit_code == 0 and fake.posts == posts  # nothing to pay again


def test_one_unreadable_line_among_fifty_costs_no_other_answer(fake: FakeBatches, tmp_path: Path) -> None:
    fake.reset()
    fake.lines = {i: [answer_line(completion(f"answer {i}"))] for i in range(50)}
    fake.lines[17] = [answer_line(completion("half \ud83d"))]
    fake.lines[31] = [answer_line({"choices": [{"message": {"content": 5}, "finish_reason": {"x": 1}}]})]
    args = fake_job(fake, tmp_path, 50, "out.parquet")
    output = tmp_path / "out.parquet"
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    rows = read_output(output)
    assert all(r["status"] == "ok" for r in rows) and rows[17]["response"] == "half \ufffd"
    assert (rows[31]["response"], rows[31]["finish_reason"]) == ("5", '{"x": 1}')
    posts = fake.posts
    assert cli(*args).exit_code == 0 and fake.posts == posts


# --- made once: uploads and batches ---


def batch_run(sim: Any, tmp_path: Path, *flags: str) -> list[str]:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[q] for q in QUESTIONS])
    return ["run", "-i", str(source), "-o", str(tmp_path / "out.csv"), "-m", "sim-chat", "--base-url", sim.url,
            "--batch-api", "--poll-every", "0.05", *flags]  # fmt: skip


@pytest.mark.parametrize("dialect", ["together", "openai"])
def test_a_create_that_fails_after_making_its_batch_is_adopted_not_made_again(tmp_path: Path, sim_factory: Any,
                                                                             dialect: str) -> None:  # fmt: skip
    sim = sim_factory(batch_dialect=dialect, batch_seconds=0.2, batch_create_fails=1)
    result = cli(*batch_run(sim, tmp_path, "--provider", dialect))
    assert result.exit_code == 0, result.stderr
    stats = sim.stats()
    assert stats["batches_created"] == 1 and stats["batches_per_file"] == 1 and stats["answered_twice"] == 0
    assert [r["status"] for r in read_output(tmp_path / "out.csv")] == ["ok"] * len(QUESTIONS)


@pytest.mark.slow
def test_a_create_slower_than_the_timeout_makes_one_batch(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=0.2, batch_create_delay_ms=2500)
    result = cli(*batch_run(sim, tmp_path, "--timeout", "1"))
    assert result.exit_code == 0, result.stderr
    assert sim.stats()["batches_created"] == 1 and sim.stats()["answered_twice"] == 0


def test_an_upload_that_fails_after_keeping_its_file_is_adopted(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=0.2, batch_upload_fails=1)
    result = cli(*batch_run(sim, tmp_path))
    assert result.exit_code == 0, result.stderr
    stats = sim.stats()
    assert stats["files_uploaded"] == 1 and stats["batches_created"] == 1 and stats["answered_twice"] == 0


def killed_at(args: list[str], when: Any, sim: Any) -> None:
    """A run of the CLI, SIGKILLed when ``when`` holds of the simulator's counters."""
    run_until(args, lambda: when(sim.stats()))


def interrupted_then_done(args: list[str], flags: list[str], sim: Any) -> None:
    """A run (with ``flags``) Ctrl-C'd 1.5 s in, while it waits for the batch a killed run's
    create makes; then, once that create acted, a run to the end: one batch, nothing paid twice."""
    waiting = subprocess.Popen([sys.executable, "-m", "batchchat", *args, *flags], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(1.5)
    waiting.send_signal(signal.SIGINT)
    assert waiting.wait(timeout=30) == 130
    time.sleep(3)  # the killed run's create acts
    done = subprocess.run([sys.executable, "-m", "batchchat", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sim.stats()["batches_created"] == 1 and sim.stats()["answered_twice"] == 0


KILLS = {
    # Every call waits 100 ms at the server's door, so a kill falls at a known step. A slow upload:
    # the file is kept 1.5 s after it arrives
    "during a slow upload": ({"batch_upload_delay_ms": 1500}, lambda s: s.get("uploads_taken", 0) >= 1),
    "after a slow upload": ({"batch_upload_delay_ms": 1500}, lambda s: s.get("files_uploaded", 0) >= 1),
    # a slow create: the batch is made 1.5 s after the call arrives, whether or not the caller waits
    "before a slow create": ({"batch_create_delay_ms": 1500}, lambda s: s.get("files_uploaded", 0) >= 1),
    "during a slow create": ({"batch_create_delay_ms": 1500}, lambda s: s.get("creates_taken", 0) >= 1),
    "after a slow create": ({"batch_create_delay_ms": 1500}, lambda s: s.get("batches_created", 0) >= 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(KILLS))
def test_a_kill_around_a_slow_upload_or_create_then_a_rerun_makes_one_batch_per_file(
    tmp_path: Path, sim_factory: Any, moment: str
) -> None:
    config, when = KILLS[moment]
    sim = sim_factory(batch_seconds=0.3, batch_delay_ms=100, **config)
    args = batch_run(sim, tmp_path)
    killed_at(args, when, sim)
    rerun = subprocess.run([sys.executable, "-m", "batchchat", *args], capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert [r["status"] for r in read_output(tmp_path / "out.csv")] == ["ok"] * len(QUESTIONS)
    stats = sim.stats()
    assert stats["batches_per_file"] == 1  # no file had a second batch made over it
    assert stats["batches_created"] == 1 and stats["answered_twice"] == 0  # one batch, each answer paid once
    if moment == "after a slow upload":
        assert stats["files_uploaded"] == 1  # the file the killed run uploaded was found and taken


# --- made once, whatever the provider or the user does meanwhile ---


def test_a_create_that_fails_then_shows_late_in_the_list_is_adopted(fake: FakeBatches, tmp_path: Path) -> None:
    fake.reset(create_fails=1, list_lag=3.0)  # the list lags behind the creates, as eventual consistency does
    result = cli(*fake_job(fake, tmp_path, 6, "out.csv"))
    assert result.exit_code == 0, result.stderr
    assert fake.per_file() == {"file-1": 1}


def test_a_look_that_fails_after_a_create_that_may_have_acted_never_drops_the_file(fake: FakeBatches,
                                                                                  tmp_path: Path) -> None:  # fmt: skip
    fake.reset(create_fails=1, list_404_after_fail=3.0)
    args = fake_job(fake, tmp_path, 6, "out.csv")
    first = cli(*args)
    assert first.exit_code == 2, first.stderr  # it could not tell: the run stops, the steps kept
    time.sleep(3)
    again = cli(*args)
    assert again.exit_code == 0, again.stderr
    assert fake.per_file() == {"file-1": 1} and len(fake.files) == 3  # one upload, one batch and its files


def test_a_batch_missing_for_a_moment_is_not_taken_as_gone(fake: FakeBatches, tmp_path: Path) -> None:
    fake.reset(seconds=0.3, get_404s=1, list_lag=2.0)  # nor in the list, yet
    result = cli(*fake_job(fake, tmp_path, 6, "out.csv"))
    assert result.exit_code == 0, result.stderr
    assert fake.per_file() == {"file-1": 1} and fake.posts == 2  # one upload, one create: nothing asked twice


def test_cancelling_a_batch_that_finished_meanwhile_is_not_a_failure(fake: FakeBatches, tmp_path: Path) -> None:
    fake.reset(seconds=0.5, cancel_finished=400)
    args = fake_job(fake, tmp_path, 6, "out.csv")
    assert cli(*args, "--detach").exit_code == 0
    time.sleep(0.6)
    result = cli(*args, "--cancel")
    assert result.exit_code == 0, result.stderr  # finished: nothing to stop, and its answers are collected
    assert [r["status"] for r in read_output(tmp_path / "out.csv")] == ["ok"] * 6


def test_error_lines_that_say_what_they_used_are_counted_as_paid(fake: FakeBatches, tmp_path: Path) -> None:
    fake.reset()
    used = {"prompt_tokens": 7, "completion_tokens": 1}
    fake.lines = {0: [answer_line({"error": {"message": "cut"}, "usage": used}, 500)],
                  1: [answer_line({"error": {"message": "x"}, "usage": used})], 2: [answer_line(completion("b"))]}  # fmt: skip
    result = cli(*fake_job(fake, tmp_path, 3, "out.csv"))
    assert result.exit_code == 1, result.stderr
    assert "tokens this run: 17 prompt" in result.stderr  # 7 + 7 + the answer's 3


@pytest.mark.slow
def test_ctrl_c_while_a_rerun_waits_for_a_killed_runs_create_makes_none(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=0.3, batch_create_delay_ms=4000)
    args = batch_run(sim, tmp_path)
    killed_at(args, lambda s: s.get("creates_taken", 0) >= 1, sim)
    interrupted_then_done(args, [], sim)  # it waited for the batch the killed run's create makes


@pytest.mark.slow
def test_cancel_after_a_kill_during_a_create_cancels_the_batch_it_made(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=30, batch_create_delay_ms=1500)
    args = batch_run(sim, tmp_path)
    killed_at(args, lambda s: s.get("creates_taken", 0) >= 1, sim)
    cancelled = subprocess.run([sys.executable, "-m", "batchchat", *args, "--cancel"], capture_output=True, text=True,
                               timeout=120)  # fmt: skip
    assert cancelled.returncode == 1, cancelled.stderr  # its rows: batch_cancelled
    stats = sim.stats()
    assert stats["batches_created"] == 1 and stats.get("batches_cancelled") == 1


@pytest.mark.slow
def test_cancel_makes_no_batch_of_an_upload_a_killed_run_left(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=0.3, batch_upload_delay_ms=1000)
    args = batch_run(sim, tmp_path)
    killed_at(args, lambda s: s.get("uploads_taken", 0) >= 1, sim)
    time.sleep(1.2)  # the upload is kept
    subprocess.run([sys.executable, "-m", "batchchat", *args, "--cancel"], capture_output=True, timeout=120)
    assert sim.stats()["batches_created"] == 0


@pytest.mark.slow
def test_an_upload_a_killed_run_left_gets_no_batch_once_its_requests_were_answered_live(tmp_path: Path,
                                                                                       sim_factory: Any) -> None:  # fmt: skip
    sim = sim_factory(batch_seconds=0.3, batch_upload_delay_ms=1000)
    args = batch_run(sim, tmp_path)
    killed_at(args, lambda s: s.get("uploads_taken", 0) >= 1, sim)
    time.sleep(1.2)
    live = [a for a in args if a not in ("--batch-api", "--poll-every", "0.05")]
    assert cli(*live).exit_code == 0  # answered live
    write_csv(tmp_path / "in.csv", ["prompt"], [[q] for q in [*QUESTIONS, "one more"]])  # tonight's new row
    batched = cli(*args)
    assert batched.exit_code == 0, batched.stderr
    stats = sim.stats()
    assert stats["batch_lines"] == 1 and stats["answered_twice"] == 0  # the new row alone


def test_a_batch_answering_under_its_id_spelled_otherwise_is_collected(fake: FakeBatches, tmp_path: Path) -> None:
    fake.reset(seconds=0.2, id_case=True)
    result = cli(*fake_job(fake, tmp_path, 6, "out.csv"))
    assert result.exit_code == 0, result.stderr
    assert fake.per_file() == {"file-1": 1}


def test_a_list_that_never_ends_is_read_as_far_as_it_goes(fake: FakeBatches, tmp_path: Path) -> None:
    fake.reset(seconds=0.2, endless_list=True, create_fails=1)  # the failed create is looked for in the list
    result = cli(*fake_job(fake, tmp_path, 6, "out.csv"))
    assert result.exit_code == 0, result.stderr
    assert fake.per_file() == {"file-1": 1}


@pytest.mark.slow
def test_a_create_that_acts_after_its_batch_was_made_again_is_found_cancelled_and_counted(fake: FakeBatches,
                                                                                          tmp_path: Path) -> None:  # fmt: skip
    fake.reset(create_fails=1, list_lag=11.0, seconds=13.0)  # the first shows only after the second was made
    result = cli(*fake_job(fake, tmp_path, 6, "out.csv"))
    assert result.exit_code == 0, result.stderr
    assert fake.per_file() == {"file-1": 2}  # made twice: the provider acted on both creates
    assert fake.cancels == 1 and "the provider made 1 extra batch of files submitted once" in result.stderr
    assert "tokens this run: 36 prompt" in result.stderr  # both batches' answers (this fake's cancel keeps all): paid


@pytest.mark.slow
def test_ctrl_c_while_cancel_waits_for_a_killed_runs_create_drops_nothing(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=0.3, batch_create_delay_ms=4000)
    args = batch_run(sim, tmp_path)
    killed_at(args, lambda s: s.get("creates_taken", 0) >= 1, sim)
    interrupted_then_done(args, ["--cancel"], sim)


def test_a_batch_gone_for_good_is_taken_as_gone_over_detached_runs_too(tmp_path: Path) -> None:
    from batchchat.execute.batch import MISSES
    from batchchat.job.spec import SimConfig
    from batchchat.simulator import BackgroundSimulator

    source = write_csv(tmp_path / "in.csv", ["prompt"], [[q] for q in QUESTIONS])
    output = tmp_path / "out.csv"
    with BackgroundSimulator(SimConfig(batch_seconds=60)) as first:
        url, port = first.url, int(first.url.rsplit(":", 1)[1].split("/")[0])
        args = ("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", url, "--batch-api", "--detach")
        assert cli(*args).exit_code == 0
    with BackgroundSimulator(SimConfig(batch_seconds=0.1), port=port) as second:  # started again: it forgot
        for _ in range(MISSES):  # each cron run looks once
            assert cli(*args).exit_code == 0
        assert second.stats()["batches_created"] == 1  # taken as gone: its requests asked again
        time.sleep(0.2)
        assert cli(*args).exit_code == 0
    assert {r["status"] for r in read_output(output)} == {"ok"}

