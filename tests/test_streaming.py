"""Streaming: the assembly of SSE chunks in both dialects, and whole streamed runs against the simulator."""

import asyncio
import json

import pytest

import batchchat
from batchchat.client import ChatClient
from batchchat.core.errors import RequestError
from batchchat.core.sse import Event
from batchchat.job.jobfile import load_job
from batchchat.providers.openai import StreamAssembly
from batchchat.simulator import synthetic_reply
from tests.helpers import cli, read_output, write_csv


def chunk(content=None, finish=None, usage=None, choices=True, **extra) -> Event:
    data = {"id": "r1", "object": "chat.completion.chunk", "model": "m", **extra}
    if choices:
        data["choices"] = [
            {"index": 0, "delta": {} if content is None else {"content": content}, "finish_reason": finish}
        ]
    else:
        data["choices"] = []
    if usage:
        data["usage"] = usage
    return Event(json.dumps(data))


USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def assemble(*events: Event):
    stream = StreamAssembly()
    for i, event in enumerate(events):
        stream.add(event, elapsed_s=0.1 * (i + 1))
    return stream.result(1.0, {})


def test_together_dialect_usage_on_the_final_chunk():
    result = assemble(chunk(""), chunk("Hel"), chunk("lo"), chunk(finish="stop", usage=USAGE), Event("[DONE]"))
    assert (result.content, result.finish_reason, result.request_id) == ("Hello", "stop", "r1")
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (5, 3, 8)
    assert result.ttft_s == pytest.approx(0.2)  # the first chunk with text, not the empty one before it
    assert result.latency_s == 1.0


def test_openai_dialect_usage_on_an_extra_chunk_with_no_choices():
    result = assemble(chunk("Hi"), chunk(finish="stop"), chunk(choices=False, usage=USAGE), Event("[DONE]"))
    assert result.content == "Hi" and result.usage.total_tokens == 8


def test_a_stream_without_usage_leaves_it_unknown_never_invented():
    result = assemble(chunk("Hi"), chunk(finish="length"), Event("[DONE]"))
    assert result.usage.prompt_tokens is None and result.usage.total_tokens is None
    assert result.finish_reason == "length"


def test_older_together_streams_carry_text_on_token():
    result = assemble(Event(json.dumps({"id": "x", "token": {"text": "Hey"}})), chunk(finish="eos"), Event("[DONE]"))
    assert result.content == "Hey"


@pytest.mark.parametrize(
    ("events", "error_type", "fragment"),
    [
        ([chunk("Hal"), chunk("f")], "stream_truncated", "without [DONE] and a finish_reason"),
        ([chunk("Hal"), chunk(finish="stop")], "stream_truncated", "without [DONE]"),
        ([chunk("Hal"), Event("[DONE]")], "stream_truncated", "without a finish_reason"),
        ([chunk("Hal"), Event('{"choices": [{"delta": {"content": ')], "bad_response", "malformed stream chunk"),
        (
            [chunk("Hal"), Event('{"error": {"message": "overloaded"}}')],
            "server_error",
            "error in the stream: overloaded",
        ),
    ],
    ids=["cut-off", "no-done", "no-finish-reason", "malformed-chunk", "error-chunk"],
)
def test_incomplete_or_failed_streams_are_retryable_errors_and_never_answers(events, error_type, fragment):
    with pytest.raises(RequestError) as info:
        assemble(*events)
    assert info.value.error_type == error_type and info.value.retryable
    assert fragment in info.value.message


def test_only_the_first_choice_counts_and_nothing_after_done():
    other = Event(json.dumps({"choices": [{"index": 1, "delta": {"content": "other"}}]}))
    result = assemble(chunk("A"), other, chunk(finish="stop"), Event("[DONE]"), chunk("late"))
    assert result.content == "A"


def stream_once(url: str, text: str, *, usage_option: bool, timeout: float = 30):
    from batchchat.core.records import ChatRequest

    request = ChatRequest(row=0, key="k", model="sim-chat", messages=({"role": "user", "content": text},))
    pieces = []

    async def go():
        async with ChatClient(url, None, concurrency=2, timeout_s=timeout, stream=True, stream_usage=usage_option) as c:
            return await c.complete(request, pieces.append)

    return asyncio.run(go()), pieces


