"""Anthropic's Messages API, the second wire format, over HTTP against the simulator: live and
streamed answers, its errors (429 with its headers, 529 overloaded, an error event mid-stream),
the same output table as any provider, and a run killed and resumed."""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from batchchat.client import ChatClient
from batchchat.core.errors import JobError, RequestError
from batchchat.core.keys import request_key
from batchchat.core.records import ChatRequest
from batchchat.providers import dialect, read_answer
from batchchat.providers.anthropic import DEFAULT_MAX_TOKENS, AnthropicServer, message_body, rate_of
from batchchat.simulator import synthetic_reply
from tests.helpers import KEY_VARIABLES, cli, read_output, write_csv

ANTHROPIC = dialect("anthropic")


def request(text: str, system: str | None = None, **params) -> ChatRequest:
    messages = (({"role": "system", "content": system},) if system else ()) + ({"role": "user", "content": text},)
    pairs = tuple(sorted(params.items()))
    return ChatRequest(row=0, key=request_key("sim-chat", messages, pairs), model="sim-chat", messages=messages,
                       params=pairs)  # fmt: skip


def expected(req: ChatRequest) -> tuple[str, str, int, int]:
    """What the simulator answers: its reply to the request as Anthropic received it."""
    neutral = AnthropicServer().neutral(message_body(req))
    assert isinstance(neutral, dict)
    return synthetic_reply(neutral)


def complete(url: str, req: ChatRequest, *, stream: bool = False, key: str | None = None, texts=None):
    async def go():
        async with ChatClient(url, key, concurrency=4, timeout_s=30, stream=stream, wire=ANTHROPIC) as client:
            return await client.complete(req, texts.append if texts is not None else None)

    return asyncio.run(go())


