"""Anything the provider was paid for is kept: an answer of any shape (odd types, negative or huge
counts, parts, text that is not valid Unicode) is journaled as received, read by a pure function,
and never asked again; an unreadable one is its row's error, not an internal error.

The properties run the CLI against a loopback server answering arbitrary JSON-shaped completions,
whole or streamed, and check: no internal error, one output row per input row, every 2xx answer
journaled exactly once, and a rerun that sends nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchchat.core import jsonio
from batchchat.core.reading import bounded, needs_bounds, read_completion

from .helpers import cli, read_output, write_csv, write_jsonl
from .hostile_server import HostileServer, completion

# Text as servers send it: anything, lone surrogates (half an emoji) and TeX's dollars included.
TEXT = st.lists(st.one_of(st.text(max_size=4), st.sampled_from(["\ud83d", "\ude00", "$", "$$", "\x1b[31m"])),
               max_size=4).map("".join)  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "output_text"]), "text": TEXT})
CONTENT = st.one_of(TEXT, st.none(), st.lists(st.one_of(PART, TEXT, JSON), max_size=3), JSON)
COUNT = st.one_of(st.integers(-5, 2**70), JSON)
USAGE = st.one_of(
    st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"]), COUNT),
    JSON,
)
MESSAGE = st.one_of(st.fixed_dictionaries({"role": st.just("assistant"), "content": CONTENT}), JSON)
CHOICE = st.one_of(
    st.fixed_dictionaries({"index": st.just(0), "message": MESSAGE, "finish_reason": JSON}),
    st.fixed_dictionaries({"message": MESSAGE}, optional={"index": JSON, "finish_reason": JSON, "logprobs": JSON}),
    JSON,
)
OPTIONAL = {"id": JSON, "object": st.one_of(st.just("chat.completion"), JSON), "model": JSON,
            "choices": st.one_of(st.lists(CHOICE, min_size=1, max_size=2), JSON), "usage": USAGE,
            "system_fingerprint": JSON, "warnings": JSON}  # fmt: skip
COMPLETION = st.fixed_dictionaries({}, optional=OPTIONAL)
# A stream: the pieces of text as chunks' delta.content, then a finish reason (any JSON but null
# and "", which would leave the stream unfinished), usage, [DONE].
STREAM = st.fixed_dictionaries(
    {"pieces": st.lists(CONTENT, max_size=4), "finish": JSON.filter(lambda v: v is not None and v != "")},
    optional={"id": JSON, "model": JSON, "usage": USAGE},
)
# BATCHCHAT_EXAMPLES=1000 for a longer search than CI's.
PROPERTY = settings(max_examples=int(os.environ.get("BATCHCHAT_EXAMPLES", "30")), deadline=None,
                    suppress_health_check=list(HealthCheck))  # fmt: skip


class Answers:
    """A loopback server whose answer to ``row N`` is the N-th of ``bodies`` (a completion, or a
    stream's parts); it counts the requests it answered."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.stream = False
        self.sent = 0
        self.server = HostileServer(self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        row = int(body["messages"][-1]["content"].split()[-1])
        self.sent += 1
        spec = self.bodies[row]
        if not self.stream:
            return web.Response(text=json.dumps(spec), content_type="application/json")
        return await stream(request, spec)


async def stream(request: web.Request, spec: dict[str, Any]) -> web.StreamResponse:
    """``spec`` (``STREAM``'s) as Server-Sent Events, ending with ``[DONE]``."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for chunk in chunks(spec):
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    return response


def chunks(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    extra = {name: spec[name] for name in ("id", "model") if name in spec}
    for piece in spec["pieces"]:
        yield {**extra, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]}
    last: dict[str, Any] = {**extra, "choices": [{"index": 0, "delta": {}, "finish_reason": spec["finish"]}]}
    if "usage" in spec:
        last["usage"] = spec["usage"]
    yield last


@pytest.fixture(scope="module")
def answers() -> Iterator[Answers]:
    server = Answers()
    with server.server:
        yield server


def journal_records(journal: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in journal.read_bytes().split(b"\n") if line]  # not str.splitlines: U+0085 is text


def run_twice(answers: Answers, bodies: list[dict[str, Any]], *flags: str) -> tuple[Path, list[dict[str, Any]]]:
    """Run a job of one row per body, then again; the output and the journal's answer records."""
    answers.bodies = bodies
    folder = Path(tempfile.mkdtemp())
    source = write_csv(folder / "in.csv", ["prompt"], [[f"row {i}"] for i in range(len(bodies))])
    output = folder / "out.parquet"
    args = ("run", "-i", source, "-o", output, "-m", "m", "--base-url", answers.server.url, "--max-attempts", "2",
            *flags)  # fmt: skip
    before = answers.sent
    first = cli(*args)
    assert first.exit_code in (0, 1), first.stderr
    assert "internal error" not in first.stderr
    sent = answers.sent - before
    again = cli(*args)
    assert again.exit_code == first.exit_code, again.stderr
    assert answers.sent - before == sent, "the rerun sent requests again"
    rows = read_output(output)
    assert len(rows) == len(bodies) and all(row["status"] in ("ok", "error") for row in rows)
    records = [r for r in journal_records(Path(f"{output}.journal")) if "answer" in r]
    assert len(records) == sent == len(bodies)  # each request answered once, each answer journaled once
    assert len({r["key"] for r in records}) == len(bodies)
    return output, records


def kept_as(text: str) -> Any:
    """An answer as batchchat keeps it: the same values, but an integer past 64 bits as the
    nearest float, as orjson reads it back (no server sends one, but the answers made here)."""
    value, fast = jsonio.loads_how(text)
    return bounded(value) if needs_bounds(text, fast) else value


@PROPERTY
@given(st.lists(COMPLETION, min_size=1, max_size=4))
def test_any_json_answer_is_journaled_once_read_and_never_asked_again(answers: Answers, bodies: list[Any]) -> None:
    answers.stream = False
    output, records = run_twice(answers, bodies)
    bodies = [kept_as(json.dumps(body)) for body in bodies]
    for row, body in zip(read_output(output), bodies, strict=True):
        reading = read_completion(body)
        assert row["status"] == ("ok" if reading.problem is None else "error")
        assert row["response"] == reading.content and row["finish_reason"] == reading.finish_reason
        assert row["prompt_tokens"] == reading.usage.prompt_tokens
        if reading.problem is not None:
            assert row["error_type"] == "bad_response" and row["error"] == reading.problem
    kept = sorted(json.dumps(r["answer"], sort_keys=True) for r in records)
    assert kept == sorted(json.dumps(body, sort_keys=True) for body in bodies)  # as received


@PROPERTY
@given(st.lists(STREAM, min_size=1, max_size=4))
def test_any_streamed_answer_is_journaled_once_read_and_never_asked_again(answers: Answers,
                                                                         streams: list[Any]) -> None:  # fmt: skip
    answers.stream = True
    output, _ = run_twice(answers, streams, "--stream")
    for row in read_output(output):
        assert row["status"] == "ok", row["error"]  # a stream with a finish reason and [DONE] is an answer
        assert row["finish_reason"] is not None


# --- each case, through the CLI, as a user met it ---


def one_answer(body: Any, status: int = 200) -> HostileServer:
    async def handler(request: web.Request) -> web.Response:
        text = body if isinstance(body, str) else json.dumps(body)
        return web.Response(text=text, status=status, content_type="application/json")

    return HostileServer(handler)


def streamed(spec: dict[str, Any]) -> HostileServer:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await stream(request, spec)

    return HostileServer(handler)


def odd(**changes: Any) -> dict[str, Any]:
    body = completion("an answer")
    choice = body["choices"][0]
    for name, value in changes.items():
        if name in ("finish_reason",):
            choice[name] = value
        elif name == "content":
            choice["message"]["content"] = value
        else:
            body[name] = value
    return body


def run_against(server: HostileServer, tmp_path: Path, *flags: str,
                rows: int = 3) -> tuple[Any, Any, list[dict[str, Any]], int]:  # fmt: skip
    """The CLI run twice against ``server``: both results, the output rows, and the requests the
    rerun sent."""
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"question {i}"] for i in range(rows)])
    output = tmp_path / "out.csv"
    with server:
        args = ["run", "-i", source, "-o", output, "-m", "m", "--base-url", server.url, *flags]
        first = cli(*args)
        sent = len(server.requests)
        again = cli(*args)
        resent = len(server.requests) - sent
    return first, again, read_output(output), resent


