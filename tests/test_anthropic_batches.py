"""Anthropic's Message Batches (``--provider anthropic --batch-api``) against the simulator, over
real HTTP: requests inline with Anthropic-legal ids, results read from ``results_url``, errored,
expired and cancelled results as error rows, re-asks in later rounds, and a create whose answer
was lost (a 502, a kill) found by its time and size, never made twice, and never confused with
another batch of the same size."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from batchchat.core.errors import RequestError
from batchchat.providers import BATCH_WIRES
from batchchat.providers.base import BatchInfo

from .helpers import cli, read_output, write_csv
from .test_batch_api import run_until, steps, without_timing

WIRE = BATCH_WIRES["anthropic"]
QUESTIONS = [f"question {i}" for i in range(12)] + ["question 3"]  # a repeat shares its answer


def questions(tmp_path: Path, rows: list[str] = QUESTIONS) -> Path:
    return write_csv(tmp_path / "in.csv", ["id", "prompt"], [[str(i), p] for i, p in enumerate(rows)])


def batch_run(sim: Any, tmp_path: Path, *flags: str) -> list[str]:
    return ["run", "-i", str(questions(tmp_path)), "-o", str(tmp_path / "out.csv"), "-m", "sim-chat", "--base-url",
            sim.url, "--provider", "anthropic", "--batch-api", "--poll-every", "0.05", *flags]  # fmt: skip


def test_a_message_batch_run_writes_the_table_a_live_run_writes(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=0.3)
    source = questions(tmp_path)
    common = ("-i", source, "-m", "sim-chat", "--base-url", sim.url, "--provider", "anthropic")
    live = cli("run", *common, "-o", tmp_path / "live.csv")
    assert live.exit_code == 0, live.stderr
    batched = cli("run", *common, "-o", tmp_path / "batch.csv", "--batch-api")
    assert batched.exit_code == 0, batched.stderr
    assert without_timing(read_output(tmp_path / "batch.csv")) == without_timing(read_output(tmp_path / "live.csv"))
    assert all(r["request_id"].startswith("msgbatch_sim") for r in read_output(tmp_path / "batch.csv"))
    store = sim.simulator.batches
    [batch] = store.batches.values()
    assert batch.inline and len(batch.lines) == 12  # the repeat is asked once, inline: no file uploaded
    assert sim.stats()["files_uploaded"] == 0 and sim.stats()["answered_twice"] == 12
    answered = [json.loads(line)["custom_id"] for line in batch.results.splitlines()]
    assert answered != [line["custom_id"] for line in batch.lines]  # results came in another order
    assert "1 batch submitted (12 requests), 1 collected" in batched.stderr


def test_a_batch_line_is_a_messages_body_under_an_anthropic_legal_id() -> None:
    from batchchat.core.records import ChatRequest

    request = ChatRequest(0, "0123456789abcdef0123456789abcdef.2", "claude-x",
                          ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}))  # fmt: skip
    line = json.loads(WIRE.line(request, "5eed1234"))
    assert line["custom_id"] == "5eed1234-0123456789abcdef0123456789abcdef_2"  # the file's mark; no "." allowed
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", line["custom_id"])
    assert line["params"]["system"] == "be brief" and line["params"]["max_tokens"] > 0
    assert line["params"]["messages"] == [{"role": "user", "content": "hi"}]
    assert json.loads(WIRE.create("held-x", WIRE.line(request, "5eed1234") * 2)) == {"requests": [line, line]}
    back = WIRE.result({"custom_id": line["custom_id"], "result": {"type": "canceled"}})
    assert (back.custom_id, back.tag) == (request.key, "5eed1234") and back.error["code"] == "batch_cancelled"


@pytest.mark.parametrize(("data", "status", "done", "failed"), [
    ({"processing_status": "in_progress", "request_counts": {"processing": 3, "succeeded": 1, "errored": 0,
                                                               "canceled": 0, "expired": 0}}, "in_progress", 1, 0),
    ({"processing_status": "canceling", "request_counts": {}}, "cancelling", None, None),
    ({"processing_status": "ended", "request_counts": {"processing": 0, "succeeded": 2, "errored": 1, "canceled": 0,
                                                         "expired": 1}}, "completed", 4, 2),
    ({"processing_status": "ended", "cancel_initiated_at": "2026-12-08T01:02:03Z",
      "request_counts": {"processing": 0, "succeeded": 1, "errored": 0, "canceled": 3, "expired": 0}}, "cancelled", 4, 3),
])  # fmt: skip
def test_a_message_batch_is_read_in_neutral_words(data: dict[str, Any], status: str, done: int | None,
                                                  failed: int | None) -> None:  # fmt: skip
    info = WIRE.batch({"id": "msgbatch_1", "type": "message_batch", "created_at": "2026-12-08T01:00:00Z", **data})
    assert (info.status, info.done, info.failed) == (status, done, failed)
    assert info.created_at == 1796691600.0 and info.finished == (data["processing_status"] == "ended")
    with pytest.raises(RequestError):
        WIRE.batch({"id": "batch_1", "status": "completed"})  # an OpenAI batch is no message batch


def test_a_lost_create_is_matched_by_time_and_size_only() -> None:
    made = BatchInfo("msgbatch_1", "in_progress", total=12, created_at=1000.0)
    assert WIRE.over(made, "held-a", 12, (1000.5, 1060.0))  # a clock a little ahead of the provider's
    assert not WIRE.over(made, "held-a", 13, (1000.0, 1060.0))  # another size
    assert not WIRE.over(made, "held-a", 12, (2000.0, 2060.0))  # made long before the create was sent
    assert not WIRE.over(made, "held-a", 12, (500.0, 560.0))  # made long after the creates could act
    assert not WIRE.over(made, "held-a", 12, None)  # no create was ever sent
    assert WIRE.past(made, 2000.0) and not WIRE.past(made, 1000.0)  # a list newest first ends at an older one


def test_errored_results_are_error_rows_named_as_live_errors_and_the_rest_answered(tmp_path: Path,
                                                                                  sim_factory: Any) -> None:  # fmt: skip
    sim = sim_factory(batch_seconds=0.2, batch_error_rate=0.4, seed=2)
    result = cli(*batch_run(sim, tmp_path))
    assert result.exit_code == 1
    out = read_output(tmp_path / "out.csv")
    failed = [r for r in out if r["status"] == "error"]
    assert failed and len(failed) < len(out)
    assert {r["error_type"] for r in failed} == {"server_error"}  # api_error, as a live 500 is named
    assert all(r["response"] for r in out if r["status"] == "ok")


def test_an_expired_batch_keeps_what_it_finished_and_retry_errors_sends_the_rest(tmp_path: Path,
                                                                                sim_factory: Any) -> None:  # fmt: skip
    sim = sim_factory(batch_seconds=0.2, batch_expire_at=0.5)
    args = batch_run(sim, tmp_path)
    assert cli(*args).exit_code == 1
    out = read_output(tmp_path / "out.csv")
    expired = [r for r in out if r["status"] == "error"]
    assert {r["error_type"] for r in expired} == {"batch_expired"} and len(expired) == 6  # 6 of 12 done
    assert "expired before it was answered" in expired[0]["error"]
    again = cli(*args, "--retry-errors", "--live-retry")
    assert again.exit_code == 0, again.stderr
    assert all(r["status"] == "ok" for r in read_output(tmp_path / "out.csv"))
    assert sim.stats()["batches_created"] == 1 and sim.stats()["answered_twice"] == 0


def test_cancel_ends_the_batch_and_collects_what_it_finished(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=30)
    args = batch_run(sim, tmp_path)
    assert cli(*args, "--detach").exit_code == 0
    cancelled = cli(*args, "--cancel")
    assert cancelled.exit_code == 1, cancelled.stderr
    assert sim.stats()["batches_cancelled"] == 1
    assert "cancelled: 1 batch; what they finished before is kept" in cancelled.stderr
    out = read_output(tmp_path / "out.csv")
    assert {r["error_type"] for r in out} == {"batch_cancelled"}


def test_invalid_labels_are_asked_again_under_ids_anthropic_takes(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=0.1, labels=("yes", "no"), invalid_rate=0.5, seed=5)
    source = questions(tmp_path, [f"is {i} even?" for i in range(20)])
    output = tmp_path / "out.csv"
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--provider", "anthropic",
                 "--batch-api", "--poll-every", "0.05", "--labels", "yes,no", "--invalid-retries", "3")  # fmt: skip
    assert result.exit_code in (0, 1), result.stderr
    assert sim.stats()["batches_created"] >= 2  # the re-asks went in later rounds
    sent = [line["custom_id"] for batch in sim.simulator.batches.batches.values() for line in batch.lines]
    assert any(cid.endswith(("_2", "_3")) for cid in sent)  # key.2 went as TAG-key_2, and was taken
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{32}(_\d+)?", cid) for cid in sent)
    assert all(r["label"] in ("yes", "no") for r in read_output(output) if r["status"] == "ok")


def test_a_create_that_fails_after_making_its_batch_is_adopted_not_made_again(tmp_path: Path,
                                                                             sim_factory: Any) -> None:  # fmt: skip
    sim = sim_factory(batch_seconds=0.2, batch_create_fails=1)
    result = cli(*batch_run(sim, tmp_path))
    assert result.exit_code == 0, result.stderr
    stats = sim.stats()
    assert stats["batches_created"] == 1 and stats["batches_per_file"] == 1 and stats["answered_twice"] == 0
    assert [r["status"] for r in read_output(tmp_path / "out.csv")] == ["ok"] * len(QUESTIONS)


def test_results_are_read_from_the_apis_own_host_whatever_results_url_names(tmp_path: Path, sim_factory: Any,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Behind a gateway, ``results_url`` names Anthropic's host: the key is not sent there, and
    the results are read from the base URL's host all the same."""
    from batchchat.providers.anthropic import AnthropicBatches

    real = AnthropicBatches.batch

    def elsewhere(self: Any, data: Any) -> BatchInfo:
        info = real(self, data)
        far = f"https://attacker.test/v1/messages/batches/{info.id}/results"
        return BatchInfo(**{**info.__dict__, "results_url": far}) if info.results_url else info

    monkeypatch.setattr(AnthropicBatches, "batch", elsewhere)
    sim = sim_factory(batch_seconds=0.1)
    result = cli(*batch_run(sim, tmp_path))
    assert result.exit_code == 0, result.stderr
    assert [r["status"] for r in read_output(tmp_path / "out.csv")] == ["ok"] * len(QUESTIONS)