def failure(url: str, req: ChatRequest, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as info:
        complete(url, req, **kwargs)
    return info.value


def test_a_request_is_a_messages_body_system_at_the_top_and_max_tokens_always_set():
    body = message_body(request("hi", system="be brief", stop="END", temperature=0.2))
    assert body == {"model": "sim-chat", "max_tokens": DEFAULT_MAX_TOKENS, "system": "be brief",
                    "messages": [{"role": "user", "content": "hi"}], "stop_sequences": ["END"],
                    "temperature": 0.2}  # fmt: skip
    assert message_body(request("hi", max_tokens=50))["max_tokens"] == 50
    image = {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                                         {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}}]}  # fmt: skip
    blocks = message_body(ChatRequest(0, "k", "m", (image,)))["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}}


def test_a_live_answer_is_read_from_its_content_blocks_and_sent_with_anthropics_headers(sim):
    req = request("What is the capital of France?", system="Answer in one word.")
    result = complete(sim.url, req, key="sk-ant-test-key-0123456789")
    content, _, prompt, completion = expected(req)
    assert (result.content, result.finish_reason) == (content, "stop")  # end_turn, said as any provider says it
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (prompt, completion)
    assert result.usage.total_tokens == prompt + completion
    assert result.answer["type"] == "message" and result.answer["stop_reason"] == "end_turn"  # kept as received
    sent = sim.requests[-1]
    assert sent["x-api-key"] == "sk-ant-test-key-0123456789" and sent["authorization"] is None
    assert sent["body"]["system"] == "Answer in one word." and sent["body"]["max_tokens"] == DEFAULT_MAX_TOKENS
    assert all(m["role"] != "system" for m in sent["body"]["messages"])


def test_a_streamed_answer_is_the_same_answer_assembled_from_named_events(sim):
    req = request("Tell me about streams.")
    pieces: list[str] = []
    streamed = complete(sim.url, req, stream=True, texts=pieces)
    whole = complete(sim.url, req)
    assert streamed.content == whole.content == expected(req)[0] == "".join(pieces)
    assert streamed.usage == whole.usage and streamed.finish_reason == "stop"
    assert streamed.ttft_s is not None and streamed.ttft_s <= streamed.latency_s
    assert read_answer(streamed.answer).content == streamed.content  # as the journal reads it back


def test_max_tokens_reached_is_length(sim):
    result = complete(sim.url, request("Tell me a long story.", max_tokens=3))
    assert result.finish_reason == "length" and result.answer["stop_reason"] == "max_tokens"


def test_a_429_carries_its_limits_from_anthropics_headers_and_the_wait_it_asks(sim_factory):
    server = sim_factory(rpm=60)
    complete(server.url, request("first"))
    error = failure(server.url, request("second"))
    assert (error.error_type, error.status, error.retryable) == ("rate_limited", 429, True)
    assert error.rate is not None and error.rate.request_limit == 60 and error.rate.wait_s == 1.0
    assert error.rate.requests_reset_s is not None and 0 <= error.rate.requests_reset_s <= 1.1
    assert "simulated request rate limit exceeded" in error.message


def test_rfc_3339_resets_are_read_as_seconds_from_now():
    now = 1_800_000_000.0
    at = datetime.fromtimestamp(now + 12.5, tz=UTC).isoformat().replace("+00:00", "Z")
    info = rate_of({"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "0",
                    "anthropic-ratelimit-requests-reset": at, "anthropic-ratelimit-tokens-limit": "80000",
                    "anthropic-ratelimit-tokens-reset": "soon", "retry-after": "7"}, now=now)  # fmt: skip
    assert (info.request_limit, info.requests_remaining, info.requests_reset_s) == (50, 0, pytest.approx(12.5))
    assert (info.token_limit, info.tokens_reset_s, info.wait_s) == (80000, None, 7.0)


def test_overloaded_is_a_529_retried_as_capacity_short_and_an_error_event_fails_the_attempt(sim):
    error = failure(sim.url, request("[sim:fault=503] busy"))
    assert (error.status, error.error_type, error.retryable, error.busy) == (529, "server_error", True, True)
    assert "overloaded" in error.message
    cut = failure(sim.url, request("[sim:fault=stream_error] one two three four"), stream=True)
    assert (cut.error_type, cut.retryable, cut.busy) == ("server_error", True, True)
    assert cut.message.startswith("error in the stream")
    bad = failure(sim.url, request("[sim:fault=400] no"))
    assert (bad.status, bad.error_type, bad.retryable) == (400, "bad_request", False)


def run_table(tmp_path, url, name, *extra):
    texts = [f"question {i}" for i in range(30)]
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[t] for t in texts])
    output = tmp_path / name
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", url, *extra)
    assert result.exit_code == 0, result.stderr
    return texts, read_output(output)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_run_gives_the_same_output_table_as_any_provider(sim, tmp_path, stream):
    flags = ("--stream",) if stream else ()
    texts, rows = run_table(tmp_path, sim.url, "anthropic.parquet", "--provider", "anthropic", *flags)
    _, openai_rows = run_table(tmp_path, sim.url, "openai.parquet", *flags)
    assert list(rows[0]) == list(openai_rows[0])  # the same columns, in the same order
    for text, row in zip(texts, rows, strict=True):
        content, _, prompt, completion = expected(request(text))
        assert (row["status"], row["response"], row["finish_reason"]) == ("ok", content, "stop")
        assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)
        assert row["request_id"].startswith("msg_")
    again = cli("run", "-i", tmp_path / "in.csv", "-o", tmp_path / "anthropic.parquet", "-m", "sim-chat",
                "--base-url", sim.url, "--provider", "anthropic", *flags)  # fmt: skip
    assert again.exit_code == 0 and "nothing to send" in again.stderr
    def answered(table):
        return [{k: v for k, v in row.items() if k != "paid"} for row in table]

    reread = read_output(tmp_path / "anthropic.parquet")  # read back from the journal: the same
    assert answered(reread) == answered(rows) and {r["paid"] for r in reread} == {"earlier_run"}


