"""The simulator, spoken to over real HTTP on loopback."""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from batchchat.simulator import request_digest, synthetic_reply

from .helpers import cli, hears_ctrl_c, interrupt_child, read_output, write_csv


def post(url: str, body: dict, *, raw: bytes | None = None, key: str | None = None) -> tuple[int, dict, bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def go():
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.post(url + "/chat/completions", data=raw if raw is not None else json.dumps(body)) as response,
        ):
            return response.status, {k.lower(): v for k, v in response.headers.items()}, await response.read()

    return asyncio.run(go())


def get(url: str) -> dict:
    async def go():
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return await response.json()

    return asyncio.run(go())


def body(text: str = "What are some fun things to do in New York?", **extra) -> dict:
    return {"model": "sim-chat", "messages": [{"role": "user", "content": text}], **extra}


def sse_events(payload: bytes) -> list[str]:
    events = []
    for block in payload.decode().split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            events.append(block[len("data: ") :])
    return events


def test_json_answer_is_a_deterministic_function_of_the_request(sim):
    request = body()
    status, headers, raw = post(sim.url, request)
    answer = json.loads(raw)
    content, finish, prompt_tokens, completion_tokens = synthetic_reply(request)
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": content}
    assert answer["choices"][0]["finish_reason"] == finish == "stop"
    assert answer["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                               "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip
    assert "New York" in content and content.startswith(f"[{request_digest(request)[:8]}]")
    assert json.loads(post(sim.url, request)[2])["choices"][0]["message"]["content"] == content
    assert synthetic_reply(body("something else"))[0] != content


def test_max_tokens_cuts_the_answer_with_finish_reason_length(sim):
    answer = json.loads(post(sim.url, body(max_tokens=3))[2])
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 3
    assert len(answer["choices"][0]["message"]["content"].split(" ")) == 3


def test_together_stream_has_usage_on_the_final_chunk_then_done(sim):
    request = body(stream=True)
    status, headers, raw = post(sim.url, request)
    assert status == 200 and headers["content-type"] == "text/event-stream"
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == synthetic_reply(request)[0]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and "usage" in chunks[-1]
    assert all("usage" not in c for c in chunks[:-1])


def test_openai_stream_sends_usage_on_an_extra_chunk_when_asked(sim):
    events = sse_events(post(sim.url, body(stream=True, stream_options={"include_usage": True}))[2])
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and "usage" not in chunks[-2]


def test_over_the_request_limit_answers_429_with_rate_limit_headers(sim_factory):
    server = sim_factory(rpm=60)
    first = post(server.url, body("one"))
    second = post(server.url, body("two"))
    assert first[0] == 200 and first[1]["x-ratelimit-limit"] == "60"
    status, headers, raw = second
    assert status == 429
    assert headers["retry-after"] == "1"
    assert 0 < float(headers["x-ratelimit-reset"]) <= 1.0
    assert headers["x-ratelimit-remaining"] == "0"
    assert json.loads(raw)["error"]["code"] == "dynamic_request_limited"
    assert server.stats()["rate_limited"] == 1


def test_over_the_token_limit_answers_429_with_token_headers(sim_factory):
    server = sim_factory(tpm=600)  # 10 tokens a second: one answer empties it
    assert post(server.url, body("a" * 100))[0] == 200
    status, headers, _ = post(server.url, body("b"))
    assert status == 429 and headers["x-tokenlimit-limit"] == "600"


def test_directives_script_faults_for_the_first_arrivals_only(sim):
    request = body("[sim:fault=503,times=2] hello")
    assert [post(sim.url, request)[0] for _ in range(3)] == [503, 503, 200]
    assert sim.stats()["faults"] == 2 and sim.stats()["answered"] == 1


@pytest.mark.parametrize(
    "fault", ["html502", "malformed", "truncate", "no_choices", "400", "404", "insufficient_quota"]
)
def test_each_injected_fault_looks_like_the_real_thing(sim, fault):
    if fault == "truncate":
        with pytest.raises(aiohttp.ClientPayloadError):
            post(sim.url, body(f"[sim:fault={fault}]"))
        return
    status, headers, raw = post(sim.url, body(f"[sim:fault={fault}]"))
    if fault == "html502":
        assert status == 502 and headers["content-type"].startswith("text/html") and b"<h1>502" in raw
    elif fault == "malformed":
        assert status == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)
    elif fault == "no_choices":
        assert status == 200 and json.loads(raw)["choices"] == []
    elif fault == "insufficient_quota":
        assert status == 429 and json.loads(raw)["error"]["code"] == "insufficient_quota"
    else:
        assert status == int(fault) and "message" in json.loads(raw)["error"]


def test_dropped_connections(sim):
    with pytest.raises(aiohttp.ServerDisconnectedError):
        post(sim.url, body("[sim:fault=drop]"))


