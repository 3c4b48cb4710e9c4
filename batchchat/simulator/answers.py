"""Synthetic answers: what the simulator says to a request, a deterministic function of its body,
so a test can tell which request an answer belongs to and a rerun gets the same answer. Shared by
the live endpoint and the batches, so a batch answers a request exactly as a live call would.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from ..core.keys import messages_key
from ..core.schema import schema_of
from ..job.spec import SimConfig

STATUS_FAULTS = {
    "400": ("invalid_request_error", "simulated invalid request"),
    "401": ("authentication_error", "simulated invalid API key"),
    "402": ("billing_error", "simulated: credit limit reached"),
    "403": ("invalid_request_error", "simulated: input and max_tokens exceed the context length"),
    "404": ("not_found", "simulated: model not found"),
    "422": ("invalid_request_error", "simulated unprocessable request"),
    "500": ("server_error", "simulated internal server error"),
    "503": ("server_error", "simulated: the service is overloaded"),
    "504": ("server_error", "simulated gateway timeout"),
}
_DIRECTIVE = re.compile(r"\[sim:([^\]]*)\]")
_REPLY = "[sim:reply="
_WORDS = (
    "the", "answer", "depends", "on", "context", "but", "in", "short", "it", "is", "worth",
    "noting", "that", "several", "factors", "matter", "here", "first", "second", "finally",
    "consider", "a", "simple", "example", "which", "shows", "how", "this", "works", "well",
    "enough", "for", "most", "cases", "and", "clearly", "so", "we", "can", "say", "yes",
)  # fmt: skip


# --- synthetic answers --------------------------------------------------------------------------


def request_digest(body: dict[str, Any]) -> str:
    """What makes two requests the same, ignoring how the answer is delivered."""
    core = {k: v for k, v in body.items() if k not in ("stream", "stream_tokens", "stream_options")}
    text = json.dumps(core, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def synthetic_reply(
    body: dict[str, Any], digest: str | None = None, options: dict[str, str] | None = None
) -> tuple[str, str, int, int]:
    """(content, finish_reason, prompt_tokens, completion_tokens) for a request body; the server
    passes the body's ``digest`` and directive ``options``, worked out once per request."""
    digest = digest or request_digest(body)
    reply = (directive(body) if options is None else options).get("reply")
    if reply is not None:
        return _finish(body, reply.split(" "), "stop")
    last = _last_user_text(body.get("messages", []))
    quoted = " ".join(last.split())
    quoted = quoted if len(quoted) <= 60 else quoted[:57] + "..."
    stream = hashlib.shake_128(digest.encode()).digest(40)
    words = [_WORDS[b % len(_WORDS)] for b in stream[1 : 9 + stream[0] % 24]]
    tokens = [f"[{digest[:8]}]", "Simulated", "answer", f"to \u201c{quoted}\u201d:", *words]
    tokens[-1] += "."
    return _finish(body, tokens, "stop")


def _finish(body: dict[str, Any], tokens: list[str], finish: str) -> tuple[str, str, int, int]:
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and 0 < max_tokens < len(tokens):
        tokens, finish = tokens[:max_tokens], "length"
    prompt_tokens = sum(4 + math.ceil(len(_text_of(m)) / 4) for m in body.get("messages", []) if isinstance(m, dict))
    return " ".join(tokens), finish, prompt_tokens, len(tokens)