def test_a_refused_key_names_anthropics_variable(sim_factory, tmp_path, monkeypatch):
    server = sim_factory(api_key="sk-ant-right-key-0123456789")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-wrong-key-0123456789")
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hello"]])
    result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "sim-chat", "--base-url", server.url,
                 "--provider", "anthropic")  # fmt: skip
    assert result.exit_code == 2
    assert "refused the API key" in result.stderr and "ANTHROPIC_API_KEY" in result.stderr
    assert "sk-ant-wrong" not in result.stderr
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-right-key-0123456789")
    result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "sim-chat", "--base-url", server.url,
                 "--provider", "anthropic")  # fmt: skip
    assert result.exit_code == 0, result.stderr


@pytest.mark.slow
def test_killed_mid_run_and_resumed_pays_only_what_was_in_flight(sim_factory, tmp_path):
    server = sim_factory(latency_ms=20, jitter_ms=40, seed=3)
    texts = [f"durable question {i}" for i in range(200)]
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[t] for t in texts])
    output = tmp_path / "out.parquet"
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARIABLES}

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "batchchat", "run", "-i", str(source), "-o", str(output), "-m", "sim-chat",
             "--base-url", server.url, "--provider", "anthropic", "--stream", "--concurrency", "8"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip

    process = start()
    deadline = time.monotonic() + 60
    while server.stats().get("answered", 0) < 80:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    final = start()
    assert final.wait(timeout=120) == 0, final.communicate()[1]
    rows = read_output(output)
    assert [r["response"] for r in rows] == [expected(request(t))[0] for t in texts]
    assert server.stats()["answered_twice"] <= 8  # at most what was in flight at the kill


def test_the_throttle_follows_a_limit_stated_in_anthropics_headers(sim_factory, tmp_path):
    """The same adaptive rate as for any provider: the limit its headers state, and a fall in it."""
    server = sim_factory(rpm=60_000, rpm_later=6000, rpm_change_s=0.1, latency_ms=10)
    texts = [f"question {i}" for i in range(400)]
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[t] for t in texts])
    result = cli("run", "-i", source, "-o", tmp_path / "out.parquet", "-m", "sim-chat", "--base-url", server.url,
                 "--provider", "anthropic", "--concurrency", "16")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "the server's headers state 6,000 requests/min, 60,000 before" in result.stderr
    assert server.stats().get("rate_limited", 0) <= 16  # a burst at the change at most, not a storm
    assert {r["status"] for r in read_output(tmp_path / "out.parquet")} == {"ok"}


def test_a_dry_run_shows_the_request_as_anthropic_gets_it_priced_below_the_long_prompt_tier(tmp_path):
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hello"]])
    result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "claude-sonnet-4-5", "--provider", "anthropic",
                 "--system", "be brief", "--dry-run")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert ('first request: {"model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": [{"role": "user", '
            '"content": "hello"}], "system": "be brief"}') in result.stdout  # fmt: skip
    # the catalogue's price for prompts under 200,000 tokens, not the tier a million-token prompt pays
    assert "price of claude-sonnet-4-5: $3.00 input, $15.00 output per million tokens" in result.stdout
    assert "ANTHROPIC_API_KEY is not set" in result.stdout
    # what is sent bounds the answer: Anthropic's max_tokens, always there
    assert "completion: max_tokens per answer):" in result.stdout and " 4,096 " in result.stdout


def test_the_summary_counts_overloaded_answers_as_529s(sim_factory, tmp_path):
    server = sim_factory(share_503=0.2, latency_ms=5, seed=2)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"question {i}"] for i in range(60)])
    result = cli("run", "-i", source, "-o", tmp_path / "out.parquet", "-m", "sim-chat", "--base-url", server.url,
                 "--provider", "anthropic", "--max-attempts", "10")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    overloaded = server.stats()["status:529"]
    assert overloaded > 0 and "status:503" not in server.stats()
    assert f"{overloaded:,} answered 529, " in result.stderr


