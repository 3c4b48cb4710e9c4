"""The SSE decoder, fed the same bytes in every possible split."""

import json

import pytest

from batchchat.core.sse import Event, SSEDecoder

STREAM = (
    b": keep-alive comment\r\n"
    b"\r\n"
    b'data: {"choices": [{"delta": {"content": "Caf\xc3\xa9 "}}]}\r\n'
    b"\r\n"
    b'data:{"choices": [{"delta": {"content": "\xf0\x9f\x9a\x80"}}]}\n'
    b"\n"
    b"event: ping\n"
    b"data: line one\n"
    b"data: line two\n"
    b"id: 7\n"
    b"retry: 1000\n"
    b"\n"
    b'data: {"error": {"message": "overloaded"}}\r'
    b"\r"
    b"data: [DONE]\n"
    b"\n"
)
EXPECTED = [
    Event('{"choices": [{"delta": {"content": "Café "}}]}'),
    Event('{"choices": [{"delta": {"content": "🚀"}}]}'),
    Event("line one\nline two", "ping"),
    Event('{"error": {"message": "overloaded"}}'),
    Event("[DONE]"),
]


def decode(*pieces: bytes) -> list[Event]:
    decoder = SSEDecoder()
    events = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events + decoder.close()


def test_the_whole_stream_at_once():
    assert decode(STREAM) == EXPECTED
    assert json.loads(EXPECTED[0].data)["choices"][0]["delta"]["content"] == "Café "


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_split_at_every_position(cut):
    assert decode(STREAM[:cut], STREAM[cut:]) == EXPECTED


def test_one_byte_at_a_time():
    assert decode(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == EXPECTED


def test_split_in_three_everywhere_around_the_crlf_and_the_multibyte_characters():
    for a in range(1, 120):
        for b in range(a + 1, 121):
            assert decode(STREAM[:a], STREAM[a:b], STREAM[b:]) == EXPECTED, (a, b)


def test_a_last_event_without_its_blank_line_is_kept_but_a_cut_last_line_is_not():
    assert decode(b"data: [DONE]\n") == [Event("[DONE]")]
    assert decode(b"data: [DONE]\r") == [Event("[DONE]")]
    assert decode(b'data: {"choices": [') == []
    assert decode(b'data: {"a": 1}\n\ndata: {"b"') == [Event('{"a": 1}')]


def test_comments_and_empty_events_yield_nothing():
    assert decode(b": hello\n\n\n\n:another\r\n\r\n") == []