@pytest.mark.parametrize("fault", ["stream_cut", "stream_malformed", "stream_error"])
def test_stream_faults_never_end_with_done(sim, fault):
    try:
        raw = post(sim.url, body(f"[sim:fault={fault}] tell me more", stream=True))[2]
    except aiohttp.ClientPayloadError:
        return  # the connection broke mid-stream, as intended
    events = sse_events(raw) if fault != "stream_malformed" else raw.decode().split("\n\n")
    assert "[DONE]" not in events
    if fault == "stream_error":
        assert "error" in json.loads(events[-1])


def statuses_of(server, count: int) -> list[int | str]:
    statuses: list[int | str] = []
    for i in range(count):
        try:
            statuses.append(post(server.url, body(f"prompt {i}"))[0])
        except aiohttp.ClientError:
            statuses.append("broken")
    return statuses


def test_random_faults_are_repeatable_and_follow_the_rate(sim_factory):
    server = sim_factory(fault_rate=0.3, seed=7)
    statuses = statuses_of(server, 60)
    assert statuses == statuses_of(sim_factory(fault_rate=0.3, seed=7), 60)
    failed = sum(s != 200 for s in statuses)
    assert failed == server.stats()["faults"]
    assert 5 <= failed <= 35  # 30% of 60, give or take chance


def test_bad_request_bodies_get_400(sim):
    assert post(sim.url, {}, raw=b"{nope")[0] == 400
    assert post(sim.url, {"model": "m", "messages": []})[0] == 400
    assert post(sim.url, {"messages": [{"role": "user", "content": "x"}]})[0] == 400


def test_models_and_stats_endpoints(sim):
    models = get(sim.url + "/models")
    assert models["object"] == "list" and {m["id"] for m in models["data"]} >= {"sim-chat"}
    post(sim.url, body("x"))
    post(sim.url, body("x"))
    stats = get(sim.url.removesuffix("/v1") + "/sim/stats")
    assert stats["received"] == 2 and stats["answered"] == 2 and stats["answered_twice"] == 1


def test_serve_command_prints_its_url_and_answers_until_stopped():
    process = subprocess.Popen(
        [sys.executable, "-m", "batchchat", "serve", "--port", "0", "--latency-ms", "5", "--api-key-env", "SIM_KEY",
         "--labels", "spam, ham"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "SIM_KEY": "k-123"},
        preexec_fn=hears_ctrl_c,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        assert "synthetic answers" in line and "k-123" not in line
        url = line.split(" on ")[1].split(" ")[0]
        status, _, raw = post(url, body(), key="k-123")
        assert status == 200
        assert json.loads(raw)["choices"][0]["message"]["content"].strip(" .!").lower() in ("spam", "ham")
        status, _, raw = post(url, body(), key="wrong")
        assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
        assert post(url, body())[0] == 401
    finally:
        assert interrupt_child(process) == 0


def answer_of(url: str, request: dict) -> str:
    status, _, raw = post(url, request)
    assert status == 200
    return json.loads(raw)["choices"][0]["message"]["content"]


SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative"]},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "ratio": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "spam": {"type": "boolean"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["sentiment", "stars"],
}


def test_a_response_format_gets_json_that_fits_its_schema(sim_factory):
    from batchchat.core.schema import validate

    sim = sim_factory()
    openai_form = {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}}
    answers = [json.loads(answer_of(sim.url, body(f"review {i}", response_format=openai_form))) for i in range(30)]
    assert all(validate(a, SCHEMA) is None for a in answers)
    assert {a["sentiment"] for a in answers} == {"positive", "negative"}  # varied by the request
    together_form = {"type": "json_object", "schema": SCHEMA}
    assert validate(json.loads(answer_of(sim.url, body(response_format=together_form))), SCHEMA) is None
    assert isinstance(json.loads(answer_of(sim.url, body(response_format={"type": "json_object"}))), dict)


def test_given_labels_it_answers_one_in_varied_spelling(sim_factory):
    from batchchat.plan.answers import match_label

    labels = ("positive", "negative", "neutral")
    sim = sim_factory(labels=labels)
    answers = [answer_of(sim.url, body(f"text {i}")) for i in range(40)]
    assert all(match_label(a, labels) in labels for a in answers)
    assert {match_label(a, labels) for a in answers} == set(labels)
    assert len(set(answers)) > 3  # not only the bare labels: "NEGATIVE.", " Neutral!"


def test_the_invalid_rate_spoils_that_share_and_asking_again_can_succeed(sim_factory):
    from batchchat.job.spec import Answers
    from batchchat.plan.answers import AnswerCheck

    check = AnswerCheck(Answers(schema=SCHEMA, json_required=True))
    sim = sim_factory(invalid_rate=0.3, seed=5)
    form = {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}}
    requests = [body(f"review {i}", response_format=form) for i in range(200)]
    bad = [r for r in requests if check(answer_of(sim.url, r)) is not None]
    assert 40 < len(bad) < 80
    assert any(check(answer_of(sim.url, r)) is None for r in bad)  # the second arrival is decided afresh
    label_sim = sim_factory(labels=("yes", "no"), invalid_rate=1.0)
    assert answer_of(label_sim.url, body()) == "I am not sure which fits."


