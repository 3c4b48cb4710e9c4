"""What an answer says: a chat completion as received, read into its text, finish reason, usage
and ids by one pure function that never raises.

Servers are not always well-formed, and every answer they send is billed: a ``finish_reason``
that is a number, usage counts that are negative, content as a list of parts, text cut in the
middle of a UTF-16 pair. So the answer is kept as it came (the journal holds it) and read here,
as often as needed, the same way each time: where a value has an obvious reading it is taken
(parts joined into text, a finish reason that is not text as its JSON text, a lone surrogate as
U+FFFD), and what cannot be a count is left empty with a note. What cannot be read at all (no
choices, a message that is not an object) is the answer's ``problem``: its row becomes a
``bad_response`` error, and it is never asked again by itself (``--retry-errors`` does).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, NamedTuple

from .ratehints import RateInfo
from .records import ChatResult, Usage

# The most tokens one answer can count: past every model's context by far (an int64 column would
# hold more, but a count this large is a server's garbage, and taken as spent it would stop a
# budget or a tokens/min pace for nothing).
MAX_COUNT = 10**9
# Notes: what was odd in an answer and how it was read (the summary counts them by kind).
BAD_COUNT = "usage counts that are not counts (negative, past a billion, not whole; left empty)"
NOT_TEXT_FINISH = "finish reasons that are not text (kept as their JSON text)"
BAD_UNICODE = "text with invalid Unicode (lone surrogates, read as U+FFFD)"
ODD_CONTENT = "content that is not text or text parts (kept as its JSON text)"
SHOWN = 120  # characters of an odd value quoted in a problem
# An answer is kept this deep: a JSON value nested deeper (no completion's fields are) is kept as
# ``CUT``, so that no reader or writer of it runs out of stack.
MAX_DEPTH = 64
CUT = f"(nested deeper than {MAX_DEPTH} levels: not kept)"
NO_USAGE = Usage()


class Reading(NamedTuple):
    """An answer read: what its row shows. ``problem`` says why it is no answer at all. (A named
    tuple, not a frozen dataclass: every answer is read once when it arrives and again whenever
    its record is read back, and this is half the cost to make.)"""

    content: str | None = None
    finish_reason: str | None = None
    usage: Usage = NO_USAGE
    request_id: str | None = None
    model: str | None = None
    problem: str | None = None
    notes: tuple[str, ...] = ()


def needs_bounds(text: bytes | str, fast: bool = True) -> bool:
    """Whether an answer's JSON text may hold what ``bounded`` changes (checked on the text, as
    fast as a scan: almost every answer needs nothing); ``fast``: whether orjson read it (else
    it may hold what orjson would read otherwise)."""
    if not fast:
        return True
    if isinstance(text, str):
        return text.count("[") + text.count("{") > MAX_DEPTH or "NaN" in text or "Infinity" in text
    return text.count(b"[") + text.count(b"{") > MAX_DEPTH or b"NaN" in text or b"Infinity" in text


def bounded(value: Any, depth: int = 0) -> Any:
    """A JSON value as the journal can keep it and read it back the same: nested ``MAX_DEPTH``
    deep at most (deeper is ``CUT``), NaN and the infinities (which JSON has no words for, though
    some servers write them) as their names, ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, and an
    integer past 64 bits as the float orjson reads it as."""
    if type(value) is float and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if type(value) is int and not -(2**63) <= value < 2**64:  # as orjson reads it back: the nearest float
        try:
            return float(value)
        except OverflowError:  # past any float: orjson leaves it to the standard library, which reads it whole
            return value
    if type(value) is dict:
        return CUT if depth >= MAX_DEPTH else {k: bounded(v, depth + 1) for k, v in value.items()}
    if type(value) is list:
        return CUT if depth >= MAX_DEPTH else [bounded(v, depth + 1) for v in value]
    return value


def received(answer: Any, latency_s: float, ttft_s: float | None = None, rate: RateInfo | None = None,
             read: Callable[[Any], Reading] | None = None) -> ChatResult:  # fmt: skip
    """An answer as it came, with what it says (read by ``read``: a chat completion unless its
    dialect says otherwise)."""
    content, finish, usage, request_id, model, problem, notes = (read or read_completion)(answer)
    return ChatResult(content, finish, usage, request_id, model, latency_s, ttft_s, rate, answer, problem, notes)


def read_completion(answer: Any) -> Reading:
    """A chat completion (or a streamed one, as ``StreamAssembly`` keeps it) read; never raises."""
    return guarded(_read, answer)


def guarded(read: Callable[[Any, list[str]], Reading], answer: Any) -> Reading:
    """``read(answer, notes)``, which never raises: an answer no rule foresaw stays kept, and its
    row says it could not be read (every dialect's reader goes through this)."""
    notes: list[str] = []
    try:
        return read(answer, notes)
    except Exception as e:
        return Reading(problem=f"the answer could not be read ({type(e).__name__}: {str(e)[:SHOWN]})",
                       notes=tuple(dict.fromkeys(notes)))  # fmt: skip


def _read(answer: Any, notes: list[str]) -> Reading:
    if type(answer) is not dict:
        return Reading(problem=f"the answer is not a JSON object: {shown(answer)}")
    get = answer.get
    request_id, model = read_id(get("id"), notes), read_id(get("model"), notes)
    usage = read_usage(get("usage"), notes)
    kind = get("object")
    choices = get("choices")
    choice: Any = None
    message: Any = None
    problem = None
    if type(kind) is str and kind != "chat.completion" and kind != "chat.completion.chunk":
        problem = f"a {shown(kind, 40)} instead of a chat completion"
    elif type(choices) is not list or not choices:
        problem = f"the answer has no choices: {shown(answer)}"
    elif type(choice := choices[0]) is not dict:
        problem = f"choices[0] is not an object: {shown(choice)}"
    else:
        message = choice.get("message")
        if message is None:
            message = choice.get("delta")  # a chunk's shape, sent whole
        if type(message) is not dict:
            problem = f"choices[0] has no message: {shown(choice)}"
    if problem is not None:
        return Reading(None, None, usage, request_id, model, problem, tuple(dict.fromkeys(notes)))
    content = message.get("content")
    if type(content) is not str or not content.isascii():
        content = read_content(content, notes)
    finish = choice.get("finish_reason")
    if finish is not None and type(finish) is not str:
        notes.append(NOT_TEXT_FINISH)
        finish = json_text(finish)
    if finish is not None and not finish.isascii():
        finish = clean_text(finish, notes)
    return Reading(content, finish, usage, request_id, model, None, tuple(dict.fromkeys(notes)) if notes else ())


def with_content(answer: dict[str, Any], text: str) -> dict[str, Any]:
    """``answer`` (one ``read_completion`` found content in) with that content replaced by
    ``text``; the rest is shared, not copied."""
    choice = dict(answer["choices"][0])
    place = "message" if isinstance(choice.get("message"), dict) else "delta"
    choice[place] = {**choice[place], "content": text}
    return {**answer, "choices": [choice, *answer["choices"][1:]]}


def read_content(content: Any, notes: list[str]) -> str | None:
    """The text of a message's content: a string as it is; a list of parts (``{"type": "text",
    "text": ...}``, or strings) joined; null stays null."""
    if content is None:
        return None
    if isinstance(content, str):
        return clean_text(content, notes)
    if isinstance(content, list):
        texts = [text for part in content if (text := _part_text(part, notes)) is not None]
        return clean_text("".join(texts), notes)
    if isinstance(content, dict) and isinstance(content.get("text"), str):
        return clean_text(content["text"], notes)
    notes.append(ODD_CONTENT)
    return clean_text(json_text(content), notes)


def _part_text(part: Any, notes: list[str]) -> str | None:
    if isinstance(part, str):
        return part
    if isinstance(part, dict):
        text = part.get("text")
        if isinstance(text, str):
            return text
        if "type" in part:
            return None  # an image or tool part: no text to show
    elif part is None:
        return None
    elif isinstance(part, list):
        return read_content(part, notes)
    notes.append(ODD_CONTENT)
    return json_text(part)


def read_usage(usage: Any, notes: list[str] | None = None) -> Usage:
    """Token counts that are counts (whole, 0 to ``MAX_COUNT``); any other value is unknown."""
    if usage is None:
        return NO_USAGE
    if type(usage) is not dict:
        if notes is not None:
            notes.append(BAD_COUNT)
        return NO_USAGE
    prompt = read_count(usage.get("prompt_tokens"), notes)
    completion = read_count(usage.get("completion_tokens"), notes)
    total = read_count(usage.get("total_tokens"), notes)
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    return Usage(prompt, completion, total)


def read_count(value: Any, notes: list[str] | None) -> int | None:
    if type(value) is int and 0 <= value <= MAX_COUNT:  # the usual case, first
        return value
    if value is None:
        return None
    if type(value) is float and value.is_integer() and 0 <= value <= MAX_COUNT:
        return int(value)
    if notes is not None:
        notes.append(BAD_COUNT)
    return None


def read_id(value: Any, notes: list[str]) -> str | None:
    if type(value) is str:
        return (value if value.isascii() else clean_text(value, notes)) or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def lone_surrogate(value: Any) -> bool:
    """Whether any text in ``value`` (a JSON-like value) holds a lone surrogate: half of a UTF-16
    pair, which no UTF-8 file, request or table can hold."""
    if type(value) is str:
        if value.isascii():
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, list | tuple):
        return any(lone_surrogate(item) for item in value)
    if isinstance(value, dict):
        return any(lone_surrogate(k) or lone_surrogate(v) for k, v in value.items())
    return False


def clean_text(text: str, notes: list[str] | None = None) -> str:
    """``text`` as valid Unicode: a lone surrogate (half of a UTF-16 pair, as a server slicing
    UTF-16 cuts an emoji) becomes U+FFFD, and two halves that meet become their character."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        if notes is not None:
            notes.append(BAD_UNICODE)
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def json_text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def shown(value: Any, limit: int = SHOWN) -> str:
    text = clean_text(json_text(value) if not isinstance(value, str) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
