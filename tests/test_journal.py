"""The journal file and the output lock, on their own."""

import json
import os
import subprocess
import sys

import pytest

from batchchat.core.errors import JobError
from batchchat.core.records import RowOutcome
from batchchat.store.journal import Journal, Scope
from batchchat.store.lock import OutputLock


def outcome(key: str, status: str = "ok", text: str = "answer") -> RowOutcome:
    if status == "ok":
        return RowOutcome(0, key, "ok", 1, "m", response=text, prompt_tokens=3, completion_tokens=2, total_tokens=5)
    return RowOutcome(0, key, "error", 2, "m", error_type="server_error", error="HTTP 500: boom")


def test_records_are_on_disk_as_soon_as_they_are_added(tmp_path):
    path = tmp_path / "out.parquet.journal"
    journal = Journal(path)
    assert not path.exists()  # nothing sent, nothing written
    journal.add(outcome("k1", text="first"))
    lines = path.read_bytes().splitlines()  # read by another handle while the journal is open
    assert json.loads(lines[0]) == {"journal": "batchchat", "version": 3}
    assert json.loads(lines[1]) == {"scope": {"endpoint": "unknown", "checks": "none"}}
    assert json.loads(lines[2])["key"] == "k1" and json.loads(lines[2])["response"] == "first"
    journal.close()


def test_a_journal_reopened_knows_what_finished_and_what_failed(tmp_path):
    path = tmp_path / "j"
    journal = Journal(path)
    journal.add(outcome("a"))
    journal.add(outcome("b", "error"))
    journal.add(outcome("c", "error"))
    journal.add(outcome("c", text="retried"))  # a later record wins
    journal.close()
    again = Journal(path)
    assert len(again) == 3 and "a" in again and "z" not in again
    assert [again.failed(k) for k in "abc"] == [False, True, False]
    found = again.get_many(["a", "b", "c", "z"])
    assert found["c"].response == "retried" and found["b"].error_type == "server_error" and "z" not in found
    assert found["a"].total_tokens == 5 and found["a"].row == -1
    again.close()


def test_a_record_torn_by_a_kill_is_ignored_and_cut_away_before_appending(tmp_path):
    path = tmp_path / "j"
    journal = Journal(path)
    journal.add(outcome("a"))
    journal.add(outcome("b"))
    journal.close()
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"key": "c", "status": "ok", "resp')  # killed mid-write
    again = Journal(path)
    assert again.torn == 1 and len(again) == 2 and "c" not in again
    assert path.read_bytes() == whole
    again.add(outcome("c"))
    again.close()
    assert [json.loads(line).get("key") for line in path.read_bytes().splitlines()] == [None, None, "a", "b", None, "c"]


def test_a_file_that_is_not_a_batchchat_journal_is_refused(tmp_path):
    path = tmp_path / "j"
    path.write_text('{"journal": "batchchat", "version": 99}\n')
    with pytest.raises(JobError, match="restart, to discard it"):
        Journal(path)


def test_the_journal_holds_the_outcome_fields_and_nothing_else(tmp_path):
    journal = Journal(tmp_path / "j")
    journal.add(outcome("a"))
    journal.add(outcome("b", "error"))
    journal.close()
    lines = (tmp_path / "j").read_bytes().splitlines()[2:]
    assert set(json.loads(lines[0])) == {
        "key",
        "status",
        "attempts",
        "model",
        "response",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "at",  # when it finished: a report's timeline
    }  # fmt: skip  (null fields are left out; there is never a header, a URL or a key)
    assert set(json.loads(lines[1])) == {"key", "status", "attempts", "model", "error_type", "error", "at"}


SIM, TOGETHER = Scope("sim", "none"), Scope("https://api.together.xyz/v1", "none")


def test_a_journal_sees_only_the_answers_of_its_endpoint(tmp_path):
    path = tmp_path / "j"
    journal = Journal(path, SIM)
    journal.add(outcome("a", text="simulated"))
    journal.add(outcome("b", text="simulated"))
    journal.close()
    together = Journal(path, TOGETHER)
    assert len(together) == 0 and "a" not in together and together.elsewhere == {"sim": 2}
    together.add(outcome("a", text="real"))
    together.close()
    again = Journal(path, TOGETHER)
    assert again.get_many(["a", "b"])["a"].response == "real" and "b" not in again
    assert again.elsewhere == {"sim": 1}  # b was answered only there
    again.close()
    sim = Journal(path, SIM)
    assert sim.get_many(["a"])["a"].response == "simulated" and len(sim) == 2
    sim.close()


def test_answers_judged_by_other_checks_are_stale_until_stored_again(tmp_path):
    path = tmp_path / "j"
    journal = Journal(path, Scope("sim", "labels-1"))
    journal.add(outcome("a"))
    journal.close()
    assert not Journal(path, Scope("sim", "labels-1")).stale("a")
    changed = Journal(path, Scope("sim", "labels-2"))
    assert changed.stale("a") and changed.has_stale
    changed.add(outcome("a", text="asked again"))
    assert not changed.stale("a")
    changed.close()