@pytest.mark.parametrize("usage_option", [False, True], ids=["together-dialect", "openai-dialect"])
def test_a_streamed_answer_is_the_same_answer_with_usage_and_timings(sim_factory, usage_option):
    server = sim_factory(latency_ms=30, tokens_per_s=400)
    result, pieces = stream_once(server.url, "What are some fun things to do in New York?", usage_option=usage_option)
    body = server.requests[0]["body"]
    assert body["stream"] is True and ("stream_options" in body) == usage_option
    content, finish, prompt_tokens, completion_tokens = synthetic_reply(body)
    assert result.content == content == "".join(pieces) and len(pieces) > 5
    assert (result.finish_reason, result.usage.prompt_tokens, result.usage.completion_tokens) == (
        finish,
        prompt_tokens,
        completion_tokens,
    )
    # the simulator paces tokens at 400/s after 30 ms: the first arrives well before the last
    assert 0.03 <= result.ttft_s < result.latency_s - 0.02


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [("stream_cut", "stream_truncated"), ("stream_malformed", "bad_response"), ("stream_error", "server_error"),
     ("drop", "connection")],
)  # fmt: skip
def test_stream_faults_from_the_simulator(sim, fault, error_type):
    with pytest.raises(RequestError) as info:
        stream_once(sim.url, f"[sim:fault={fault}] tell me a story", usage_option=False)
    assert info.value.error_type == error_type and info.value.retryable


def test_usage_is_asked_for_the_openai_way_except_from_together_and_the_simulator(monkeypatch):
    monkeypatch.setenv("TOGETHER_API_KEY", "k")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    assert load_job(model="m").endpoint.stream_usage is False
    assert load_job(model="m", base_url="https://api.together.ai/v1").endpoint.stream_usage is False
    assert load_job(model="m", provider="openai").endpoint.stream_usage is True
    assert load_job(model="m", base_url="http://localhost:8000/v1").endpoint.stream_usage is True
    assert load_job(model="m", provider="sim").endpoint.stream_usage is False


def test_stream_settings_in_job_files(tmp_path):
    (tmp_path / "in.csv").write_text("prompt\nhi\n", encoding="utf-8")
    job_file = tmp_path / "job.toml"
    job_file.write_text('input = "in.csv"\nmodel = "m"\nprovider = "sim"\nstream_tokens = true\n', encoding="utf-8")
    assert batchchat.load_job(job_file).stream is True
    assert batchchat.load_job(job_file, stream=False).stream is False  # the override wins, as flags do
    job_file.write_text('input = "in.csv"\nmodel = "m"\nprovider = "sim"\nstream = true\nstream_tokens = false\n')
    with pytest.raises(batchchat.JobError, match="disagree"):
        batchchat.load_job(job_file)
    job_file.write_text('input = "in.csv"\nmodel = "m"\nprovider = "sim"\nstream = "yes"\n', encoding="utf-8")
    with pytest.raises(batchchat.JobError, match="must be true or false"):
        batchchat.load_job(job_file)


def test_two_hundred_streamed_rows_with_a_fifth_of_streams_failing_all_end_ok(sim_factory, tmp_path):
    server = sim_factory(fault_rate=0.2, seed=3, latency_ms=2, tokens_per_s=5000)
    prompts = [f"streamed question {i}" for i in range(200)]
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[p] for p in prompts])
    output = tmp_path / "out.parquet"
    result = batchchat.run(input=source, output=output, model="sim-chat", base_url=server.url, stream=True,
                           max_attempts=10, concurrency=32)  # fmt: skip
    stats = server.stats()
    assert result.exit_code == 0
    assert stats["faults"] >= 20 and stats.get("fault:stream_cut", 0) and stats.get("fault:stream_malformed", 0)
    assert stats["answered_twice"] == 0
    rows = read_output(output)
    for row, prompt in zip(rows, prompts, strict=True):
        body = {"model": "sim-chat", "messages": [{"role": "user", "content": prompt}]}
        content, _, prompt_tokens, completion_tokens = synthetic_reply(body)
        assert row["status"] == "ok" and row["response"] == content
        assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt_tokens, completion_tokens)
        assert 0 < row["ttft_s"] <= row["latency_s"]
    assert result.summary.ttft_p50_s is not None


def test_a_local_server_that_serves_one_at_a_time_gets_every_row_with_few_retries(sim_factory, tmp_path):
    """Like llama.cpp's server: one request at a time, and a new arrival cuts the stream in flight."""
    server = sim_factory(one_at_a_time=True, latency_ms=20, tokens_per_s=2000)
    prompts = [f"a longer question for a small local model, number {i}" for i in range(20)]
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[p] for p in prompts])
    output = tmp_path / "out.parquet"
    result = cli("run", "-i", source, "-o", output, "-m", "local", "--base-url", server.url, "--stream",
                 "--concurrency", "4", "--max-attempts", "4")  # fmt: skip
    assert result.exit_code == 0, result.output
    stats = server.stats()
    assert stats["max_in_flight"] == 4  # it was sent 4 at once at first ...
    assert 1 <= stats["streams_cut"] <= 8  # ... which cut a few streams, not one per row
    assert stats["answered_twice"] == 0
    rows = read_output(output)
    assert [row["status"] for row in rows] == ["ok"] * len(prompts)
    for row, prompt in zip(rows, prompts, strict=True):
        content, *_ = synthetic_reply({"model": "local", "messages": [{"role": "user", "content": prompt}]})
        assert row["response"] == content
    assert "concurrency lowered: the server cut" in result.output and "ran at 1" in result.output