def events(*pairs):
    import json as _json

    from batchchat.core.sse import Event

    return [Event(_json.dumps({"type": kind, **data}), kind) for kind, data in pairs]


def assembled(*pairs):
    stream = ANTHROPIC.stream(None)
    for event in events(*pairs):
        stream.add(event, 0.01)
    return stream.result(0.02, None)


END = (("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}), ("message_stop", {}))
START = ("message_start", {"message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                                       "content": [], "usage": {"input_tokens": 5, "output_tokens": 1}}})  # fmt: skip


def test_a_stream_with_odd_values_is_kept_and_read_never_a_crash():
    """A paid stream whose fields are not what the format promises is assembled all the same:
    its pieces kept as they came, and read by the usual rules."""
    odd = assembled(START, ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": 5}}),
                    ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "x"}}), *END)  # fmt: skip
    assert odd.answer["content"][0]["text"] == [5, "x"] and odd.content == "5x" and odd.problem is None
    thinking = assembled(START, ("content_block_start", {"index": 0, "content_block": {"type": "thinking",
                                                                                        "thinking": ["a"]}}),
                         ("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "b"}}),
                         ("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": "SIG"}}),
                         ("content_block_start", {"index": 1, "content_block": {"type": "tool_use", "id": "t",
                                                                                 "name": "f", "input": {}}}),
                         ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": 7}}),
                         ("content_block_delta", {"index": 1, "delta": {"type": "citations_delta", "citation": {"a": 1}}}),
                         *END)  # fmt: skip
    first, second = thinking.answer["content"]
    assert first == {"type": "thinking", "thinking": [["a"], "b"], "signature": "SIG"}  # the signature kept
    assert second["input_text"] == [7] and second["deltas"] == [{"type": "citations_delta", "citation": {"a": 1}}]
    assert thinking.finish_reason == "stop" and thinking.content is None and thinking.problem is None
    assert read_answer(thinking.answer) == read_answer(thinking.answer)  # read back the same, from the journal
    tool = assembled(START, ("content_block_start", {"index": 0, "content_block": {"type": "tool_use", "id": "t",
                                                                                    "name": "f", "input": {}}}),
                     ("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"a":'}}),
                     ("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": " 1}"}}),
                     *END)  # fmt: skip
    assert tool.answer["content"][0]["input"] == {"a": 1}


def test_a_known_providers_url_takes_its_wire_and_key_and_no_other_providers_key_goes_there(monkeypatch):
    from batchchat.job.jobfile import load_job

    monkeypatch.setenv("TOGETHER_API_KEY", "tgp-not-for-anthropic-0123456789")
    job = load_job(model="m", base_url="https://api.anthropic.com/v1", check_key=False)
    assert (job.endpoint.provider, job.endpoint.api_key_env, job.endpoint.dialect) == (
        "anthropic", "ANTHROPIC_API_KEY", "anthropic")  # fmt: skip
    with pytest.raises(JobError, match="is anthropic's API, and provider= is openai: openai's key"):
        load_job(model="m", provider="openai", base_url="https://api.anthropic.com/v1", check_key=False)


@pytest.mark.parametrize(("settings", "said"), [
    ({"params": {"seed": 1}}, "request option 'seed' (params=) cannot go to anthropic"),
    ({"variants": [{"name": "v", "presence_penalty": 1}]}, "request option 'presence_penalty' (variants=)"),
    ({"params": {"system": "x"}}, "the system prompt is a setting of its own"),
    ({"json_schema": {"type": "object", "properties": {"a": {"type": "string"}}}}, "json_schema=: anthropic cannot"),
])  # fmt: skip
def test_options_the_messages_api_refuses_are_refused_before_anything_is_sent(settings, said):
    from batchchat.job.jobfile import load_job

    with pytest.raises(JobError, match=re.escape(said)):
        load_job(model="m", provider="anthropic", check_key=False, **settings)