@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
@pytest.mark.parametrize(
    ("finish", "shown"), [(7, "7"), ({"type": "stop", "n": 1}, '{"n": 1, "type": "stop"}'), (["stop"], '["stop"]')]
)
def test_a_finish_reason_that_is_not_text_is_kept_as_its_json_text(tmp_path: Path, stream: bool, finish: Any,
                                                                   shown: str) -> None:  # fmt: skip
    server = (streamed({"pieces": ["an ", "answer"], "finish": finish, "usage": {"prompt_tokens": 3,
                                                                              "completion_tokens": 2}})
              if stream else one_answer(odd(finish_reason=finish)))  # fmt: skip
    first, again, rows, resent = run_against(server, tmp_path, *(["--stream"] if stream else []))
    assert first.exit_code == 0, first.stderr
    assert [(r["status"], r["response"], r["finish_reason"]) for r in rows] == [("ok", "an answer", shown)] * 3
    assert "finish reasons that are not text" in first.stderr
    assert again.exit_code == 0 and resent == 0


@pytest.mark.parametrize("usage", [{"prompt_tokens": -1, "completion_tokens": 2}, {"prompt_tokens": 2**64,
                                                                                     "completion_tokens": 2},
                                   {"prompt_tokens": "3", "completion_tokens": 2}, {"prompt_tokens": True,
                                                                                    "completion_tokens": 2}])  # fmt: skip
