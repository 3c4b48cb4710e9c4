"""The HTTP client against the simulator over loopback: answers, and every failure's error type."""

import asyncio
import socket

import pytest

from batchchat.client import ChatClient
from batchchat.core.errors import RequestError
from batchchat.core.keys import request_key
from batchchat.core.ratehints import RateInfo
from batchchat.core.records import ChatRequest
from batchchat.simulator import synthetic_reply


def request(text: str, **params) -> ChatRequest:
    messages = ({"role": "user", "content": text},)
    pairs = tuple(sorted(params.items()))
    return ChatRequest(
        row=0, key=request_key("sim-chat", messages, pairs), model="sim-chat", messages=messages, params=pairs
    )


def complete(url: str, req: ChatRequest, *, key: str | None = None, timeout: float = 30):
    async def go():
        async with ChatClient(url, key, concurrency=4, timeout_s=timeout) as client:
            return await client.complete(req)

    return asyncio.run(go())


def failure(url: str, req: ChatRequest, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as info:
        complete(url, req, **kwargs)
    return info.value


def test_an_answer_carries_content_usage_finish_reason_and_id(sim):
    req = request("What are some fun things to do in New York?", max_tokens=200, temperature=0.5)
    result = complete(sim.url, req)
    content, finish, prompt_tokens, completion_tokens = synthetic_reply(req.body())
    assert result.content == content
    assert result.finish_reason == finish
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (prompt_tokens, completion_tokens)
    assert result.usage.total_tokens == prompt_tokens + completion_tokens
    assert result.request_id.startswith("sim-") and result.model == "sim-chat"
    assert result.latency_s > 0 and result.ttft_s is None
    assert sim.requests[-1]["body"] == req.body()


@pytest.mark.parametrize(
    ("fault", "error_type", "retryable", "status"),
    [
        ("500", "server_error", True, 500),
        ("503", "server_error", True, 503),
        ("504", "server_error", True, 504),
        ("429", "rate_limited", True, 429),
        ("html502", "server_error", True, 502),
        ("malformed", "bad_response", True, 200),
        ("truncate", "bad_response", True, None),
        ("drop", "connection", True, None),
        ("400", "bad_request", False, 400),
        ("401", "auth", False, 401),
        ("402", "no_credit", False, 402),
        ("403", "forbidden", False, 403),
        ("404", "not_found", False, 404),
        ("422", "bad_request", False, 422),
        ("insufficient_quota", "no_credit", False, 429),
    ],
)
def test_every_failure_maps_to_a_stable_error_type(sim, fault, error_type, retryable, status):
    error = failure(sim.url, request(f"[sim:fault={fault}] hi"))
    assert (error.error_type, error.retryable, error.status) == (error_type, retryable, status)


def test_an_answer_with_no_choices_is_an_answer_kept_with_its_problem_not_a_failure_to_retry(sim):
    result = complete(sim.url, request("[sim:fault=no_choices] hi"))  # a 200 of JSON: paid for
    assert result.problem is not None and result.problem.startswith("the answer has no choices")
    assert result.answer == {"id": "sim-empty", "object": "chat.completion", "choices": []}  # as received
    assert result.content is None


def test_error_messages_are_the_providers_own_and_html_pages_are_reduced_to_text(sim):
    assert failure(sim.url, request("[sim:fault=400]")).message == "HTTP 400: simulated invalid request"
    html = failure(sim.url, request("[sim:fault=html502]")).message
    assert html.startswith("HTTP 502: 502 Bad Gateway") and "<" not in html


def test_a_429_keeps_the_headers_the_retry_policy_reads(sim):
    error = failure(sim.url, request("[sim:fault=429]"))
    assert error.rate == RateInfo(wait_s=1.0)  # the scripted 429 carries no limit headers
    assert not error.rate.states_limit


def test_a_slow_answer_times_out_as_a_retryable_timeout(sim):
    error = failure(sim.url, request("[sim:delay_ms=3000] slow"), timeout=0.3)
    assert (error.error_type, error.retryable) == ("timeout", True)


def test_nobody_listening_is_a_retryable_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    error = failure(f"http://127.0.0.1:{port}/v1", request("hi"))
    assert (error.error_type, error.retryable) == ("connection", True)


def test_the_key_goes_in_the_authorization_header_only_when_there_is_one(sim):
    complete(sim.url, request("with key"), key="sk-abc")
    complete(sim.url, request("without key"))
    assert [r["authorization"] for r in sim.requests] == ["Bearer sk-abc", None]


def test_x_should_retry_overrides_the_status_default():
    from batchchat.providers.openai import rate_of, status_error

    body = b'{"error": {"message": "try again"}}'
    assert status_error(400, body, "application/json", rate_of({"x-should-retry": "true"})).retryable is True
    assert status_error(503, body, "application/json", rate_of({"x-should-retry": "false"})).retryable is False
    assert status_error(503, body, "application/json", None).retryable is True