def shaped_reply(
    body: dict[str, Any], config: SimConfig, arrival: int, digest: str, options: dict[str, str]
) -> tuple[str, str, int, int]:
    """The reply, shaped like the answer asked for: JSON for a response_format, else a label
    (when the simulator has labels), else free text. ``invalid_rate`` spoils some of them."""
    if "reply" in options:
        return synthetic_reply(body, digest, options)
    invalid = config.invalid_rate > 0 and chance(config.seed, digest, arrival, "invalid") < config.invalid_rate
    pick = chance(config.seed, digest, arrival, "pick")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        schema = schema_of(response_format) or {"type": "object", "properties": {"answer": {"type": "string"}}}
        value = _example(schema, digest, schema)
        text = json.dumps(value, ensure_ascii=False)
        if invalid:
            spoiled = _spoiled(value, schema)
            if spoiled is not None and pick < 0.5:
                text = json.dumps(spoiled, ensure_ascii=False)
            else:  # cut off mid-way
                text = text[: max(1, len(text) // 2)]
        return _finish(body, text.split(" "), "stop")
    expected = _expected(body, config)
    right = expected is not None and chance(config.seed, digest, "right") < skill(str(body.get("model")))
    if config.labels:
        labels = config.labels
        if expected is not None:  # right: the expected label; wrong: another one
            wrong = [label for label in labels if label.casefold() != expected.casefold()] or list(labels)
            label = expected if right else wrong[int(chance(config.seed, digest, "label") * len(wrong))]
        else:
            label = labels[int(chance(config.seed, digest, "label") * len(labels))]
        text = ("I am not sure which fits." if invalid
                else (label, label.upper() + ".", f" {label.capitalize()}!")[int(pick * 3)])  # fmt: skip
        return _finish(body, text.split(" "), "stop")
    if right and expected is not None:
        return _finish(body, expected.split(" "), "stop")
    return synthetic_reply(body, digest, options)


def _expected(body: dict[str, Any], config: SimConfig) -> str | None:
    """The expected answer of the row this request came from, when the run gave them."""
    if not config.expected:
        return None
    messages = body.get("messages")
    return config.expected.get(messages_key(messages)) if isinstance(messages, list) else None


_SIZE = re.compile(r"(\d+(?:\.\d+)?)[bB]\b")


def skill(model: str) -> float:
    """The share of expected answers a played model gets right: more with more parameters, as
    its name gives them (``70B`` over ``8B``), else a steady figure of its own."""
    size = _SIZE.search(model)
    if size is not None:
        return 0.45 + 0.45 * min(1.0, math.log10(max(float(size.group(1)), 1.0)) / 2.5)
    return 0.5 + 0.3 * chance("skill", model)


def _example(schema: Any, digest: str, root: Mapping[str, Any], path: str = "") -> Any:
    """A value that fits ``schema``, varied by the request (``digest``) and the field's path."""
    if not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        node: Any = root
        for part in str(schema["$ref"])[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return _example(node, digest, root, path)
    unit = chance(digest, path)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][int(unit * len(schema["enum"]))]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return _example(schema[key][0], digest, root, path)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {
            name: _example(sub, digest, root, f"{path}.{name}") for name, sub in schema.get("properties", {}).items()
        }
    if kind == "array":
        count = max(schema.get("minItems", 1), 1)
        return [_example(schema.get("items", {}), digest, root, f"{path}[{i}]") for i in range(count)]
    if kind in ("integer", "number"):
        bounds: dict[str, Any] = schema
        low = float(bounds.get("minimum", bounds.get("exclusiveMinimum", 0)))
        high = float(bounds.get("maximum", bounds.get("exclusiveMaximum", low + 10)))
        value = low + unit * (high - low)
        if kind == "integer":
            return min(max(math.ceil(low), round(value)), math.floor(high))
        return round(value, 3)
    if kind == "boolean":
        return unit < 0.5
    if kind == "null":
        return None
    word = _WORDS[int(unit * len(_WORDS))]
    return word if len(word) >= schema.get("minLength", 0) else word * schema.get("minLength", 1)


def _spoiled(value: Any, schema: Mapping[str, Any]) -> Any:
    """A near miss that parses but breaks the schema (a required field left out), or None when
    the schema requires nothing."""
    required = schema.get("required") or []
    if isinstance(value, dict) and required:
        return {k: v for k, v in value.items() if k != required[0]}
    return None


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message)
    return ""


def chance(*parts: object) -> float:
    """A repeatable number in [0, 1) from its inputs: randomness that reruns identically."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


# --- rate limits --------------------------------------------------------------------------------


def invalid_body(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "'model' is required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "tool"):
            return "each message needs a role of system, user, assistant or tool"
    return None


def directive(body: dict[str, Any]) -> dict[str, str]:
    for message in body.get("messages", ()):
        if not isinstance(message, dict):
            continue
        text = _text_of(message)
        start = text.find(_REPLY)
        if start >= 0 and text.rfind("]") > start:  # up to the last ']': the answer, brackets and all
            return {"reply": text[start + len(_REPLY) : text.rfind("]")]}
        match = _DIRECTIVE.search(text)
        if match:
            options = {}
            for item in re.split(r"[,\s]+", match.group(1).strip()):
                if "=" in item:
                    key, value = item.split("=", 1)
                    options[key] = value
            return options
    return {}


def float_option(options: dict[str, str], key: str) -> float | None:
    try:
        return float(options[key]) if key in options else None
    except ValueError:
        return None