def test_a_reply_directive_answers_exactly_that_text(sim):
    assert answer_of(sim.url, body("Capital? [sim:reply=Paris, of course]")) == "Paris, of course"
    assert answer_of(sim.url, body('JSON [sim:reply={"a": [1, 2]}]')) == '{"a": [1, 2]}'


def test_offline_the_simulator_plays_models_that_differ_and_prices_them_from_the_catalogue(tmp_path: Path) -> None:
    """A scored job on provider sim compares its models as real ones would compare: each gets a
    steady share of the expected answers right (more for a bigger model), and costs money."""
    from batchchat.reports.survey import overview

    questions = [[f"What is {i} + {i}?", str(2 * i)] for i in range(40)]
    source = write_csv(tmp_path / "in.csv", ["question", "answer"], questions)
    big, small = "meta-llama/Llama-3.3-70B-Instruct-Turbo", "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"
    args = ("run", "-i", source, "-o", tmp_path / "out.parquet", "-m", big, "-m", small, "--provider", "sim",
            "--prompt-column", "question", "--expected-column", "answer", "--score", "exact", "--report")  # fmt: skip
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    seen = overview(tmp_path / "out.parquet")
    accuracy = {g.model: g.accuracy for g in seen.groups}
    assert 0.5 < (accuracy[big] or 0) <= 1 and 0.3 < (accuracy[small] or 0) < (accuracy[big] or 0)
    assert seen.disagreements  # rows where one model was right and the other not
    assert all(g.cost and g.cost > 0 for g in seen.groups)  # the catalogue's prices, without a [prices] table
    rows = read_output(tmp_path / "out.parquet")
    right = [r for r in rows if r["score"] == 1.0]
    assert all(r["response"] == questions[i // 2][1] for i, r in enumerate(rows) if r["score"] == 1.0) and right
    again = cli(*args[:4], tmp_path / "again.parquet", *args[5:])
    assert again.exit_code == 0
    assert [r["score"] for r in read_output(tmp_path / "again.parquet")] == [r["score"] for r in rows]  # steady


@pytest.mark.parametrize(("setting", "status"), [("share_429", 429), ("share_503", 503)])
def test_a_share_of_requests_is_refused_whatever_the_rate(sim_factory, setting, status):
    """A provider's 429s and 503s that no rate causes: that share of 200 distinct requests, sent
    one at a time (far under any limit), repeatable by seed."""
    server = sim_factory(**{setting: 0.2}, seed=3)
    statuses = statuses_of(server, 200)
    assert set(statuses) == {200, status}
    assert 25 <= statuses.count(status) <= 55  # 20% of 200, give or take chance
    assert statuses == statuses_of(sim_factory(**{setting: 0.2}, seed=3), 200)
    if status == 429:
        _, headers, _ = next(answer for i in range(200) if (answer := post(server.url, body(f"q{i}")))[0] == 429)
        assert headers["retry-after"] == "1" and "x-ratelimit-limit" not in headers  # no limit said it


def test_a_requests_limit_that_moves_some_seconds_into_a_run(sim_factory):
    server = sim_factory(rpm=60, rpm_later=600, rpm_change_s=0.3)
    assert post(server.url, body("one"))[1]["x-ratelimit-limit"] == "60"
    assert post(server.url, body("two"))[0] == 429  # one a second, before the change
    time.sleep(0.4)
    status, headers, _ = post(server.url, body("three"))
    assert status == 200 and headers["x-ratelimit-limit"] == "600"


def test_a_server_with_n_slots_cuts_the_oldest_stream_when_one_more_arrives(sim_factory):
    server = sim_factory(slots=2, tokens_per_s=200)

    async def go(n: int) -> list[bytes]:
        async with aiohttp.ClientSession() as session:
            async def one(i: int) -> bytes:
                await asyncio.sleep(0.05 * i)  # in order: the first is the oldest
                async with session.post(server.url + "/chat/completions", json=body(f"q{i}", stream=True)) as r:
                    return await r.read()

            return await asyncio.gather(*(one(i) for i in range(n)))

    streams = asyncio.run(go(3))
    done = [b"[DONE]" in payload for payload in streams]
    assert done == [False, True, True]  # the third arrival cut the first, and took its slot
    stats = server.stats()
    assert stats["streams_cut"] == 1 and stats["max_served"] == 2
    streams = asyncio.run(go(2))  # as many as its slots: none cut
    assert all(b"[DONE]" in payload for payload in streams) and server.stats()["streams_cut"] == 1