def test_the_same_server_in_two_formats_shares_no_answers(sim, tmp_path):
    """The simulator speaks both: an answer in one format is not reused for a job in the other."""
    _, first = run_table(tmp_path, sim.url, "one.parquet")
    sent = sim.stats()["received"]
    source = tmp_path / "in.csv"
    result = cli("run", "-i", source, "-o", tmp_path / "one.parquet", "-m", "sim-chat", "--base-url", sim.url,
                 "--provider", "anthropic")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert sim.stats()["received"] == sent + len(first)  # every row asked again, in Anthropic's format
    assert all(row["request_id"].startswith("msg_") for row in read_output(tmp_path / "one.parquet"))


def test_rfc_3339_resets_in_any_case_and_without_an_offset_are_read_as_utc():
    now = 1_800_000_000.0
    at = datetime.fromtimestamp(now + 3, tz=UTC).strftime("%Y-%m-%dt%H:%M:%S.%fz")
    naive = datetime.fromtimestamp(now + 4, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    info = rate_of({"anthropic-ratelimit-requests-reset": at, "anthropic-ratelimit-tokens-reset": naive,
                    "x-should-retry": "false"}, now=now)  # fmt: skip
    assert info.requests_reset_s == pytest.approx(3.0) and info.tokens_reset_s == pytest.approx(4.0)
    error = ANTHROPIC.error(529, b'{"type": "error", "error": {"type": "overloaded_error", "message": "x"}}',
                            "application/json", info)  # fmt: skip
    assert error.busy and not error.retryable  # the server's explicit word wins


def test_a_row_option_the_messages_api_refuses_is_refused_naming_its_cell(sim, tmp_path):
    source = write_csv(tmp_path / "in.csv", ["prompt", "seed"], [["hi", "1"], ["there", "2"]])
    output = tmp_path / "out.csv"
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--provider", "anthropic",
                 "--option-column", "seed")  # fmt: skip
    assert result.exit_code == 2
    assert "row 1, column 'seed': request option 'seed' cannot go to anthropic" in result.stderr, result.stderr
    assert sim.stats().get("received", 0) == 0 and not output.exists()  # nothing sent, nothing written


def test_an_answer_in_another_formats_shape_is_read_once_not_asked_again(tmp_path):
    """A proxy in front of the Messages API that answers as chat completions: each answer is read
    by the format it is in, as the journal reads it back, so the row, its tokens and the summary
    agree and nothing is asked twice."""
    from aiohttp import web

    from tests.hostile_server import HostileServer, completion

    async def as_completions(request: web.Request) -> web.Response:
        return web.json_response(completion("Paris"))

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["capital of France?"], ["and of Italy?"]])
    with HostileServer(as_completions) as server:
        result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "claude-x", "--base-url", server.url,
                     "--provider", "anthropic")  # fmt: skip
        assert result.exit_code == 0, result.stderr
        assert len(server.requests) == 2  # one each: a paid answer is never asked again for its shape
    rows = read_output(tmp_path / "out.csv")
    assert [(r["response"], r["total_tokens"], r["status"]) for r in rows] == [("Paris", "5", "ok")] * 2
    assert "tokens this run: 6 prompt + 4 completion = 10" in result.stderr


def test_a_chat_completion_that_says_type_message_is_read_as_a_chat_completion():
    """An OpenAI-compatible server that adds ``"type": "message"`` beside ``choices`` is not
    answering in Anthropic's format."""
    from tests.hostile_server import completion

    reading = read_answer(completion("Paris", type="message"))
    assert (reading.content, reading.usage.total_tokens, reading.problem) == ("Paris", 5, None)
    message = {"type": "message", "content": [{"type": "text", "text": "Rome"}], "stop_reason": "end_turn",
               "usage": {"input_tokens": 3, "output_tokens": 1}}  # fmt: skip
    assert read_answer(message).content == "Rome"
