"""Whole runs through the library, against the simulator over real HTTP on loopback."""


import pytest

import batchchat
from batchchat.output.sink import OUTPUT_COLUMNS
from batchchat.simulator import synthetic_reply
from tests.helpers import read_output, sent_prompts, write_csv, write_table

AWKWARD = [
    'she said "hi", then left',
    "a, b, c",
    "line one\nline two\r\nline three",
    "emoji 🚀🔥 and accents: café, Straße, 日本語",
    "NA",
    "null",
    "0",
    "007",
    "  leading and trailing spaces  ",
    "x" * 200_000,
    "{not a placeholder}",
    "\ttab first",
]


def user_body(text: str, **params) -> dict:
    return {"model": "sim-chat", "messages": [{"role": "user", "content": text}], **params}


@pytest.mark.parametrize("out_suffix", [".parquet", ".csv", ".jsonl"])
@pytest.mark.parametrize("in_suffix", [".csv", ".parquet", ".jsonl"])
def test_every_input_format_to_every_output_format(sim, tmp_path, in_suffix, out_suffix):
    prompts = [f"question {i}: why is {i} interesting?" for i in range(7)]
    source = write_table(tmp_path / f"in{in_suffix}", {"id": [f"r{i}" for i in range(7)], "prompt": prompts})
    output = tmp_path / f"out{out_suffix}"
    result = batchchat.run(input=source, output=output, model="sim-chat", base_url=sim.url)
    assert result.exit_code == 0 and result.output == output
    rows = read_output(output)
    assert list(rows[0]) == ["id", "prompt", *OUTPUT_COLUMNS, "cost", "paid"]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(7)]
    for row, prompt in zip(rows, prompts, strict=True):
        content, finish, prompt_tokens, completion_tokens = synthetic_reply(user_body(prompt))
        assert row["prompt"] == prompt and row["response"] == content
        assert row["status"] == "ok" and row["finish_reason"] == finish
        assert int(row["prompt_tokens"]) == prompt_tokens and int(row["completion_tokens"]) == completion_tokens
        assert int(row["attempts"]) == 1 and row["model"] == "sim-chat" and row["request_id"].startswith("sim-")
        assert row["error_type"] in (None, "") and float(row["latency_s"]) > 0


@pytest.mark.parametrize("out_suffix", [".parquet", ".csv"])
def test_awkward_cells_are_sent_and_kept_exactly_as_written(sim, tmp_path, out_suffix):
    source = write_csv(tmp_path / "in.csv", ["prompt", "note"], [[text, text] for text in AWKWARD])
    output = tmp_path / f"out{out_suffix}"
    result = batchchat.run(input=source, output=output, model="sim-chat", base_url=sim.url, concurrency=4)
    assert result.exit_code == 0
    assert sorted(sent_prompts(sim)) == sorted(AWKWARD)
    rows = read_output(output)
    assert [r["prompt"] for r in rows] == AWKWARD
    assert [r["note"] for r in rows] == AWKWARD
    assert [r["response"] for r in rows] == [synthetic_reply(user_body(t))[0] for t in AWKWARD]


def test_system_prompt_is_sent_first(sim, tmp_path):
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["What are some fun things to do in New York?"]])
    batchchat.run(input=source, model="sim-chat", base_url=sim.url, system="You are a helpful travel guide.")
    assert sim.requests[0]["body"]["messages"] == [
        {"role": "system", "content": "You are a helpful travel guide."},
        {"role": "user", "content": "What are some fun things to do in New York?"},
    ]


def test_template_builds_each_prompt_from_its_row(sim, tmp_path):
    source = write_csv(tmp_path / "in.csv", ["text", "lang"], [["cat", "French"], ["dog", "German"]])
    batchchat.run(input=source, model="sim-chat", base_url=sim.url, template="Translate {{{text}}} to {lang}.",
                  concurrency=1)  # fmt: skip
    assert sent_prompts(sim) == ["Translate {cat} to French.", "Translate {dog} to German."]


