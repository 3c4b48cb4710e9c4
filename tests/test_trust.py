"""A stored answer is reused only where it is still the right answer: for the same request, to the
same endpoint, and while it passes the job's current checks. Through the CLI, against real
simulators over loopback."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from batchchat.simulator import BackgroundSimulator

from .helpers import cli, read_output, write_csv

ROWS = 12


def sent(result: Any) -> int:
    """Requests this run sent, from its summary (0 when it had nothing to send)."""
    found = re.search(r"([\d,]+) sent,", result.stderr)
    return int(found.group(1).replace(",", "")) if found else 0


def questions(folder: Path, rows: int = ROWS) -> Path:
    return write_csv(folder / "in.csv", ["prompt"], [[f"question {i}"] for i in range(rows)])


def test_answers_from_one_endpoint_are_never_reused_for_another(tmp_path: Path, sim_factory: Any) -> None:
    source = questions(tmp_path)
    output = tmp_path / "out.parquet"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "-m", "sim-chat-large")
    trial = cli("run", *common, "--provider", "sim")  # a trial on the simulator first, as jobs/README.md suggests
    assert trial.exit_code == 0, trial.stderr
    real = sim_factory()  # then "the real endpoint": another server, another URL
    dry = cli("run", *common, "--base-url", real.url, "--dry-run")
    assert dry.exit_code == 0 and f"{2 * ROWS} requests to send" in dry.stdout
    assert f"the journal holds {2 * ROWS} answers from the built-in simulator; they are not reused" in dry.stdout
    moved = cli("run", *common, "--base-url", real.url)
    assert moved.exit_code == 0, moved.stderr
    assert real.stats()["received"] == 2 * ROWS  # every row sent again, to the endpoint asked
    assert all(r["status"] == "ok" for r in read_output(output))
    again = cli("run", *common, "--base-url", real.url.replace("127.0.0.1", "127.0.0.1") + "/")  # the same, normalised
    assert again.exit_code == 0 and "nothing to send" in again.stderr
    assert real.stats()["received"] == 2 * ROWS
    back = cli("run", *common, "--provider", "sim", "--dry-run")  # the simulator's answers are still there
    assert back.exit_code == 0 and f"{2 * ROWS} rows answered by an earlier run" in back.stdout


def test_a_journal_from_before_endpoints_were_recorded_is_claimed_by_the_endpoint_that_answers(
    tmp_path: Path, sim: BackgroundSimulator
) -> None:
    source = questions(tmp_path, 3)
    output = tmp_path / "out.parquet"
    assert cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url).exit_code == 0
    journal = Path(f"{output}.journal")
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    old = [{"journal": "batchchat", "version": 1}] + [line for line in lines if "key" in line]
    journal.write_text("".join(json.dumps(line) + "\n" for line in old))  # as the previous release wrote it
    questions(tmp_path, 4)
    typo = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", "http://127.0.0.1:9/v1")
    assert typo.exit_code == 2  # a mistyped URL answers nothing, and claims nothing
    first = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url)
    assert first.exit_code == 0 and len(sim.requests) == 4  # only the new row
    assert (
        "did not record where answers came from: its 3 answers are taken as answers from "
        f"{sim.url.rstrip('/')}" in first.stderr
    )
    second = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url)
    assert second.exit_code == 0 and "did not record" not in second.stderr  # said once
    elsewhere = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--provider", "sim", "--dry-run")
    assert "4 requests to send" in elsewhere.stdout  # the claim holds for later runs, elsewhere too


LABELS_BEFORE, LABELS_AFTER = ("positive", "negative"), ("good", "bad")


def test_changed_labels_judge_stored_answers_again_and_ask_again_those_that_fail(
    tmp_path: Path, sim_factory: Any
) -> None:
    server = sim_factory(labels=LABELS_BEFORE)
    source = questions(tmp_path)
    output = tmp_path / "out.parquet"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", server.url)
    assert cli("run", *common, "--labels", ",".join(LABELS_BEFORE)).exit_code == 0
    assert server.stats()["received"] == ROWS
    server.simulator.config = replace(server.simulator.config, labels=LABELS_AFTER)  # the model now knows the new set
    dry = cli("run", *common, "--labels", ",".join(LABELS_AFTER), "--dry-run")
    assert f"{ROWS} stored answers fail the job's changed checks: asked again while re-asks are left, else an error" in dry.stdout
    after = cli("run", *common, "--labels", ",".join(LABELS_AFTER))
    assert after.exit_code == 0, after.stderr
    assert server.stats()["received"] == 2 * ROWS  # each stored answer re-asked once, and only once
    rows = read_output(output)
    assert all(r["status"] == "ok" and r["label"] in LABELS_AFTER for r in rows)
    assert all(r["attempts"] == 2 for r in rows)  # the stored answer, then the re-ask
    assert "invalid answers" not in after.stderr or f"{ROWS} invalid answers" in after.stderr
    again = cli("run", *common, "--labels", ",".join(LABELS_AFTER))
    assert again.exit_code == 0 and "nothing to send" in again.stderr


def test_a_stored_invalid_answer_that_the_new_labels_accept_is_used_without_a_request(
    tmp_path: Path, sim_factory: Any
) -> None:
    server = sim_factory(labels=LABELS_BEFORE)  # a model that answers positive/negative, whatever it is asked
    source = questions(tmp_path)
    output = tmp_path / "out.parquet"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", server.url, "--invalid-retries", "0")
    first = cli("run", *common, "--labels", "yes,no")
    assert first.exit_code == 1
    assert {r["error_type"] for r in read_output(output)} == {"invalid_label"}
    fixed = cli("run", *common, "--labels", ",".join(LABELS_BEFORE))
    assert fixed.exit_code == 0, fixed.stderr
    assert server.stats()["received"] == ROWS  # nothing sent: the answers were right all along
    rows = read_output(output)
    assert all(r["status"] == "ok" and r["label"] in LABELS_BEFORE and r["error"] is None for r in rows)


def test_more_re_asks_ask_again_only_the_stored_invalid_answers(tmp_path: Path, sim_factory: Any) -> None:
    server = sim_factory(labels=LABELS_BEFORE, invalid_rate=0.5, seed=5)
    source = questions(tmp_path, 40)
    output = tmp_path / "out.parquet"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", server.url, "--labels", "positive,negative")
    assert cli("run", *common, "--invalid-retries", "0").exit_code == 1
    invalid = [r for r in read_output(output) if r["status"] == "error"]
    assert invalid and all(r["error_type"] == "invalid_label" for r in invalid)
    more = cli("run", *common, "--invalid-retries", "3")
    assert more.exit_code in (0, 1)
    rows = read_output(output)
    resent = server.stats()["received"] - 40
    assert len(invalid) <= resent <= 3 * len(invalid)  # only the invalid ones, each at most 3 more times
    assert all((r["status"] == "ok") == (r["label"] is not None) for r in rows)
    assert sum(r["status"] == "ok" for r in rows) > 40 - len(invalid)


def test_no_ok_row_lacks_its_label_when_the_cap_stops_the_re_asks(tmp_path: Path, sim_factory: Any) -> None:
    server = sim_factory(labels=LABELS_BEFORE)
    questions(tmp_path, 30)
    output = tmp_path / "out.csv"
    job = tmp_path / "job.toml"
    job.write_text(f'input = "in.csv"\noutput = "out.csv"\nmodel = "sim-chat"\nbase_url = "{server.url}"\n'
                   'max_tokens = 5\n[prices]\n"sim-chat" = { input = 1000.0, output = 1000.0 }\n')  # fmt: skip
    assert cli("run", job, "--labels", "positive,negative").exit_code == 0
    server.simulator.config = replace(server.simulator.config, labels=LABELS_AFTER)
    capped = cli("run", job, "--labels", "good,bad", "--max-cost", "0.3", "--concurrency", "1")
    assert capped.exit_code == 1, capped.stderr
    rows = read_output(output)
    statuses = {r["status"] for r in rows}
    assert statuses == {"ok", "pending"}
    assert all(r["label"] in LABELS_AFTER for r in rows if r["status"] == "ok")
    assert all(r["label"] == "" and r["response"] == "" for r in rows if r["status"] == "pending")
    assert "stopped at the cost cap" in capped.stderr


def test_history_and_the_default_prompt_column_make_one_conversation(tmp_path: Path, sim: BackgroundSimulator) -> None:
    history = json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])
    source = write_csv(tmp_path / "in.csv", ["history", "prompt"], [[history, "And then?"], ["", "Alone"]])
    dry = cli("run", "-i", source, "-m", "sim-chat", "--base-url", sim.url, "--messages-column", "history",
              "--system", "Be brief.", "--dry-run")  # fmt: skip
    assert (
        "each row sends: the system prompt + the history in column 'history' + the prompt in column 'prompt'"
        in dry.stdout
    )
    result = cli("run", "-i", source, "-m", "sim-chat", "--base-url", sim.url, "--messages-column", "history",
                 "--system", "Be brief.")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    bodies = sorted((r["body"]["messages"] for r in sim.requests), key=len)
    assert bodies == [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Alone"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "And then?"}],
    ]  # fmt: skip
    only_history = write_csv(tmp_path / "only.csv", ["history"], [[history]])
    alone = cli("run", "-i", only_history, "-m", "sim-chat", "--base-url", sim.url, "--messages-column", "history")
    assert alone.exit_code == 0, alone.stderr
    assert sim.requests[-1]["body"]["messages"][-1] == {"role": "assistant", "content": "Hello!"}


def test_contains_scores_whole_words_and_numbers(tmp_path: Path, sim: BackgroundSimulator) -> None:
    answers = ["It has 16 sides.", "[a6b3] tag", "It is 6.", "6 sides", "six"]
    source = write_csv(tmp_path / "in.csv", ["prompt", "expected"],
                       [[f"[sim:reply={a}]", "6"] for a in answers])  # fmt: skip
    result = cli("run", "-i", source, "-o", tmp_path / "out.parquet", "-m", "sim-chat", "--base-url", sim.url,
                 "--expected-column", "expected", "--score", "contains")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert [r["score"] for r in read_output(tmp_path / "out.parquet")] == [0.0, 0.0, 1.0, 1.0, 0.0]


def test_an_unreachable_endpoint_stops_the_run_at_once_and_leaves_rows_pending(tmp_path: Path) -> None:
    source = questions(tmp_path, 3)
    output = tmp_path / "out.parquet"
    with BackgroundSimulator() as server:  # answers the first rows, then goes away
        url, port = server.url, server.simulator.url.rsplit(":", 1)[1].split("/")[0]
        assert cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", url).exit_code == 0
    questions(tmp_path, 40)
    gone = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", url, "--max-attempts", "6")
    assert gone.exit_code == 2
    errors = [line for line in gone.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and f"nothing answers at {url}" in errors[0] and "Connect call failed" in errors[0]
    assert "3 of 40 rows finished and are in" in errors[0] and "'pending'" in errors[0]
    rows = read_output(output)
    assert [r["status"] for r in rows] == ["ok"] * 3 + ["pending"] * 37  # pending, not error: a rerun sends them
    with BackgroundSimulator(port=int(port)) as back:
        assert cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", url).exit_code == 0
        assert back.stats()["received"] == 37


def test_a_run_where_nothing_ever_connects_writes_nothing(tmp_path: Path) -> None:
    source = questions(tmp_path, 30)
    result = cli("run", "-i", source, "-o", tmp_path / "out.parquet", "-m", "m", "--base-url",
                 "http://127.0.0.1:9/v1", "--max-attempts", "1")  # fmt: skip
    assert result.exit_code == 2 and "nothing answers at http://127.0.0.1:9/v1" in result.stderr
    assert "no row finished, so nothing was written" in result.stderr
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "out.parquet.journal").exists()


def test_input_columns_keep_their_types_from_jsonl_as_from_parquet(tmp_path: Path, sim: BackgroundSimulator) -> None:
    from .helpers import write_jsonl

    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    rows = [{"prompt": "And then?", "history": history, "tags": ["a", "b"], "n": 1},
            {"prompt": "Alone", "history": [], "tags": [], "n": 2}]  # fmt: skip
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    for output in ("out.parquet", "out.jsonl"):
        result = cli("run", "-i", source, "-o", tmp_path / output, "-m", "sim-chat", "--base-url", sim.url,
                     "--messages-column", "history")  # fmt: skip
        assert result.exit_code == 0, result.stderr
        written = read_output(tmp_path / output)
        assert [r["history"] for r in written] == [history, []]  # lists, not JSON text
        assert [r["tags"] for r in written] == [["a", "b"], []] and [r["n"] for r in written] == [1, 2]


def test_a_streamed_rerun_says_which_rows_have_no_time_to_first_token(tmp_path: Path, sim: BackgroundSimulator) -> None:
    source = questions(tmp_path, 4)
    output = tmp_path / "out.parquet"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url)
    assert cli("run", *common).exit_code == 0
    questions(tmp_path, 6)
    streamed = cli("run", *common, "--stream")
    assert streamed.exit_code == 0, streamed.stderr
    assert "4 rows answered by earlier runs without streaming: their ttft_s is empty" in streamed.stderr
    rows = read_output(output)
    assert [r["ttft_s"] is None for r in rows] == [True] * 4 + [False] * 2
    plain = cli("run", *common)  # not streaming: nothing to say
    assert "ttft_s" not in plain.stderr


def test_a_changed_schema_judges_stored_answers_again_instead_of_sending_every_row(
    tmp_path: Path, sim: BackgroundSimulator
) -> None:
    source = questions(tmp_path, 30)
    output = tmp_path / "out.parquet"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url)
    loose = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer", "maximum": 10}}}
    assert cli("run", *common, "--json-schema", json.dumps(loose)).exit_code == 0
    first = read_output(output)
    required = {**loose, "required": ["a", "b"]}  # every stored answer has both: nothing to send
    same = cli("run", *common, "--json-schema", json.dumps(required))
    assert same.exit_code == 0 and "nothing to send" in same.stderr and len(sim.requests) == 30
    tight = {**required, "properties": {"a": {"type": "string"}, "b": {"type": "integer", "maximum": 5}}}
    too_big = [r for r in first if r["out_b"] > 5]
    assert too_big
    result = cli("run", *common, "--json-schema", json.dumps(tight))
    assert result.exit_code == 0, result.stderr
    assert len(sim.requests) == 30 + len(too_big)  # only the answers the tighter schema rejects
    assert all(r["body"]["response_format"]["json_schema"]["schema"] == tight for r in sim.requests[30:])
    rows = read_output(output)
    assert all(r["status"] == "ok" and r["out_b"] <= 5 for r in rows)
    assert [r["response"] for r in rows if r["out_b"] is not None and r["prompt"] not in
            {t["prompt"] for t in too_big}] == [r["response"] for r in first if r["out_b"] <= 5]


def test_changing_the_labels_and_back_reuses_the_first_answers(tmp_path: Path, sim_factory: Any) -> None:
    server = sim_factory(labels=LABELS_BEFORE)
    source = questions(tmp_path)
    output = tmp_path / "out.parquet"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", server.url)
    assert cli("run", *common, "--labels", ",".join(LABELS_BEFORE)).exit_code == 0
    first = read_output(output)
    server.simulator.config = replace(server.simulator.config, labels=LABELS_AFTER)
    assert cli("run", *common, "--labels", ",".join(LABELS_AFTER)).exit_code == 0
    assert server.stats()["received"] == 2 * ROWS
    back = cli("run", *common, "--labels", ",".join(LABELS_BEFORE))
    assert back.exit_code == 0 and "nothing to send" in back.stderr  # judged by these labels already
    assert server.stats()["received"] == 2 * ROWS
    assert [r["label"] for r in read_output(output)] == [r["label"] for r in first]


def test_retry_errors_with_changed_checks_sends_failed_requests_again_and_keeps_their_error_type(
    tmp_path: Path, sim_factory: Any
) -> None:
    server = sim_factory(labels=("pos", "neg", "neu"))
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["alpha"], ["beta [sim:fault=500,times=1]"], ["gamma"]])
    output = tmp_path / "out.csv"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", server.url)
    assert cli("run", *common, "--labels", "pos,neg,neu", "--max-attempts", "1").exit_code == 1
    before = read_output(output)
    assert [r["error_type"] for r in before].count("server_error") == 1
    received = server.stats()["received"]
    again = cli("run", *common, "--labels", "pos,neg", "--invalid-retries", "0", "--retry-errors")
    rows = read_output(output)
    beta = rows[1]
    assert beta["status"] == "ok" or beta["error_type"] == "invalid_label"  # sent again, and answered
    assert beta["response"] != ""
    neu = [r for r, b in zip(rows, before, strict=True) if b["label"] == "neu"]
    resent = server.stats()["received"] - received
    assert resent == 1 + len(neu)  # the failed request, and each stored "neu" answer, sent from scratch
    assert again.exit_code in (0, 1)


def test_the_cap_stopping_re_asks_leaves_the_row_pending_and_a_rerun_finishes_them(
    tmp_path: Path, sim_factory: Any
) -> None:
    server = sim_factory(labels=("maybe",))  # never one of the job's labels: every answer is re-asked
    questions(tmp_path, 6)
    job = tmp_path / "job.toml"
    job.write_text(f'input = "in.csv"\noutput = "out.csv"\nmodel = "sim-chat"\nbase_url = "{server.url}"\n'
                   'max_tokens = 5\nconcurrency = 1\nlabels = ["yes", "no"]\ninvalid_retries = 2\n'
                   '[prices]\n"sim-chat" = { input = 1000.0, output = 1000.0 }\n')  # fmt: skip
    capped = cli("run", job, "--max-cost", "0.1")
    assert capped.exit_code == 1, capped.stderr
    rows = read_output(tmp_path / "out.csv")
    finished = [r for r in rows if r["status"] != "pending"]
    assert all(r["error_type"] == "invalid_label" and r["attempts"] == "3" for r in finished)
    paid = server.stats()["received"]
    assert paid > 3 * len(finished)  # the cap stopped a row part-way through its re-asks
    done = cli("run", job)
    assert done.exit_code == 1
    rows = read_output(tmp_path / "out.csv")
    assert all(r["error_type"] == "invalid_label" and r["attempts"] == "3" for r in rows)
    assert server.stats()["received"] == 3 * 6  # every answer paid once: three per row, no more


def test_a_kill_during_re_asks_does_not_pay_again_for_the_answers_already_received(
    tmp_path: Path, sim_factory: Any
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from .helpers import KEY_VARIABLES

    server = sim_factory(labels=("maybe",), latency_ms=30)  # every answer is re-asked, twice
    source = questions(tmp_path, 40)
    output = tmp_path / "out.parquet"
    command = [sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o", str(output), "-m", "sim-chat",
               "--base-url", server.url, "--labels", "yes,no", "--concurrency", "4"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARIABLES}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while server.stats().get("answered", 0) < 50:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert subprocess.run(command, capture_output=True, env=env, timeout=120).returncode == 1
    rows = read_output(output)
    assert all(r["error_type"] == "invalid_label" and r["attempts"] == 3 for r in rows)
    assert server.stats()["answered"] <= 3 * 40 + 4  # at most what was in flight at the kill, paid twice


def test_adding_jsonl_rows_never_changes_how_the_old_rows_read(tmp_path: Path, sim: BackgroundSimulator) -> None:
    from .helpers import write_jsonl

    rows: list[dict[str, Any]] = [{"meta": {"k": 1}, "tags": ["a"]}, {"meta": {"k": 2}, "tags": ["b"]}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    common = ("-i", source, "-o", tmp_path / "out.jsonl", "-m", "sim-chat", "--base-url", sim.url,
              "--template", "Describe {meta} and {tags}")  # fmt: skip
    assert cli("run", *common).exit_code == 0
    assert [r["body"]["messages"][-1]["content"] for r in sim.requests] == [
        'Describe {"k": 1} and ["a"]', 'Describe {"k": 2} and ["b"]']  # JSON, as written
    write_jsonl(source, [*rows, {"meta": {"k": 3, "j": "new"}, "tags": [1]}])
    more = cli("run", *common)
    assert more.exit_code == 0 and len(sim.requests) == 3  # only the new row
    assert [r["meta"] for r in read_output(tmp_path / "out.jsonl")][:2] == [{"k": 1}, {"k": 2}]


def test_json_equal_scores_jsonl_objects_with_different_keys(tmp_path: Path, sim: BackgroundSimulator) -> None:
    from .helpers import write_jsonl

    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": '[sim:reply={"a": 1}]', "exp": {"a": 1}},
                                                  {"prompt": '[sim:reply={"b": 2}]', "exp": {"b": 2}}])  # fmt: skip
    result = cli("run", "-i", source, "-o", tmp_path / "out.parquet", "-m", "sim-chat", "--base-url", sim.url,
                 "--expected-column", "exp", "--score", "json_equal")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert [r["score"] for r in read_output(tmp_path / "out.parquet")] == [1.0, 1.0]
