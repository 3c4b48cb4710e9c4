"""Scripted conversations: turns sent in order with the whole history, conversations in parallel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from batchchat.simulator import BackgroundSimulator, synthetic_reply

from .helpers import cli, read_output, write_csv


def conversations(folder: Path, scripts: list[list[str]]) -> Path:
    return write_csv(folder / "scripts.csv", ["id", "turns"],
                     [[str(i), json.dumps(turns)] for i, turns in enumerate(scripts)])  # fmt: skip


def run(folder: Path, url: str, *extra: str) -> Any:
    return cli("run", "-i", folder / "scripts.csv", "-o", folder / "out.jsonl", "-m", "sim-chat", "--base-url", url,
               "--turns-column", "turns", "--system", "Be brief.", *extra)  # fmt: skip


def test_each_turn_is_sent_with_the_whole_history_and_the_transcript_is_kept(
    tmp_path: Path, sim: BackgroundSimulator
) -> None:
    scripts = [[f"c{i} hello", f"c{i} and then?", f"c{i} thanks"] for i in range(5)]
    conversations(tmp_path, scripts)
    assert run(tmp_path, sim.url).exit_code == 0
    rows = read_output(tmp_path / "out.jsonl")
    assert len(sim.requests) == 15
    for row, script in zip(rows, scripts, strict=True):
        transcript = json.loads(row["transcript"])
        assert [m["role"] for m in transcript] == [
            "system",
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
            "assistant",
        ]
        assert [m["content"] for m in transcript if m["role"] == "user"] == script
        assert row["response"] == transcript[-1]["content"]
        # what was sent: turn k carried every earlier turn and the answers as they came back
        sent = [r["body"]["messages"] for r in sim.requests if script[0] == r["body"]["messages"][1]["content"]]
        assert sent == [transcript[:2], transcript[:4], transcript[:6]]
        assert row["attempts"] == 3
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0


def test_conversations_run_in_parallel_and_turns_of_one_in_order(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(latency_ms=60)
    conversations(tmp_path, [[f"c{i} one", f"c{i} two"] for i in range(4)])
    assert run(tmp_path, sim.url, "--concurrency", "4").exit_code == 0
    last_turns = [r["body"]["messages"][-1]["content"] for r in sim.requests]
    # all four first turns were in flight together, before any second turn could be sent
    assert sorted(last_turns[:4]) == [f"c{i} one" for i in range(4)]
    assert sorted(last_turns[4:]) == [f"c{i} two" for i in range(4)]


def test_a_failed_turn_ends_the_conversation_as_an_error_with_the_transcript_so_far(
    tmp_path: Path, sim: BackgroundSimulator
) -> None:
    conversations(tmp_path, [["fine", "broken [sim:fault=400]", "never sent"], ["ok", "ok too"]])
    result = run(tmp_path, sim.url)
    assert result.exit_code == 1
    failed, ok = read_output(tmp_path / "out.jsonl")
    assert failed["status"] == "error" and failed["error_type"] == "bad_request"
    assert failed["error"].startswith("turn 2 of 3: ")
    assert [m["content"] for m in json.loads(failed["transcript"]) if m["role"] == "user"] == [
        "fine",
        "broken [sim:fault=400]",
    ]
    assert not any("never sent" in json.dumps(r["body"]) for r in sim.requests)
    assert ok["status"] == "ok"


def test_a_finished_conversation_is_not_sent_again_and_an_edited_one_resends_from_the_edit(
    tmp_path: Path, sim: BackgroundSimulator
) -> None:
    conversations(tmp_path, [["a", "b"], ["c", "d"]])
    assert run(tmp_path, sim.url).exit_code == 0
    first = read_output(tmp_path / "out.jsonl")
    conversations(tmp_path, [["a", "b"], ["c", "e"]])
    assert run(tmp_path, sim.url).exit_code == 0
    # 4, then only the edited turn: the turn before it was answered already, with the same history
    assert len(sim.requests) == 5
    assert sim.requests[-1]["body"]["messages"][-1]["content"] == "e"
    second = read_output(tmp_path / "out.jsonl")
    assert (first[0].pop("paid"), second[0].pop("paid")) == ("this_run", "earlier_run")
    assert second[0] == first[0]
    assert json.loads(second[1]["transcript"])[-2]["content"] == "e"


def test_empty_or_bad_turn_cells(tmp_path: Path, sim: BackgroundSimulator) -> None:
    write_csv(tmp_path / "scripts.csv", ["turns"], [['["hi"]'], [""]])
    result = run(tmp_path, sim.url)
    assert result.exit_code == 1
    rows = read_output(tmp_path / "out.jsonl")
    assert rows[1]["error_type"] == "invalid_input" and "no turns" in rows[1]["error"]
    write_csv(tmp_path / "scripts.csv", ["turns"], [['["hi"]'], ['["ok", 3]']])
    result = run(tmp_path, sim.url)
    assert result.exit_code == 2
    assert "scripts.csv, row 2, column 'turns': expected a JSON list of non-empty user turns" in result.stderr


def test_the_last_turn_is_checked_and_re_asked_and_every_turn_paid_for_is_counted(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(labels=("yes", "no"), invalid_rate=0.5, seed=2)
    conversations(tmp_path, [[f"c{i} first", f"c{i} so, yes or no?"] for i in range(12)])
    run(tmp_path, sim.url, "--labels", "yes,no", "--invalid-retries", "3")
    rows = read_output(tmp_path / "out.jsonl")
    assert any(r["attempts"] > 2 for r in rows)  # some last turns were asked again
    for row in rows:
        sent = [
            r["body"]
            for r in sim.requests
            if r["body"]["messages"][1]["content"] == json.loads(row["transcript"])[1]["content"]
        ]
        assert len(sent) == row["attempts"]
        assert row["prompt_tokens"] == sum(
            4 * len(b["messages"]) + sum(-(-len(m["content"]) // 4) for m in b["messages"]) for b in sent
        )
        if row["status"] == "ok":
            assert row["label"] in ("yes", "no")
        else:
            assert row["error_type"] == "invalid_label" and row["attempts"] == 5


def test_a_conversation_killed_mid_way_resumes_at_its_first_unanswered_turn(tmp_path: Path, sim_factory: Any) -> None:
    import signal
    import subprocess
    import sys
    import time

    sim = sim_factory(latency_ms=40)
    conversations(tmp_path, [[f"c{i} turn {t}" for t in range(6)] for i in range(8)])
    args = [sys.executable, "-m", "batchchat", "run", "-i", str(tmp_path / "scripts.csv"), "-o", str(tmp_path / "out.jsonl"),
            "-m", "sim-chat", "--base-url", sim.url, "--turns-column", "turns", "--system", "Be brief.",
            "--concurrency", "8"]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while sim.stats().get("answered", 0) < 20:  # every conversation is part-way through
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    answered_before = sim.stats()["answered"]
    assert answered_before < 48
    sent_before = len(sim.requests)
    resumed = run(tmp_path, sim.url)
    assert resumed.exit_code == 0
    # this run's tokens are those of the turns it sent, not of the turns recalled from the journal
    replies = [synthetic_reply(r["body"]) for r in sim.requests[sent_before:]]
    prompt, completion = sum(r[2] for r in replies), sum(r[3] for r in replies)
    assert f"tokens this run: {prompt:,} prompt + {completion:,} completion" in resumed.stderr
    stats = sim.stats()
    assert stats["answered_twice"] <= 8  # at most the turns in flight at the kill; finished turns are never repaid
    assert stats["answered"] <= 48 + 8
    rows = read_output(tmp_path / "out.jsonl")
    for i, row in enumerate(rows):
        transcript = json.loads(row["transcript"])
        assert [m["content"] for m in transcript if m["role"] == "user"] == [f"c{i} turn {t}" for t in range(6)]
        assert row["status"] == "ok"