def test_messages_column_sends_the_history_and_the_answer_lands_on_its_row(sim, tmp_path):
    histories = [
        [{"role": "system", "content": "You are a helpful travel guide."},
         {"role": "user", "content": "What are some fun things to do in New York?"},
         {"role": "assistant", "content": "Central Park, a Broadway show, the High Line."},
         {"role": "user", "content": "And for kids?"}],
        [{"role": "user", "content": "Hello"}],
    ]  # fmt: skip
    source = write_table(tmp_path / "in.jsonl", {"id": [1, 2], "messages": histories})
    output = tmp_path / "out.parquet"
    batchchat.run(input=source, output=output, model="sim-chat", base_url=sim.url, messages_column="messages")
    bodies = sorted((r["body"] for r in sim.requests), key=lambda b: len(b["messages"]))
    assert [b["messages"] for b in bodies] == [histories[1], histories[0]]
    rows = read_output(output)
    assert [r["response"] for r in rows] == [
        synthetic_reply({"model": "sim-chat", "messages": h})[0] for h in histories
    ]
    assert rows[0]["messages"] == histories[0]  # a list, as it came


def test_order_is_kept_at_concurrency_32_with_random_latency(sim_factory, tmp_path):
    server = sim_factory(latency_ms=1, jitter_ms=40, seed=5)
    prompts = [f"prompt number {i}" for i in range(400)]
    source = write_csv(tmp_path / "in.csv", ["id", "prompt"], [[str(i), p] for i, p in enumerate(prompts)])
    output = tmp_path / "out.parquet"
    result = batchchat.run(input=source, output=output, model="sim-chat", base_url=server.url, concurrency=32,
                           max_tokens=64)  # fmt: skip
    assert result.summary.ok == 400
    rows = read_output(output)
    assert [r["id"] for r in rows] == [str(i) for i in range(400)]
    assert [r["response"] for r in rows] == [synthetic_reply(user_body(p, max_tokens=64))[0] for p in prompts]
    arrival = [r["body"]["messages"][0]["content"] for r in server.requests]
    assert arrival != prompts or len(set(r["latency_s"] for r in rows)) > 1  # answers raced


def test_rows_that_keep_failing_become_error_rows_and_the_rest_succeed(sim, tmp_path):
    prompts = ["fine", "[sim:fault=500] always broken", "[sim:fault=503,times=1] flaky once", "[sim:fault=400] bad"]
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[p] for p in prompts])
    output = tmp_path / "out.parquet"
    result = batchchat.run(input=source, output=output, model="sim-chat", base_url=sim.url, max_attempts=2)
    assert result.exit_code == 1
    assert (result.summary.ok, result.summary.errors) == (2, 2)
    rows = read_output(output)
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "error"]
    assert [r["attempts"] for r in rows] == [1, 2, 2, 1]
    assert rows[1]["error_type"] == "server_error" and rows[1]["error"] == "HTTP 500: simulated internal server error"
    assert rows[3]["error_type"] == "bad_request" and rows[3]["response"] is None
    assert rows[2]["response"] == synthetic_reply(user_body(prompts[2]))[0]


def test_empty_prompts_are_error_rows_without_a_request(sim, tmp_path):
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["one"], [""], ["   "], ["two"]])
    output = tmp_path / "out.csv"
    result = batchchat.run(input=source, output=output, model="sim-chat", base_url=sim.url)
    rows = read_output(output)
    assert [r["status"] for r in rows] == ["ok", "error", "error", "ok"]
    assert [r["error_type"] for r in rows] == ["", "invalid_input", "invalid_input", ""]
    assert sorted(sent_prompts(sim)) == ["one", "two"]
    assert result.exit_code == 1


def test_the_api_key_is_sent_but_never_written(sim, tmp_path, monkeypatch):
    canary = "sk-canary-7f3a9c-never-write-me"
    monkeypatch.setenv("TOGETHER_API_KEY", canary)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hello"], ["[sim:fault=403]"], ["[sim:fault=drop]"]])
    for suffix in (".parquet", ".csv", ".jsonl"):
        output = tmp_path / f"out{suffix}"
        batchchat.run(input=source, output=output, model="sim-chat", base_url=sim.url, max_attempts=1)
        assert canary.encode() not in output.read_bytes()
        assert b"sk-canary" not in output.read_bytes()
    assert {r["authorization"] for r in sim.requests} == {f"Bearer {canary}"}


def test_provider_sim_needs_no_server_and_no_key(tmp_path):
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hello"], ["world"]])
    result = batchchat.run(input=source, model="sim-chat", provider="sim")
    rows = read_output(tmp_path / "in.out.parquet")
    assert result.exit_code == 0
    assert [r["response"] for r in rows] == [synthetic_reply(user_body(t))[0] for t in ("hello", "world")]


def test_arun_from_async_code(sim, tmp_path):
    import asyncio

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["async hello"]])
    result = asyncio.run(batchchat.arun(input=source, model="sim-chat", base_url=sim.url))
    assert result.summary.ok == 1