def test_a_journal_from_before_scopes_is_claimed_by_the_first_endpoint_that_answers(tmp_path):
    path = tmp_path / "j"
    old = [{"journal": "batchchat", "version": 1}, {"key": "a", "status": "ok", "attempts": 1, "response": "x"}]
    path.write_text("".join(json.dumps(line) + "\n" for line in old))
    looking = Journal(path, TOGETHER, read_only=True)  # a dry run assumes too, and writes nothing
    assert looking.assumed_endpoint == TOGETHER.endpoint and "a" in looking and looking.stale("a")
    looking.close()
    unanswered = Journal(path, TOGETHER)  # a run that gets no answer (a mistyped URL) claims nothing
    unanswered.close()
    assert len(path.read_text().splitlines()) == 2
    first = Journal(path, SIM)
    assert first.assumed_endpoint == "sim" and first.legacy == 1 and "a" in first and first.stale("a")
    first.add(outcome("b"))  # the endpoint answered: the assumption is written with its first record
    first.close()
    written = [json.loads(line) for line in path.read_text().splitlines()[2:4]]
    assert written == [{"journal": "batchchat", "version": 3}, {"legacy": {"endpoint": "sim"}}]  # version first
    again = Journal(path, SIM)  # the assumption is not made, nor said, again
    assert again.assumed_endpoint is None and "a" in again and "b" in again
    again.close()
    elsewhere = Journal(path, TOGETHER)
    assert "a" not in elsewhere and elsewhere.elsewhere == {"sim": 2}
    elsewhere.close()


def test_changing_the_checks_and_changing_them_back_finds_the_first_answers(tmp_path):
    path = tmp_path / "j"
    one, two = Scope("sim", "labels-1"), Scope("sim", "labels-2")
    journal = Journal(path, one)
    journal.add(outcome("a", text="judged by one"))
    journal.close()
    journal = Journal(path, two)
    journal.add(outcome("a", text="judged by two"))
    journal.close()
    back = Journal(path, one)
    assert not back.stale("a") and back.get_many(["a"])["a"].response == "judged by one"
    back.close()
    other = Journal(path, Scope("sim", "labels-3"))  # judged by neither: the latest, to judge again
    assert other.stale("a") and other.get_many(["a"])["a"].response == "judged by two"
    other.close()


BAD_RECORDS = [
    {"key": "x", "status": "ok", "attempts": 1, "prompt_tokens": "abc"},
    {"key": "x", "status": "ok", "attempts": 1, "response": 123},
    {"key": "x", "status": "ok", "attempts": 2**40},
    {"key": "x", "status": None, "attempts": 1},
    {"key": "x", "status": "done", "attempts": 1},
    {"key": 7, "status": "ok", "attempts": 1},
    {"key": "x", "status": "ok"},
    {"key": "x", "status": "ok", "attempts": True},
    {"key": "x", "status": "ok", "attempts": 1, "latency_s": "fast"},
    {"key": "x", "status": "ok", "attempts": 1, "latency_s": -1},
    {"key": "x", "status": "error", "attempts": 1},
    {"key": "x", "status": "ok", "attempts": 1, "completion_tokens": -5},
    ["not", "an", "object"],
]


def test_records_of_the_wrong_types_are_skipped_and_counted(tmp_path):
    path = tmp_path / "j"
    good = {"key": "g", "status": "ok", "attempts": 1, "response": "fine", "latency_s": 0.5}
    lines = [{"journal": "batchchat", "version": 2}, {"scope": {"endpoint": "sim", "checks": "none"}}, good,
             *BAD_RECORDS]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    journal = Journal(path, SIM)
    assert "g" in journal and "x" not in journal
    assert journal.invalid == len(BAD_RECORDS)
    assert journal.get_many(["g"])["g"].response == "fine"
    journal.close()


HOLD = "import sys, time; from pathlib import Path; from batchchat.store.lock import OutputLock; " \
       "OutputLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)"  # fmt: skip


def test_a_live_lock_names_its_process_and_a_dead_ones_lock_is_taken_over(tmp_path):
    output = tmp_path / "out.parquet"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(output)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(JobError, match=rf"another batchchat run is writing out.parquet \(pid {holder.pid} on "):
            OutputLock(output).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "out.parquet.lock").exists()  # left behind by the killed holder
    with OutputLock(output) as lock:
        assert f"pid {os.getpid()}" in lock.path.read_text()
    assert not (tmp_path / "out.parquet.lock").exists()


def test_a_journal_holding_more_keys_than_its_dict_answers_a_rerun_the_same(tmp_path, monkeypatch):
    """Past FOLD_AT keys the index keeps them in sorted arrays, and the plan and the assembly look
    a batch's keys up at once (``prefetch``): a rerun of a finished run sends nothing, and writes
    the very rows it wrote, each paid by the earlier run; the rows that failed are found failed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import batchchat

    monkeypatch.setattr("batchchat.core.compact.FOLD_AT", 8)
    prompts = [f"question {i}" for i in range(90)] + ["question 3", ""]
    pq.write_table(pa.table({"prompt": prompts}), tmp_path / "in.parquet")
    settings = dict(input=tmp_path / "in.parquet", output=tmp_path / "out.parquet", model="sim-chat",
                    provider="sim", simulator={"fault_rate": 0.2, "seed": 3}, max_attempts=1)  # fmt: skip
    first = batchchat.run(**settings)
    before = pq.read_table(tmp_path / "out.parquet").to_pylist()
    statuses = [r["status"] for r in before]
    assert statuses.count("error") > 2 and statuses.count("ok") > 50  # some failed, some answered
    again = batchchat.run(**settings)
    after = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert again.summary.requests == 0 and first.summary.requests == 90
    assert [{**r, "paid": None} for r in after] == [{**r, "paid": None} for r in before]
    assert [r["paid"] for r in after] == [
        None if r["status"] == "error" and r["error_type"] == "invalid_input" else
        "shared" if i == 90 else "earlier_run" for i, r in enumerate(before)]  # fmt: skip
    pq.write_table(pa.table({"prompt": prompts + [f"new {i}" for i in range(10)]}), tmp_path / "in.parquet")
    grown = batchchat.run(**settings)  # ten keys the journal has not got: sent, not taken as answered
    assert grown.summary.requests == 10
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert rows[:92] == after and {r["paid"] for r in rows[92:]} == {"this_run"}
