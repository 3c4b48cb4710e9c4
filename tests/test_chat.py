"""`batchchat chat`: one question, or a conversation read from stdin that keeps its history."""

import json
import os
import subprocess
import sys
import time

from batchchat.simulator import synthetic_reply
from tests.helpers import KEY_VARIABLES, cli, read_output

QUESTION = "What are some fun things to do in New York?"
GUIDE = "You are a helpful travel guide."


def reply(messages: list[dict]) -> str:
    return synthetic_reply({"model": "sim-chat", "messages": messages})[0]


def test_one_question_with_a_system_prompt(sim):
    result = cli("chat", QUESTION, "--system", GUIDE, "-m", "sim-chat", "--base-url", sim.url)
    assert result.exit_code == 0, result.stderr
    messages = [{"role": "system", "content": GUIDE}, {"role": "user", "content": QUESTION}]
    assert sim.requests[0]["body"]["messages"] == messages
    assert result.stdout == reply(messages) + "\n"


def test_stream_prints_the_answer_as_it_arrives(sim_factory):
    server = sim_factory(latency_ms=50, tokens_per_s=25)  # about 1.5 s of tokens
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARIABLES}
    process = subprocess.Popen(
        [sys.executable, "-m", "batchchat", "chat", QUESTION, "--system", GUIDE, "--stream", "-m", "sim-chat",
         "--base-url", server.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    first = process.stdout.read(12)  # returns once the first pieces are printed
    first_at = time.monotonic()
    rest = process.stdout.read()
    ended_at = time.monotonic()
    assert process.wait(timeout=30) == 0
    messages = [{"role": "system", "content": GUIDE}, {"role": "user", "content": QUESTION}]
    assert (first + rest).decode() == reply(messages) + "\n"
    assert ended_at - first_at > 0.5  # the start was on screen well before the end
    assert server.requests[0]["body"]["stream"] is True


def test_a_conversation_from_stdin_keeps_its_history_and_can_be_saved(sim, tmp_path):
    saved = tmp_path / "talk.jsonl"
    result = cli("chat", "--system", GUIDE, "-m", "sim-chat", "--base-url", sim.url, "--save", saved,
                 input=f"{QUESTION}\n\nAnd in the evening?\n")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    first = [{"role": "system", "content": GUIDE}, {"role": "user", "content": QUESTION}]
    second = [
        *first,
        {"role": "assistant", "content": reply(first)},
        {"role": "user", "content": "And in the evening?"},
    ]
    assert [r["body"]["messages"] for r in sim.requests] == [first, second]  # the blank line sent nothing
    assert result.stdout == reply(first) + "\n" + reply(second) + "\n"
    [line] = saved.read_text(encoding="utf-8").splitlines()
    assert json.loads(line) == {"messages": [*second, {"role": "assistant", "content": reply(second)}]}

    # the saved conversation is a table `run --messages-column` reads back
    output = tmp_path / "again.parquet"
    rerun = cli(
        "run", "-i", saved, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--messages-column", "messages"
    )
    assert rerun.exit_code == 0, rerun.stderr
    assert sim.requests[-1]["body"]["messages"] == json.loads(line)["messages"]
    assert read_output(output)[0]["status"] == "ok"


def test_a_failed_turn_exits_1_and_a_refused_key_exits_2(sim):
    failed = cli("chat", "[sim:fault=404]", "-m", "sim-chat", "--base-url", sim.url)
    assert failed.exit_code == 1 and "error: not_found: HTTP 404" in failed.stderr
    refused = cli("chat", "[sim:fault=401] hello", "-m", "sim-chat", "--base-url", sim.url)
    assert refused.exit_code == 2
    assert f"error: {sim.url} wants an API key, and none was sent (HTTP 401" in refused.stderr  # names where
    assert refused.stderr.rstrip().endswith("and run again")


def test_a_transient_failure_is_retried(sim):
    result = cli("chat", "[sim:fault=503,times=1] hi", "-m", "sim-chat", "--base-url", sim.url)
    assert result.exit_code == 0 and "trying again" in result.stderr
    assert result.stdout == reply([{"role": "user", "content": "[sim:fault=503,times=1] hi"}]) + "\n"


def test_bad_chat_settings_exit_2(sim, tmp_path):
    assert "no model" in cli("chat", "hi", "--base-url", sim.url).stderr
    result = cli("chat", "hi", "-m", "sim-chat", "--base-url", sim.url, "--save", tmp_path / "talk.txt")
    assert result.exit_code == 2 and "give a .jsonl file" in result.stderr
    assert sim.requests == []


def test_a_chat_turn_against_nothing_takes_its_attempts_and_exits_1(tmp_path):
    result = cli("chat", "hello", "-m", "m", "--base-url", "http://127.0.0.1:9/v1", "--max-attempts", "2")
    assert result.exit_code == 1  # a failed turn, as before: the session would go on
    assert result.stderr.count("trying again") == 1 and "error: connection: cannot connect" in result.stderr
