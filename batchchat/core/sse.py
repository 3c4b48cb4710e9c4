"""An incremental Server-Sent Events decoder: bytes in, in whatever pieces the network delivers.

It follows the event-stream format (WHATWG HTML, "server-sent events"): lines end in CRLF, LF or
CR; a blank line ends an event; ``data:`` lines (with or without the space after the colon) add
to the event's data, several joined by newlines; lines starting with ``:`` are comments. Lines are
split as bytes and decoded whole, so a multi-byte character cut between two reads is never
mangled, and a CR at the end of one read waits to see whether an LF starts the next.
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import quick_init


@quick_init
@dataclass(frozen=True, slots=True)
class Event:
    data: str
    event: str = "message"


class SSEDecoder:
    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""

    def feed(self, chunk: bytes) -> list[Event]:
        """Events completed by this chunk."""
        self._buffer += chunk
        if b"\r" not in self._buffer:  # the usual stream, LF endings only: split in one pass
            *lines, self._buffer = self._buffer.split(b"\n")
        else:
            lines = []
            while True:
                line, ending = _next_line(self._buffer)
                if ending is None:
                    break
                lines.append(line)
                self._buffer = self._buffer[len(line) + ending :]
        events = (self._line(line.decode("utf-8", "replace")) for line in lines)
        return [event for event in events if event is not None]

    def close(self) -> list[Event]:
        """The end of the stream: a last event whose lines were complete but had no blank line after.

        A last line without its line ending may have been cut off mid-way, so it is dropped.
        """
        events: list[Event] = []
        if self._buffer.endswith(b"\r"):  # that CR ended its line: no LF is coming now
            event = self._line(self._buffer[:-1].decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        self._buffer = b""
        event = self._dispatch()
        if event is not None:
            events.append(event)
        return events

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment, or a keep-alive
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        return None  # "id", "retry" and unknown fields do not concern a chat stream

    def _dispatch(self) -> Event | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return Event("\n".join(data), event or "message")


def _next_line(buffer: bytes) -> tuple[bytes, int | None]:
    """The first complete line in ``buffer`` and the length of its ending, or (b"", None) if none.

    A CR as the very last byte is not yet an ending: an LF may follow in the next read.
    """
    lf = buffer.find(b"\n")
    cr = buffer.find(b"\r", 0, lf if lf != -1 else len(buffer))
    if cr != -1:
        if cr + 1 == len(buffer):
            return b"", None
        return buffer[:cr], 2 if buffer[cr + 1 : cr + 2] == b"\n" else 1
    if lf != -1:
        return buffer[:lf], 1
    return b"", None