def test_a_usage_count_that_is_not_a_count_is_left_empty_with_a_note_and_never_paid_again(tmp_path: Path,
                                                                                         usage: Any) -> None:  # fmt: skip
    first, again, rows, resent = run_against(one_answer(odd(usage=usage)), tmp_path)
    assert first.exit_code == 0, first.stderr
    assert all(r["status"] == "ok" and r["prompt_tokens"] == "" and r["completion_tokens"] == "2" for r in rows)
    assert "3 with usage counts that are not counts (negative, past a billion, not whole; left empty)" in first.stderr
    assert again.exit_code == 0 and resent == 0  # before: each rerun paid again, without a word


def test_content_as_a_list_of_parts_is_joined_not_retried(tmp_path: Path) -> None:
    parts = [{"type": "text", "text": "Paris is "}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "the capital."}]  # fmt: skip
    first, again, rows, resent = run_against(one_answer(odd(content=parts)), tmp_path)
    assert first.exit_code == 0, first.stderr
    assert [(r["status"], r["response"], r["attempts"]) for r in rows] == [("ok", "Paris is the capital.", "1")] * 3
    assert again.exit_code == 0 and resent == 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "streamed"])
def test_text_cut_inside_a_utf16_pair_is_kept_and_read_as_replacement_characters(
    tmp_path: Path, stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", "a-real-looking-secret-key-123")  # the key is looked for in the text too
    # half an emoji at the end, and an emoji split across two chunks (which joins whole again)
    server = (streamed({"pieces": ["smile \ud83d", "\ude00 and half \ud83d"], "finish": "length",
                        "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
              if stream else one_answer(odd(content="smile \U0001f600 and half \ud83d", finish_reason="length")))  # fmt: skip
    first, again, rows, resent = run_against(server, tmp_path, *(["--stream"] if stream else []))
    assert first.exit_code == 0, first.stderr
    assert [r["response"] for r in rows] == ["smile \U0001f600 and half \ufffd"] * 3
    assert "text with invalid Unicode" in first.stderr
    assert again.exit_code == 0 and resent == 0


@pytest.mark.parametrize("body", [{"choices": []}, {"choices": [{"message": "not an object"}]},
                                  {"object": "text_completion", "choices": [{"text": "hi"}]}, {}],
                         ids=["no-choices", "message-not-object", "text-completion", "empty"])  # fmt: skip
def test_an_answer_that_cannot_be_read_is_its_rows_error_and_is_not_asked_again(tmp_path: Path,
                                                                               body: dict[str, Any]) -> None:  # fmt: skip
    first, again, rows, resent = run_against(one_answer({**body, "usage": {"prompt_tokens": 5,
                                                                          "completion_tokens": 1}}), tmp_path)  # fmt: skip
    assert first.exit_code == 1, first.stderr
    assert all(r["status"] == "error" and r["error_type"] == "bad_response" and r["attempts"] == "1" for r in rows)
    assert "tokens this run: 15 prompt + 3 completion" in first.stderr  # paid, and counted
    assert again.exit_code == 1 and resent == 0


def test_the_key_is_redacted_from_every_text_of_a_kept_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-the-real-key-0123456789"
    monkeypatch.setenv("TOGETHER_API_KEY", secret)
    body = odd(content=[{"type": "text", "text": f"echo {secret}"}], finish_reason={"why": secret})
    body["extra"] = {"headers": [f"Bearer {secret}"]}
    first, _, rows, _ = run_against(one_answer(body), tmp_path)
    assert first.exit_code == 0, first.stderr
    assert rows[0]["response"] == "echo [redacted]"
    assert secret not in (tmp_path / "out.csv.journal").read_text(encoding="utf-8")
    assert secret not in (tmp_path / "out.csv").read_text(encoding="utf-8")


def test_a_journal_written_by_this_version_is_refused_by_a_reader_of_older_records(tmp_path: Path) -> None:
    """Records that keep the answer as received are not the records an older batchchat reads:
    appending them to an older journal first writes the version line it checks, so it refuses
    rather than read rows without their answers."""
    run_against(one_answer(completion("hi")), tmp_path)
    journal = tmp_path / "out.csv.journal"
    lines = journal.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"journal": "batchchat", "version": 3}
    old = tmp_path / "old.journal"
    old.write_text(json.dumps({"journal": "batchchat", "version": 2}) + "\n", encoding="utf-8")
    from batchchat.core.records import RowOutcome
    from batchchat.store.journal import Journal, Scope

    j = Journal(old, Scope("e"))
    j.add(RowOutcome(0, "k", "ok", 1, "m", answer=completion("hi")))
    j.close()
    versions = [json.loads(line).get("version") for line in old.read_text().splitlines()]
    assert versions == [2, 3, None, None]  # the header again, then the scope and the record
    reread = Journal(old, Scope("e")).get_many(["k"])["k"]
    assert (reread.status, reread.response, reread.prompt_tokens) == ("ok", "hi", 3)


@pytest.mark.parametrize("depth", [600, 5000])
def test_an_answer_nested_past_any_reader_is_kept_and_never_paid_again(tmp_path: Path, depth: int,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("TOGETHER_API_KEY", "a-real-looking-secret-key-123")  # every text is searched for it
    body = json.dumps(odd(extra="@X@")).replace('"@X@"', "[" * depth + '"bottom"' + "]" * depth)
    first, again, rows, resent = run_against(one_answer(body), tmp_path)
    if depth < 1000:  # read, and kept to a depth any reader and writer can take
        assert first.exit_code == 0, first.stderr
        assert [r["response"] for r in rows] == ["an answer"] * 3
        assert "nested deeper than 64 levels: not kept" in (tmp_path / "out.csv.journal").read_text()
    else:  # past what JSON can be read at: paid all the same, the row's error
        assert first.exit_code == 1, first.stderr
        assert all(r["error_type"] == "bad_response" and r["attempts"] == "1" for r in rows)
    assert "internal error" not in first.stderr
    assert again.exit_code == first.exit_code and resent == 0


def test_a_key_split_across_content_parts_is_redacted_from_the_joined_text(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    secret = "sk-the-real-key-0123456789"
    monkeypatch.setenv("TOGETHER_API_KEY", secret)
    parts = [{"type": "text", "text": f"echo {secret[:10]}"}, {"type": "text", "text": f"{secret[10:]} end"}]
    first, _, rows, resent = run_against(one_answer(odd(content=parts)), tmp_path, "--labels", "yes,no",
                                         "--invalid-retries", "0")  # fmt: skip
    assert [r["response"] for r in rows] == ["echo [redacted] end"] * 3
    assert all(secret not in r["error"] for r in rows)  # the invalid label's message quotes the answer
    for written in (tmp_path / "out.csv.journal", tmp_path / "out.csv"):
        assert secret not in written.read_text(encoding="utf-8")
    assert secret not in first.stderr + first.stdout and resent == 0


def test_a_json_field_too_large_for_its_column_is_left_empty_not_an_internal_error(tmp_path: Path) -> None:
    body = odd(content=json.dumps({"n": 10**30, "x": 1e300, "big": 10**400}))
    schema = json.dumps({"type": "object", "properties": {"n": {"type": "integer"}, "x": {"type": "integer"},
                                                          "big": {"type": "number"}}})  # fmt: skip
    first, again, rows, resent = run_against(one_answer(body), tmp_path, "--json-schema", schema)
    assert first.exit_code == 0, first.stderr
    assert [(r["out_n"], r["out_x"], r["out_big"]) for r in rows] == [("", "", "")] * 3
    assert again.exit_code == 0 and resent == 0


@pytest.mark.parametrize("status", [201, 203, 299])
def test_an_answer_with_any_2xx_status_is_an_answer(tmp_path: Path, status: int) -> None:
    first, again, rows, resent = run_against(one_answer(completion("fine"), status=status), tmp_path)
    assert first.exit_code == 0, first.stderr
    assert [(r["status"], r["response"]) for r in rows] == [("ok", "fine")] * 3
    assert again.exit_code == 0 and resent == 0


def test_nan_and_infinity_in_an_answer_read_the_same_when_it_arrives_and_from_the_journal(tmp_path: Path) -> None:
    body = json.dumps(odd(finish_reason="@F@", content="@C@")).replace('"@F@"', "Infinity").replace('"@C@"', "NaN")
    first, again, rows, resent = run_against(one_answer(body), tmp_path, "--labels", "NaN,yes")
    assert first.exit_code == 0, first.stderr  # read as "NaN" when it came: the label NaN
    assert [(r["response"], r["label"], r["finish_reason"]) for r in rows] == [("NaN", "NaN", "Infinity")] * 3
    assert again.exit_code == 0 and resent == 0


def test_a_stream_naming_its_choice_index_as_text_is_an_answer(tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for choice in ({"index": "0", "delta": {"content": "fine"}}, {"index": "0", "delta": {}, "finish_reason": "stop"}):
            await response.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    first, _, rows, resent = run_against(HostileServer(handler), tmp_path, "--stream", "--max-attempts", "2")
    assert first.exit_code == 0, first.stderr
    assert [(r["response"], r["attempts"]) for r in rows] == [("fine", "1")] * 3 and resent == 0


def test_chat_says_an_answer_with_nothing_to_read_is_one(tmp_path: Path) -> None:
    with one_answer({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 0}}) as server:
        result = cli("chat", "hi", "-m", "m", "--base-url", server.url, "--save", tmp_path / "talk.jsonl")
        assert result.exit_code == 1
        assert "bad_response: the answer has no choices" in result.stderr
        assert len(server.requests) == 1  # paid once: not asked again
    assert not (tmp_path / "talk.jsonl").exists() or '"assistant"' not in (tmp_path / "talk.jsonl").read_text()


@pytest.mark.parametrize("where", ["json-error", "html-page"])
def test_a_key_the_cut_of_a_long_error_goes_through_is_redacted(tmp_path: Path, where: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    secret = "sk-the-real-key-0123456789-abcdefgh"
    monkeypatch.setenv("TOGETHER_API_KEY", secret)
    if where == "json-error":  # messages are cut at 500 characters
        body, kind = json.dumps({"error": {"message": "x" * 490 + secret}}), "application/json"
    else:  # pages at 200
        body, kind = "<html><body>" + "y" * 190 + secret + "</body></html>", "text/html"

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=body, status=400, content_type=kind)

    first, _, rows, _ = run_against(HostileServer(handler), tmp_path)
    assert first.exit_code == 1, first.stderr
    written = (tmp_path / "out.csv").read_text() + (tmp_path / "out.csv.journal").read_text() + first.stderr
    assert "[redacted]..." in rows[0]["error"]
    assert secret[:6] not in written  # not even the start of it, where the cut fell


def test_an_answer_read_by_the_standard_library_reads_the_same_from_the_journal(tmp_path: Path) -> None:
    # NaN sends the body to the standard library, which reads 2**70 whole; orjson reads it back
    # from the journal as a float: the answer is kept as orjson will read it, and checked so
    big = "1.1805916207174113e+21"
    body = '{"choices": [{"message": {"content": 1180591620717411303424}, "finish_reason": "stop"}], "x": NaN}'
    first, again, rows, resent = run_against(one_answer(body), tmp_path, "--labels", f"{big},no",
                                             "--invalid-retries", "0")  # fmt: skip
    assert first.exit_code == 0, first.stderr
    assert [(r["status"], r["response"], r["label"]) for r in rows] == [("ok", big, big)] * 3
    assert again.exit_code == 0 and resent == 0


def test_a_utf16_answer_holding_nan_is_kept_as_it_reads(tmp_path: Path) -> None:
    text = '{"choices": [{"message": {"content": NaN}, "finish_reason": "stop"}]}'

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=text.encode("utf-16"), content_type="application/json")

    first, _, rows, resent = run_against(HostileServer(handler), tmp_path, "--labels", "NaN,yes")
    assert first.exit_code == 0, first.stderr
    assert [(r["status"], r["label"]) for r in rows] == [("ok", "NaN")] * 3 and resent == 0


def stream_of(*chunks: Any) -> HostileServer:
    """A server streaming these chunks (text is sent as it is), then [DONE]."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(f"data: {chunk if isinstance(chunk, str) else json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    return HostileServer(handler)


USED = {"prompt_tokens": 3, "completion_tokens": 2}


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [([{"choices": [{"index": 1, "delta": {"content": "one"}}]}, {"choices": [{"index": 1, "delta": {},
                                                                              "finish_reason": "stop"}]}],
      ("ok", "one")),
     ([{"choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}]}], ("ok", "whole")),
     ([{"choices": [{"delta": {"content": "deep"}}]}, '{"x": ' + "[" * 5000 + "]" * 5000 + "}",
       {"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": USED}], ("ok", "deep")),
     ([{"object": "text_completion", "choices": [{"text": "old", "finish_reason": "stop"}], "usage": USED}],
      ("error", "")),
     ],
    ids=["choice-index-1", "message-not-delta", "a-chunk-too-deep", "completions-style"],
)  # fmt: skip
def test_streams_of_other_shapes_are_answers_and_never_asked_again(tmp_path: Path, chunks: list[Any],
                                                                   expected: tuple[str, str]) -> None:  # fmt: skip
    first, again, rows, resent = run_against(stream_of(*chunks), tmp_path, "--stream", "--max-attempts", "2")
    assert [(r["status"], r["response"], r["attempts"]) for r in rows] == [(*expected, "1")] * 3, first.stderr
    assert again.exit_code == first.exit_code and resent == 0
    if expected[0] == "error":  # a completions-style answer is no chat answer, streamed or not
        assert rows[0]["error_type"] == "bad_response" and "text_completion" in rows[0]["error"]


def test_a_row_whose_answers_did_not_all_say_what_they_used_has_no_token_count(tmp_path: Path) -> None:
    calls = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(1)
        first = len(calls) % 2 == 1  # each row's first answer is no label and says its usage; the re-ask does not
        body = completion("maybe" if first else "yes")
        if not first:
            body["usage"] = {"prompt_tokens": -1, "completion_tokens": 2}
        return web.Response(text=json.dumps(body), content_type="application/json")

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["q"]])
    with HostileServer(handler) as server:
        result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "m", "--base-url", server.url,
                     "--labels", "yes,no", "--price", "m=1,1")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    [row] = read_output(tmp_path / "out.csv")
    assert (row["label"], row["prompt_tokens"], row["completion_tokens"], row["cost"]) == ("yes", "", "4", "")


def test_a_cap_reached_by_answers_that_said_nothing_of_their_usage_says_so(tmp_path: Path) -> None:
    body = odd(usage={"prompt_tokens": -5})  # not a count: what it cost is known only by its bound
    first, _, _, _ = run_against(one_answer(body), tmp_path, "--max-cost", "0.1", "--price", "m=1000,1000",
                                    "--max-tokens", "5", "--concurrency", "1", rows=6)  # fmt: skip
    assert first.exit_code == 1, first.stderr
    assert "stopped at the cost cap: spent $0.0" in first.stderr and "that reported no usage" in first.stderr


# --- invalid Unicode in the input ---


def test_a_lone_surrogate_in_a_jsonl_cell_is_refused_naming_the_line_and_column(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "fine"}\n{"prompt": "half \\ud83d emoji"}\n', encoding="utf-8")
    result = cli("run", "-i", source, "-m", "m", "--provider", "sim")
    assert result.exit_code == 2
    assert f"{source}, line 2, column 'prompt': text that is not valid Unicode" in result.stderr
    assert "internal error" not in result.stderr and not (tmp_path / "in.out.parquet").exists()
    whole = write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "a whole emoji \U0001f600"}])  # a pair is fine
    assert cli("run", "-i", whole, "-m", "m", "--provider", "sim").exit_code == 0


def test_text_that_is_not_utf8_in_a_parquet_cell_is_refused_naming_the_row_and_column(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    offsets = pa.py_buffer(b"".join(n.to_bytes(4, "little") for n in (0, 2, 8)))
    text = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"okbad\xed\xa0\xbd")])
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": text}), source)
    result = cli("run", "-i", source, "-m", "m", "--provider", "sim")
    assert result.exit_code == 2
    assert f"{source}, row 2, column 'prompt': text that is not valid UTF-8" in result.stderr


@pytest.mark.parametrize(
    ("column", "cell", "flags"),
    [("history", '[{"role": "user", "content": "hi \\ud83d"}]', ("--messages-column", "history")),
     ("turns", '["hi \\ud83d"]', ("--turns-column", "turns")),
     ("opts", '{"stop": "\\ud83d"}', ("--options-column", "opts"))],
    ids=["messages", "turns", "options"],
)  # fmt: skip
def test_a_lone_surrogate_in_the_json_of_a_csv_cell_is_refused_naming_its_cell(tmp_path: Path, column: str, cell: str,
                                                                               flags: tuple[str, ...]) -> None:  # fmt: skip
    source = write_csv(tmp_path / "in.csv", ["prompt", column], [["fine", "[]" if column != "opts" else "{}"],
                                                                 ["hi", cell]])  # fmt: skip
    result = cli("run", "-i", source, "-m", "m", "--provider", "sim", *flags)
    assert result.exit_code == 2, result.stderr
    assert f"{source}, row 2, column '{column}'" in result.stderr and "not valid Unicode" in result.stderr
    assert "internal error" not in result.stderr


@pytest.mark.parametrize("flag", [("--system", "bad \udcff"), ("--template", "{prompt} \udcff"),
                                  ("--param", 'stop="\\ud83d"'), ("--json-schema", '{"properties": {"a\\ud83d": {}}}')],
                         ids=["system", "template", "param", "schema"])  # fmt: skip
def test_a_setting_that_is_not_valid_unicode_is_refused_naming_it(tmp_path: Path, flag: tuple[str, str]) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hi"]])
    result = cli("run", "-i", source, "-m", "m", "--provider", "sim", *flag)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"batchchat: error: {flag[0]} holds text that is not valid Unicode"), result.stderr
