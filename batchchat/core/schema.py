"""JSON Schema, the part structured output uses: checking a schema and checking answers against it.

The stack has no JSON Schema library, and answers only need the keywords models are asked to
follow: types, properties, required, additionalProperties, items, enum, const, numeric and length
bounds, pattern, anyOf/oneOf/allOf and local ``$ref``. A schema using a keyword that would
constrain answers but is not understood here is refused when the job is loaded, rather than
silently not enforced.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .errors import JobError

TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
CHECKED = {
    "type", "properties", "required", "additionalProperties", "items", "enum", "const", "minimum",
    "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern",
    "minItems", "maxItems", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions",
}  # fmt: skip
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "format", "strict", "name"}


def schema_of(response_format: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The schema inside a response_format: OpenAI's ``json_schema.schema`` or Together's ``schema``."""
    inner = response_format.get("json_schema")
    schema = inner.get("schema") if isinstance(inner, Mapping) else None
    if isinstance(schema, Mapping):
        return schema
    schema = response_format.get("schema")
    return schema if isinstance(schema, Mapping) else None


def check_schema(schema: Mapping[str, Any], at: str, root: Mapping[str, Any] | None = None, path: str = "$") -> None:
    """Refuse what answers could not be checked against, naming where in the schema it is."""
    root = root or schema
    for key, value in schema.items():
        if key in ANNOTATIONS:
            continue
        if key not in CHECKED:
            raise JobError(
                f"{at}: the schema keyword '{key}' at {path} is not supported by batchchat's answer "
                "checks; remove it, or express it with type, enum, properties, required, items, "
                "pattern or bounds"
            )
        if key == "type":
            kinds = value if isinstance(value, list) else [value]
            bad = [k for k in kinds if k not in TYPES]
            if bad:
                raise JobError(f"{at}: unknown type {bad[0]!r} at {path}; use one of {', '.join(TYPES)}")
        elif key == "properties" or key in ("$defs", "definitions"):
            if not isinstance(value, Mapping):
                raise JobError(f"{at}: '{key}' at {path} must be a table of schemas")
            for name, sub in value.items():
                _check_sub(sub, at, root, f"{path}.{name}")
        elif key in ("items", "additionalProperties") and not isinstance(value, bool):
            _check_sub(value, at, root, f"{path}[]")
        elif key in ("anyOf", "oneOf", "allOf"):
            if not isinstance(value, list) or not value:
                raise JobError(f"{at}: '{key}' at {path} must be a list of schemas")
            for sub in value:
                _check_sub(sub, at, root, path)
        elif key == "$ref":
            _resolve(value, root, at)
        elif key == "pattern":
            try:
                re.compile(value)
            except (re.error, TypeError) as e:
                raise JobError(f"{at}: pattern at {path} is not a valid regular expression: {e}") from None


def _check_sub(sub: Any, at: str, root: Mapping[str, Any], path: str) -> None:
    if not isinstance(sub, Mapping):
        raise JobError(f"{at}: the schema at {path} must be a table, got {sub!r}")
    check_schema(sub, at, root, path)


def _resolve(ref: Any, root: Mapping[str, Any], at: str) -> Mapping[str, Any]:
    if not isinstance(ref, str) or not ref.startswith("#/"):
        raise JobError(f"{at}: only local references like '#/$defs/Name' are supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise JobError(f"{at}: the reference {ref!r} points at nothing in the schema")
        node = node[part]
    if not isinstance(node, Mapping):
        raise JobError(f"{at}: the reference {ref!r} does not point at a schema")
    return node


def validate(
    value: Any, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None, path: str = "$"
) -> str | None:
    """The first way ``value`` breaks ``schema`` (with its JSON path), or None when it conforms."""
    root = root or schema
    if "$ref" in schema:
        problem = validate(value, _resolve(schema["$ref"], root, "schema"), root, path)
        if problem:
            return problem
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is(value, kind) for kind in kinds):
            return f"{path}: expected {' or '.join(kinds)}, got {_shown(value)}"
    if "enum" in schema and not any(json_equal(value, option) for option in schema["enum"]):
        return f"{path}: {_shown(value)} is not one of {json.dumps(schema['enum'], ensure_ascii=False)}"
    if "const" in schema and not json_equal(value, schema["const"]):
        return f"{path}: expected {json.dumps(schema['const'], ensure_ascii=False)}, got {_shown(value)}"
    problem = _bounds(value, schema, path)
    if problem:
        return problem
    if isinstance(value, dict):
        problem = _object(value, schema, root, path)
        if problem:
            return problem
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            problem = validate(item, schema["items"], root, f"{path}[{i}]")
            if problem:
                return problem
    for sub in schema.get("allOf", ()):
        problem = validate(value, sub, root, path)
        if problem:
            return problem
    if "anyOf" in schema and all(validate(value, sub, root, path) for sub in schema["anyOf"]):
        return f"{path}: {_shown(value)} matches none of the anyOf choices"
    if "oneOf" in schema and sum(validate(value, sub, root, path) is None for sub in schema["oneOf"]) != 1:
        return f"{path}: {_shown(value)} does not match exactly one of the oneOf choices"
    return None


def _object(value: dict[str, Any], schema: Mapping[str, Any], root: Mapping[str, Any], path: str) -> str | None:
    for name in schema.get("required", ()):
        if name not in value:
            return f"{path}: missing required field '{name}'"
    properties = schema.get("properties", {})
    for name, item in value.items():
        if name in properties:
            problem = validate(item, properties[name], root, f"{path}.{name}")
        elif schema.get("additionalProperties") is False:
            problem = f"{path}: unexpected field '{name}'"
        elif isinstance(schema.get("additionalProperties"), Mapping):
            problem = validate(item, schema["additionalProperties"], root, f"{path}.{name}")
        else:
            problem = None
        if problem:
            return problem
    return None


def _bounds(value: Any, schema: Mapping[str, Any], path: str) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for key, broken in (("minimum", value < schema.get("minimum", value)),
                            ("maximum", value > schema.get("maximum", value)),
                            ("exclusiveMinimum", "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]),
                            ("exclusiveMaximum", "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"])):  # fmt: skip
            if broken:
                return f"{path}: {value!r} breaks {key} {schema[key]!r}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            return f"{path}: text of length {len(value)} is outside the allowed length"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return f"{path}: {_shown(value)} does not match the pattern {schema['pattern']!r}"
    if isinstance(value, list) and not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
        return f"{path}: a list of {len(value)} items is outside the allowed size"
    return None


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    python = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}[kind]
    return isinstance(value, python)


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: key order and 1 vs 1.0 do not matter, but true is not 1, at any depth."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(json_equal, a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def output_fields(schema: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """The answer's top-level fields and their JSON types ("" when mixed or unknown)."""
    if schema is None:
        return ()
    if "$ref" in schema:
        schema = _resolve(schema["$ref"], schema, "schema")
    fields = []
    for name, sub in (schema.get("properties") or {}).items():
        kind = sub.get("type") if isinstance(sub, Mapping) else None
        fields.append((name, kind if isinstance(kind, str) else ""))
    return tuple(fields)