@pytest.mark.parametrize("where", ["https://attacker.test/v1/r", "https://127.0.0.1:{port}/v1/r"])
def test_the_batch_client_reads_no_url_off_the_apis_own_scheme_and_host(sim: Any, where: str) -> None:
    import asyncio

    from batchchat.client import ChatClient
    from batchchat.client.batches import BatchClient
    from batchchat.providers import dialect

    async def read() -> None:
        async with ChatClient(sim.url, "sk-ant-secret-0123456789", concurrency=1, timeout_s=5,
                              wire=dialect("anthropic")) as chat:  # fmt: skip
            port = sim.url.split(":")[2].split("/")[0]
            async for _ in BatchClient(chat, WIRE).lines(where.format(port=port)):
                pass

    with pytest.raises(RequestError, match="not read, so the key is not sent there"):
        asyncio.run(read())


def make_batch(url: str, custom_ids: list[str]) -> str:
    """A batch made by someone else on the same account: another job, the same size."""
    def params(cid: str) -> dict[str, Any]:
        return {"model": "sim-chat", "max_tokens": 16, "messages": [{"role": "user", "content": f"not ours: {cid}"}]}

    body = json.dumps({"requests": [{"custom_id": cid, "params": params(cid)} for cid in custom_ids]}).encode()
    request = urllib.request.Request(f"{url}/messages/batches", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return str(json.load(answer)["id"])


def killed_during_create_then_theirs(sim: Any, args: list[str], ids: str = "other-{}") -> str:
    """A run killed while its create is under way; once that create has acted, someone else
    makes a batch of as many requests. Theirs, newest, is listed first."""
    run_until(args, lambda: sim.stats().get("creates_taken", 0) >= 1)
    deadline = time.monotonic() + 30
    while sim.stats().get("batches_created", 0) < 1:  # the killed run's create acts
        assert time.monotonic() < deadline, "the killed run's create never acted"
        time.sleep(0.01)
    return make_batch(sim.url, [ids.format(i) for i in range(12)])


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["during a slow create", "after a slow create"])
def test_a_kill_around_a_create_then_a_rerun_makes_one_batch(tmp_path: Path, sim_factory: Any, moment: str) -> None:
    sim = sim_factory(batch_seconds=0.3, batch_delay_ms=100, batch_create_delay_ms=1500)
    args = batch_run(sim, tmp_path)
    counter = {"during a slow create": "creates_taken", "after a slow create": "batches_created"}[moment]
    run_until(args, lambda: sim.stats().get(counter, 0) >= 1)
    rerun = subprocess.run([sys.executable, "-m", "batchchat", *args], capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert [r["status"] for r in read_output(tmp_path / "out.csv")] == ["ok"] * len(QUESTIONS)
    stats = sim.stats()
    assert stats["batches_created"] == 1 and stats["answered_twice"] == 0  # one batch, each answer paid once


@pytest.mark.slow
@pytest.mark.parametrize("ids", ["other-{}", "req{}", "0123abcd-{}"])
def test_another_batch_of_the_same_size_made_meanwhile_is_found_out_by_its_results(tmp_path: Path, sim_factory: Any,
                                                                                   ids: str) -> None:  # fmt: skip
    """A killed run's create acts; before the rerun, someone else makes a batch of as many
    requests. Newest first, theirs is found first: taken, its results name none of this run's
    requests, so it is set aside unread, and the run's own batch answers every row."""
    sim = sim_factory(batch_seconds=0.3, batch_delay_ms=100, batch_create_delay_ms=1000)
    args = batch_run(sim, tmp_path)
    theirs = killed_during_create_then_theirs(sim, args, ids)
    rerun = subprocess.run([sys.executable, "-m", "batchchat", *args], capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    out = read_output(tmp_path / "out.csv")
    assert [r["status"] for r in out] == ["ok"] * len(QUESTIONS)
    assert not any(r["request_id"].startswith(theirs) for r in out)
    said = re.search(r"tokens this run: .* = (\d+)", rerun.stderr)
    assert said and int(said[1]) == sum(int(r["total_tokens"]) for r in out[:12])  # theirs not counted as paid
    journal = steps(tmp_path / "out.csv.journal")
    assert {"step": "foreign", "batch": theirs} in [{k: s.get(k) for k in ("step", "batch")} for s in journal]
    assert sim.stats()["batches_created"] == 2 and sim.stats()["answered_twice"] == 0  # theirs and one of ours
    assert sim.stats().get("batches_cancelled", 0) == 0  # someone else's batch is never cancelled
    assert "extra batch" not in rerun.stderr  # the run's one batch is no extra, though found second


@pytest.mark.slow
def test_cancel_leaves_running_a_batch_taken_on_time_and_size_alone(tmp_path: Path, sim_factory: Any) -> None:
    """After a kill during the create, the batch a rerun finds may be someone else's: --cancel
    does not cancel it, says so, and collects it once it ends; its results tell whose it was."""
    sim = sim_factory(batch_seconds=4, batch_delay_ms=100, batch_create_delay_ms=1000)
    args = batch_run(sim, tmp_path)
    theirs = killed_during_create_then_theirs(sim, args)
    cancel = subprocess.run([sys.executable, "-m", "batchchat", *args, "--cancel"], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert cancel.returncode == 0, cancel.stderr
    assert sim.stats().get("batches_cancelled", 0) == 0
    assert "not cancelled: 2 batches found after a create whose answer was lost" in cancel.stderr
    out = read_output(tmp_path / "out.csv")
    assert [r["status"] for r in out] == ["ok"] * len(QUESTIONS) and not any(theirs in r["request_id"] for r in out)


def test_a_dry_run_counts_batches_sent_inline_at_anthropics_limits(tmp_path: Path) -> None:
    source = questions(tmp_path)
    dry = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "claude-sonnet-4-5", "-m", "claude-haiku-4-5",
              "--provider", "anthropic", "--batch-api", "--dry-run")  # fmt: skip
    assert dry.exit_code == 0, dry.stderr
    assert "as provider batches: 24 requests in 2 batches, sent inline (one model a batch, at most 100,000 requests " \
           "and 244 MB); at batch prices $" in dry.stdout


@pytest.mark.parametrize("cancel", [False, True])
def test_another_output_asking_the_same_requests_keeps_its_batch_and_its_tokens(tmp_path: Path, sim_factory: Any,
                                                                                cancel: bool) -> None:  # fmt: skip
    """Output B's batch runs; output A asks the same requests, and its create fails after acting.
    A's look finds both batches (same time, same size): the ids' marks tell them apart, so A
    keeps only its own answers and tokens, and never cancels B's."""
    sim = sim_factory(batch_seconds=1.5, batch_create_fails=2)
    source = questions(tmp_path)
    common = ("-i", source, "-m", "sim-chat", "--base-url", sim.url, "--provider", "anthropic", "--batch-api",
              "--poll-every", "0.05")  # fmt: skip
    b = cli("run", *common, "-o", tmp_path / "b.csv", "--detach")
    assert b.exit_code == 0, b.stderr
    a = cli("run", *common, "-o", tmp_path / "a.csv", *(["--detach"] if cancel else []))
    if cancel:
        a = cli("run", *common, "-o", tmp_path / "a.csv", "--cancel")
    assert a.exit_code == 0, a.stderr
    assert sim.stats()["batches_created"] == 2 and sim.stats().get("batches_cancelled", 0) == 0
    rows = read_output(tmp_path / "a.csv")
    assert [r["status"] for r in rows] == ["ok"] * len(QUESTIONS)
    said = re.search(r"tokens this run: .* = (\d+)", a.stderr)
    assert said and int(said[1]) == sum(int(r["total_tokens"]) for r in rows[:12])  # B's not counted as A's
    mine = {r["request_id"].split("/")[0] for r in rows}
    collected = cli("run", *common, "-o", tmp_path / "b.csv")
    assert collected.exit_code == 0, collected.stderr
    theirs = {r["request_id"].split("/")[0] for r in read_output(tmp_path / "b.csv")}
    assert len(mine) == len(theirs) == 1 and mine != theirs  # each output's rows from its own batch
    assert "extra batch" not in a.stderr


def test_a_batch_of_this_runs_own_create_whose_lines_name_no_request_is_not_asked_again(
        tmp_path: Path, sim_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Results with no readable id (a proxy's page, a changed format) prove nothing against a
    batch the run's own create made: its requests end as errors, once, and are never sent in a
    second batch (that would pay twice); the answers' tokens count as paid."""
    from batchchat.simulator.batches import BatchStore

    real = BatchStore._m_ended

    def without_ids(self: Any, batch: Any) -> None:
        real(self, batch)
        batch.results = b"".join(json.dumps({"result": json.loads(line)["result"]}).encode() + b"\n"
                                 for line in batch.results.splitlines())  # fmt: skip

    monkeypatch.setattr(BatchStore, "_m_ended", without_ids)
    sim = sim_factory(batch_seconds=0.1)
    result = cli(*batch_run(sim, tmp_path))
    assert result.exit_code == 1
    assert sim.stats()["batches_created"] == 1
    rows = read_output(tmp_path / "out.csv")
    assert {r["error_type"] for r in rows} == {"bad_response"} and "could not be read" in rows[0]["error"]
    said = re.search(r"tokens this run: .* = (\d+)", result.stderr)
    assert said and int(said[1]) > 0


@pytest.mark.slow
def test_a_killed_outputs_batch_found_after_anothers_is_its_own_not_an_extra(tmp_path: Path, sim_factory: Any) -> None:
    """A is killed during its create; B, asking the same rows, makes its batch after A's. A's
    rerun finds both, newest (B's) first: A's own, proved first, is taken as A's, B's is set
    aside, and nothing is said to be an extra batch or paid twice."""
    sim = sim_factory(batch_seconds=1.0, batch_delay_ms=50, batch_create_delay_ms=800)
    a = batch_run(sim, tmp_path)
    b = [arg if arg != str(tmp_path / "out.csv") else str(tmp_path / "b.csv") for arg in a]
    run_until(a, lambda: sim.stats().get("creates_taken", 0) >= 1)
    made = subprocess.run([sys.executable, "-m", "batchchat", *b, "--detach"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert made.returncode == 0, made.stderr
    rerun = subprocess.run([sys.executable, "-m", "batchchat", *a], capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    out = read_output(tmp_path / "out.csv")
    said = re.search(r"tokens this run: .* = (\d+)", rerun.stderr)
    assert said and int(said[1]) == sum(int(r["total_tokens"]) for r in out[:12])
    assert "extra batch" not in rerun.stderr and sim.stats().get("batches_cancelled", 0) == 0
    collected = subprocess.run([sys.executable, "-m", "batchchat", *b], capture_output=True, text=True, timeout=120)
    assert collected.returncode == 0, collected.stderr
    mine = {r["request_id"].split("/")[0] for r in out}
    theirs = {r["request_id"].split("/")[0] for r in read_output(tmp_path / "b.csv")}
    assert len(mine) == len(theirs) == 1 and mine != theirs
