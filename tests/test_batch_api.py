"""Provider batches (``--batch-api``) against the simulator's Batch API, over real HTTP: both
dialects, files split within limits, error lines, expired and cancelled batches, re-asks and
turns in rounds, detaching and collecting, and a kill at every step never paying twice."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .helpers import REPORTS, cli, read_output, write_csv

TIMING = ("latency_s", "ttft_s", "request_id")
QUESTIONS = [f"question {i}" for i in range(12)] + ["question 3"]  # a repeat shares its answer


def questions(tmp_path: Path, rows: list[str] = QUESTIONS) -> Path:
    return write_csv(tmp_path / "in.csv", ["id", "prompt"], [[str(i), p] for i, p in enumerate(rows)])


def without_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def steps(journal: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    return [r["batch_step"] for r in records if "batch_step" in r]


@pytest.mark.parametrize("dialect", ["together", "openai"])
def test_a_batch_run_writes_the_table_a_live_run_writes(tmp_path: Path, sim_factory: Any, dialect: str) -> None:
    sim = sim_factory(batch_dialect=dialect, batch_seconds=0.3)
    source = questions(tmp_path)
    provider = ("--provider", dialect)
    live = cli("run", "-i", source, "-o", tmp_path / "live.csv", "-m", "sim-chat", "--base-url", sim.url, *provider)
    assert live.exit_code == 0, live.stderr
    batched = cli("run", "-i", source, "-o", tmp_path / "batch.csv", "-m", "sim-chat", "--base-url", sim.url,
                  *provider, "--batch-api")  # fmt: skip
    assert batched.exit_code == 0, batched.stderr
    assert without_timing(read_output(tmp_path / "batch.csv")) == without_timing(read_output(tmp_path / "live.csv"))
    rows = read_output(tmp_path / "batch.csv")
    assert all(row["request_id"].startswith("batch-sim-") for row in rows)  # which batch answered it
    store = sim.simulator.batches
    [batch] = store.batches.values()
    answered = [json.loads(line)["custom_id"] for line in store.files[batch.output_file_id].data.splitlines()]
    assert answered != [line["custom_id"] for line in batch.lines]  # the results came in another order
    stats = sim.stats()
    assert stats["batches_created"] == 1 and stats["batch_lines"] == 12  # the repeat is asked once
    assert stats["answered_twice"] == 12  # each question once live, once in the batch: nothing more


def test_requests_go_in_files_within_the_limits_one_model_each(tmp_path: Path) -> None:
    source = questions(tmp_path)
    output = tmp_path / "out.parquet"
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "-m", "sim-chat-large", "--provider", "sim",
                 "--sim", "batch_max_lines=5,batch_seconds=0.1", "--batch-api")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    files = [s for s in steps(Path(f"{output}.journal")) if s["step"] == "upload"]  # each with its ids, then made
    assert sorted(len(f["ids"].split()) for f in files) == [2, 2, 5, 5, 5, 5]  # 12 requests a model, 5 a file
    assert len([s for s in steps(Path(f"{output}.journal")) if s["step"] == "file"]) == 6
    assert all(len({f["model"]}) == 1 for f in files) and {f["model"] for f in files} == {"sim-chat", "sim-chat-large"}
    rows = read_output(output)
    assert len(rows) == 26 and all(row["status"] == "ok" for row in rows)
    dry = cli("run", "-i", source, "-o", tmp_path / "other.csv", "-m", "sim-chat", "--provider", "sim",
              "--sim", "batch_max_lines=5", "--batch-api", "--price", "sim-chat=1,2", "--dry-run")  # fmt: skip
    assert "as provider batches: 12 requests in 3 files, one batch each" in dry.stdout
    assert "at batch prices $" in dry.stdout


@pytest.mark.parametrize("dialect", ["together", "openai"])
def test_error_lines_become_error_rows_and_the_rest_are_answered(tmp_path: Path, sim_factory: Any, dialect: str) -> None:
    sim = sim_factory(batch_dialect=dialect, batch_seconds=0.2)
    rows = ["fine", "[sim:fault=500] broken", "also fine", "[sim:fault=400] refused"]
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[r] for r in rows])
    output = tmp_path / "out.csv"
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--provider", dialect,
                 "--batch-api")  # fmt: skip
    assert result.exit_code == 1
    out = read_output(output)
    assert [r["status"] for r in out] == ["ok", "error", "ok", "error"]
    # Together's error file gives a code, OpenAI a non-200 line: both named as a live answer's error
    assert out[1]["error_type"] == "server_error" and out[3]["error_type"] == "bad_request"
    assert "simulated internal server error" in out[1]["error"]
    assert sim.stats()["batches_created"] == 1  # errors of a batch are answers: not sent again unasked


@pytest.mark.parametrize("ending", ["expired", "failed"])
def test_a_batch_ended_half_done_keeps_what_it_finished_and_retry_errors_sends_the_rest(
    tmp_path: Path, sim_factory: Any, ending: str
) -> None:
    setting = {"expired": "batch_expire_at", "failed": "batch_fail_at"}[ending]
    sim = sim_factory(batch_seconds=0.2, **{setting: 0.5})
    source = questions(tmp_path, [f"q{i}" for i in range(10)])
    output = tmp_path / "out.csv"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--batch-api")
    first = cli("run", *common)
    assert first.exit_code == 1
    out = read_output(output)
    assert sum(r["status"] == "ok" for r in out) == 5
    unanswered = [r for r in out if r["status"] == "error"]
    assert len(unanswered) == 5 and all(r["error_type"] == f"batch_{ending}" for r in unanswered)
    assert f"ended {ending} before answering this request" in unanswered[0]["error"]
    again = cli("run", *common)  # without --retry-errors: nothing is sent again
    assert again.exit_code == 1 and sim.stats()["batches_created"] == 1
    batched = cli("run", *common, "--retry-errors")  # a new batch for the 5, which ends half done again
    assert sim.stats()["batches_created"] == 2 and sim.stats()["batch_lines"] == 15
    assert sum(r["status"] == "ok" for r in read_output(output)) == 7, batched.stderr
    live = cli("run", *common, "--retry-errors", "--live-retry")
    assert live.exit_code == 0, live.stderr
    assert all(r["status"] == "ok" for r in read_output(output))
    assert sim.stats()["batches_created"] == 2 and sim.stats()["answered_twice"] == 0  # the 3 went live, once


def test_detach_submits_and_exits_and_a_later_run_collects(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=1.0)
    source = questions(tmp_path)
    output = tmp_path / "out.parquet"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--batch-api")
    submitted = cli("run", *common, "--detach")
    assert submitted.exit_code == 0, submitted.stderr
    assert "run the same command again to collect" in submitted.stderr
    assert {r["status"] for r in read_output(output)} == {"pending"}
    still = cli("run", *common, "--detach")  # tonight's cron again: nothing new, nothing collected yet
    assert still.exit_code == 0 and sim.stats()["batches_created"] == 1
    time.sleep(1.1)
    collected = cli("run", *common, "--detach")
    assert collected.exit_code == 0 and {r["status"] for r in read_output(output)} == {"ok"}
    assert sim.stats()["batches_created"] == 1 and sim.stats()["answered_twice"] == 0


def test_a_batch_run_speaks_of_batches_and_of_re_asks_as_re_asks(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=1.0, labels=("yes", "no"), invalid_rate=0.4, seed=3)
    source = questions(tmp_path)
    output = tmp_path / "out.parquet"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--batch-api", "--labels", "yes,no",
              "--detach")  # fmt: skip
    submitted = cli("run", *common)
    assert submitted.exit_code == 0, submitted.stderr
    assert ("this run: provider batches: 1 batch submitted (12 requests), 1 still waiting at the provider "
            "(12 requests); 0 requests finished") in submitted.stderr  # fmt: skip
    time.sleep(1.1)
    collected = cli("run", *common)
    err = collected.stderr
    assert "0 requests to send, 12 waiting in provider batches submitted before" in err
    assert re.search(r"1 collected \(12 requests; [\d.]+ s from submission to collection\)", err), err
    reasked = int(re.search(r"provider batches: 1 batch submitted \((\d+) requests?\)", err)[1])  # type: ignore[index]
    assert reasked > 0 and "/s)" not in err and "changed checks" not in err
    time.sleep(1.1)
    third = cli("run", *common)
    assert f"{reasked} answer{'s' if reasked > 1 else ''} that failed the job's checks will be asked again (re-asks)" in third.stderr
    assert "changed checks" not in third.stderr
    shown = cli("show", output)
    assert re.search(r"provider batches: \d+ batches submitted \(\d+ requests\), \d+ collected", shown.output)
    assert "/s)" not in shown.output and "finished over" not in shown.output
    if REPORTS:
        assert cli("report", output).exit_code == 0
        page = output.with_name(output.name + ".report.html").read_text(encoding="utf-8")
        assert "requests/s" not in page and "provider batches" in page


def test_cancel_stops_the_running_batches_and_keeps_what_they_finished(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=60)
    source = questions(tmp_path)
    output = tmp_path / "out.csv"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--batch-api")
    assert cli("run", *common, "--detach").exit_code == 0
    cancelled = cli("run", *common, "--cancel")
    assert cancelled.exit_code == 1
    assert sim.stats()["batches_cancelled"] == 1
    out = read_output(output)
    assert {r["error_type"] for r in out} == {"batch_cancelled"}
    assert sim.stats()["batches_created"] == 1  # nothing submitted by the cancel


def test_invalid_labels_are_asked_again_in_a_second_round(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=0.1, labels=("yes", "no"), invalid_rate=0.5, seed=5)
    source = questions(tmp_path, [f"is {i} even?" for i in range(20)])
    output = tmp_path / "out.csv"
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--batch-api",
                 "--labels", "yes,no", "--invalid-retries", "3")  # fmt: skip
    assert result.exit_code in (0, 1), result.stderr
    stats = sim.stats()
    assert stats["batches_created"] >= 2  # the re-asks went in later rounds
    out = read_output(output)
    assert all(r["label"] in ("yes", "no") for r in out if r["status"] == "ok")
    asked_again = [r for r in out if int(r["completion_tokens"] or 0) > 1 and r["status"] == "ok"]
    assert asked_again  # their tokens count every answer paid for
    files = [s for s in steps(Path(f"{output}.journal")) if s["step"] == "upload"]
    reasked = [cid for f in files[1:] for cid in f["ids"].split()]
    assert reasked and all(cid.rsplit(".", 1)[1].isdigit() for cid in reasked)  # asked under key.2, key.3


def test_a_scripted_conversation_advances_one_turn_a_round(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=0.1)
    turns = [json.dumps(["Hello", "And then?"]), json.dumps(["One", "Two"])]
    source = write_csv(tmp_path / "in.csv", ["turns"], [[t] for t in turns])
    output = tmp_path / "out.csv"
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--batch-api",
                 "--turns-column", "turns")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert sim.stats()["batches_created"] == 2  # the first turns, then the second with the answers before
    out = read_output(output)
    transcript = json.loads(out[0]["transcript"])
    assert [m["role"] for m in transcript] == ["user", "assistant", "user", "assistant"]
    assert transcript[2]["content"] == "And then?"
    live = cli("run", "-i", source, "-o", tmp_path / "live.csv", "-m", "sim-chat", "--base-url", sim.url,
               "--turns-column", "turns")  # fmt: skip
    assert live.exit_code == 0
    assert without_timing(read_output(tmp_path / "live.csv")) == without_timing(out)


def test_a_cost_cap_limits_what_is_submitted_at_batch_prices(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=0.1)
    source = questions(tmp_path, [f"q{i}" for i in range(40)])
    output = tmp_path / "out.csv"
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--batch-api",
                 "--price", "sim-chat=2000,4000", "--max-tokens", "10", "--max-cost", "0.5")  # fmt: skip
    assert result.exit_code == 1
    out = read_output(output)
    submitted = sim.stats()["batch_lines"]
    assert 0 < submitted < 40 and sum(r["status"] == "ok" for r in out) == submitted
    assert sum(float(r["cost"] or 0) for r in out) <= 0.5
    assert "stopped at the cost cap" in result.stderr


def test_batch_settings_are_checked(tmp_path: Path) -> None:
    source = questions(tmp_path)
    for flags, message in (
        (("--detach",), "--detach is a setting of provider batches; add --batch-api"),
        (("--batch-api", "--stream"), "a provider batch does not stream"),
        (("--batch-api", "--live-retry"), "--live-retry sends the requests that ended in error again, live"),
        (("--batch-api", "--detach"), "provider sim starts a simulator that ends with the run"),
    ):
        result = cli("run", "-i", source, "-m", "m", "--provider", "sim", *flags)
        assert result.exit_code == 2 and message in result.stderr, (flags, result.stderr)
    import pandas as pd

    import batchchat

    with pytest.raises(batchchat.JobError, match="batch_api= needs journal=PATH"):
        batchchat.run_frame(pd.DataFrame({"prompt": ["a"]}), model="m", provider="sim", batch_api=True)


def test_a_dataframe_runs_as_batches_with_a_journal(tmp_path: Path) -> None:
    import pandas as pd

    import batchchat

    frame = pd.DataFrame({"prompt": ["a", "b"]})
    out = batchchat.run_frame(frame, model="sim-chat", provider="sim", batch_api=True, journal=tmp_path / "j.journal",
                              simulator={"batch_seconds": 0.1})  # fmt: skip
    assert list(out.status) == ["ok", "ok"] and out.request_id.str.startswith("batch-sim-").all()


# --- a kill at every step -------------------------------------------------------------------


def run_until(args: list[str], until: Any, env: dict[str, str] | None = None) -> None:
    """Start the CLI, wait for ``until()``, then SIGKILL it."""
    process = subprocess.Popen([sys.executable, "-m", "batchchat", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not until() and process.poll() is None:
            assert time.monotonic() < deadline, "the step to kill at never came"
            time.sleep(0.005)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


STEPS = {
    "before upload": lambda s: s.get("call POST files", 0) >= 1,  # the upload on its way
    "after upload": lambda s: s.get("files_uploaded", 0) >= 1,  # uploaded; the create on its way or not
    "after create": lambda s: s.get("batches_created", 0) >= 1,
    "while polling": lambda s: s.get("call GET batches", 0) >= 2,
    "while downloading": lambda s: s.get("downloads_started", 0) >= 1,
}


# OpenAI's dialect differs only in the bodies, which faster tests cover: its kills run with the slow tests
@pytest.mark.parametrize("dialect", ["together", pytest.param("openai", marks=pytest.mark.slow)])
@pytest.mark.parametrize("step", list(STEPS))
def test_a_kill_at_any_step_resumes_the_same_batches_and_never_creates_one_twice(
    tmp_path: Path, sim_factory: Any, step: str, dialect: str
) -> None:
    sim = sim_factory(batch_dialect=dialect, batch_seconds=0.6, batch_delay_ms=150)
    source = questions(tmp_path)
    output = tmp_path / "out.csv"
    args = ["run", "-i", str(source), "-o", str(output), "-m", "sim-chat", "--base-url", sim.url, "--provider",
            dialect, "--batch-api", "--poll-every", "0.05"]  # fmt: skip
    run_until(args, lambda: STEPS[step](sim.stats()))
    resumed = subprocess.run([sys.executable, "-m", "batchchat", *args], capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["status"] for r in read_output(output)] == ["ok"] * len(QUESTIONS)
    stats = sim.stats()
    assert stats["batches_per_file"] == 1  # no file ever had a second batch made over it
    assert stats["batches_created"] == 1 and stats["answered_twice"] == 0  # the same requests: one batch, paid once


def test_a_batch_created_but_not_recorded_is_adopted_not_made_again(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=0.3)
    source = questions(tmp_path)
    output = tmp_path / "out.csv"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--batch-api")
    assert cli("run", *common, "--detach").exit_code == 0
    journal = Path(f"{output}.journal")
    lines = journal.read_text().splitlines(keepends=True)
    # what a kill between the create and its record leaves: the file recorded, its batch not
    journal.write_text("".join(line for line in lines if '"step":"batch"' not in line))
    collected = cli("run", *common)
    assert collected.exit_code == 0, collected.stderr
    assert sim.stats()["batch_lists"] >= 1  # it looked for the batch over its file, and found it
    assert sim.stats()["batches_created"] == 1 and sim.stats()["answered_twice"] == 0
    assert {r["status"] for r in read_output(output)} == {"ok"}


def test_a_batch_the_provider_no_longer_has_is_asked_again(tmp_path: Path) -> None:
    from batchchat.job.spec import SimConfig
    from batchchat.simulator import BackgroundSimulator

    source = questions(tmp_path)
    output = tmp_path / "out.csv"
    with BackgroundSimulator(SimConfig(batch_seconds=60)) as first:
        url, port = first.url, int(first.url.rsplit(":", 1)[1].split("/")[0])
        assert cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", url, "--batch-api",
                   "--detach").exit_code == 0  # fmt: skip
    with BackgroundSimulator(SimConfig(batch_seconds=0.1), port=port) as second:  # started again: it forgot
        result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", url, "--batch-api")
        assert result.exit_code == 0, result.stderr
        assert second.stats()["batches_created"] == 1
    assert {r["status"] for r in read_output(output)} == {"ok"}
    assert any(s["step"] == "dropped" and "has no batch" in s["why"] for s in steps(Path(f"{output}.journal")))


def test_ctrl_c_while_waiting_leaves_the_batches_running_and_a_rerun_collects_them(tmp_path: Path,
                                                                                  sim_factory: Any) -> None:  # fmt: skip
    sim = sim_factory(batch_seconds=2.0)
    source = questions(tmp_path)
    output = tmp_path / "out.csv"
    args = ["run", "-i", str(source), "-o", str(output), "-m", "sim-chat", "--base-url", sim.url, "--batch-api",
            "--poll-every", "0.05"]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "batchchat", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while sim.stats().get("batches_created", 0) < 1:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "the provider's batches keep running: run the same command again to collect them" in stderr
    assert {r["status"] for r in read_output(output)} == {"pending"}
    collected = subprocess.run([sys.executable, "-m", "batchchat", *args], capture_output=True, text=True, timeout=60)
    assert collected.returncode == 0, collected.stderr
    assert {r["status"] for r in read_output(output)} == {"ok"} and sim.stats()["batches_created"] == 1


# --- found by a hostile review ---------------------------------------------------------------


def test_a_live_run_or_a_restart_is_refused_while_batches_run(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=60)
    source = questions(tmp_path)
    output = tmp_path / "out.csv"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url)
    assert cli("run", *common, "--batch-api", "--detach").exit_code == 0
    live = cli("run", *common)
    assert live.exit_code == 2 and "provider batches of this output are still running" in live.stderr
    restart = cli("run", *common, "--batch-api", "--restart")
    assert restart.exit_code == 2 and "--restart would forget 1 provider batch still running" in restart.stderr
    assert sim.stats().get("received", 0) == 0 and sim.stats()["batches_created"] == 1  # nothing paid twice
    assert cli("run", *common, "--batch-api", "--cancel").exit_code == 1
    assert cli("run", *common, "--retry-errors").exit_code == 0  # once collected, live runs again


def test_errors_waiting_in_a_retry_batch_are_not_sent_again_live(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=0.2, batch_expire_at=0.5)
    source = questions(tmp_path, [f"q{i}" for i in range(10)])
    output = tmp_path / "out.csv"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--batch-api")
    assert cli("run", *common).exit_code == 1  # 5 expired
    assert cli("run", *common, "--retry-errors", "--detach").exit_code == 0  # a retry batch for the 5
    assert {r["status"] for r in read_output(output) if r["error_type"]} <= {"pending"}  # waiting, shown so
    cli("run", *common, "--retry-errors", "--live-retry")  # the 5 wait in the batch: not one sent live
    assert sim.stats().get("received", 0) == 0 and sim.stats()["answered_twice"] == 0
    assert sum(r["error_type"] == "batch_expired" for r in read_output(output)) == 3  # the batch collected
    cli("run", *common, "--retry-errors", "--live-retry")
    assert sim.stats().get("received", 0) == 3 and sim.stats()["answered_twice"] == 0  # now live, once


def test_answers_for_rows_a_collecting_run_no_longer_has_are_kept(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_seconds=0.5)
    rows = [f"q{i}" for i in range(10)]
    whole, part = questions(tmp_path, rows), write_csv(tmp_path / "part.csv", ["id", "prompt"], [["0", "q0"]])
    output = tmp_path / "out.csv"
    assert cli("run", "-i", whole, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--batch-api",
               "--detach").exit_code == 0  # fmt: skip
    time.sleep(0.6)
    assert cli("run", "-i", part, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--batch-api").exit_code == 0
    again = cli("run", "-i", whole, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--batch-api")
    assert again.exit_code == 0 and "nothing to send" in again.stderr  # the other 9 were kept, not lost
    assert sim.stats()["batch_lines"] == 10


def test_an_error_line_that_would_be_fatal_live_is_one_rows_error(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_dialect="openai", batch_seconds=0.1)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hello"], ["[sim:fault=401] key"], ["[sim:fault=402] pay"]])
    output = tmp_path / "out.csv"
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--provider", "openai",
                 "--batch-api")  # fmt: skip
    assert result.exit_code == 1, result.stderr
    assert [r["error_type"] for r in read_output(output)] == ["", "auth", "no_credit"]
    again = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--provider", "openai",
                "--batch-api")  # fmt: skip
    assert again.exit_code == 1 and "nothing to send" in again.stderr  # collected: nothing stuck


def test_a_file_the_provider_will_not_batch_stops_the_run_without_sticking(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(batch_max_lines=3)  # the client, told nothing, splits at 50,000
    source = questions(tmp_path)
    output = tmp_path / "out.csv"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--batch-api")
    first = cli("run", *common)
    assert first.exit_code == 2 and "refused (HTTP 400" in first.stderr and "more than a batch may" in first.stderr
    second = cli("run", *common)
    assert second.exit_code == 2 and "more than a batch may" in second.stderr  # not stuck on the old file
    assert sim.stats()["batches_created"] == 0


def test_no_batch_api_at_the_url_says_so(tmp_path: Path, sim: Any) -> None:
    source = questions(tmp_path)
    result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "m", "--base-url", sim.url + "/nothing",
                 "--batch-api")  # fmt: skip
    assert result.exit_code == 2 and "has no Batch API" in result.stderr


def test_a_cost_cap_goes_on_submitting_as_collected_batches_free_their_bounds(tmp_path: Path, sim_factory: Any) -> None:
    """A batch holds its requests' bounds until it is collected; what it really cost is less, so
    the next round submits more, until a request does not fit with no batch out."""
    sim = sim_factory(batch_seconds=0.2)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"question {i:02d}"] for i in range(60)])
    output = tmp_path / "out.csv"
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--batch-api", "-q",
                 "--price", "sim-chat=1000,2000", "--max-tokens", "10", "--max-cost", "0.5")  # fmt: skip
    assert result.exit_code == 1, result.stderr
    assert sim.stats()["batches_created"] >= 2  # not one round and a stop
    rows = [r for r in read_output(output) if r["status"] == "ok"]
    spent = sum(float(r["cost"]) for r in rows)  # at the batch price
    assert 0.5 - 0.06 < spent <= 0.5  # within one request's bound (about $0.051 at the batch price) of the cap
    assert "(stopped at the cost cap)" in result.stderr and "provider batches:" in result.stderr


def test_a_capped_detached_job_submits_every_night_its_cap_counting_only_what_it_submits(
    tmp_path: Path, sim_factory: Any
) -> None:
    """Answers collected of last night's batches were paid under last night's cap: tonight's
    submits its own share all the same, night after night."""
    sim = sim_factory(batch_seconds=0.3)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"question {i:02d}"] for i in range(60)])
    args = ("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "m1", "--base-url", sim.url, "--batch-api",
            "--detach", "--price", "m1=0.001,10000", "--max-tokens", "5", "--max-cost", "0.1", "--poll-every", "0.2")  # fmt: skip
    for night in range(1, 5):
        result = cli(*args)
        assert result.exit_code == 0, result.stderr  # submitted, detached: not "stopped at the cost cap"
        assert sim.stats()["batches_created"] == night
        time.sleep(0.5)  # the night's batch finishes


def test_a_dry_run_counts_the_requests_waiting_in_batches_and_refuses_as_the_run_would(
    tmp_path: Path, sim_factory: Any
) -> None:
    """With batches still running, a dry run said every request was to send and estimated it;
    the run collects them instead (with --batch-api) or refuses (without)."""
    sim = sim_factory(batch_seconds=30.0)
    source = questions(tmp_path)
    output = tmp_path / "out.parquet"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url)
    assert cli("run", *common, "--batch-api", "--detach").exit_code == 0
    dry = cli("run", *common, "--batch-api", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert "0 requests to send, 12 waiting in provider batches submitted before" in dry.stdout, dry.stdout
    assert "12 requests to send" not in dry.stdout
    for command in (("--dry-run",), ()):  # a dry run says what the run does: no
        refused = cli("run", *common, *command)
        assert refused.exit_code == 2 and "provider batches of this output are still running" in refused.stderr
    assert sim.stats()["batches_created"] == 1
