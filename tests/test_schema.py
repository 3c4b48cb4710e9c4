"""The JSON Schema subset that structured answers are checked against."""

from __future__ import annotations

import pytest

from batchchat.core.errors import JobError
from batchchat.core.schema import check_schema, output_fields, schema_of, validate

SENTIMENT = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "count": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
    },
    "required": ["sentiment", "confidence"],
    "additionalProperties": False,
}


def test_a_conforming_answer_passes() -> None:
    assert validate({"sentiment": "neutral", "confidence": 0.5, "count": 3, "tags": ["a"]}, SENTIMENT) is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"confidence": 0.5}, "$: missing required field 'sentiment'"),
        ({"sentiment": "happy", "confidence": 0.5}, '$.sentiment: "happy" is not one of'),
        ({"sentiment": "neutral", "confidence": 1.5}, "$.confidence: 1.5 breaks maximum 1"),
        ({"sentiment": "neutral", "confidence": "high"}, "$.confidence: expected number"),
        ({"sentiment": "neutral", "confidence": 0.1, "extra": 1}, "unexpected field 'extra'"),
        ({"sentiment": "neutral", "confidence": 0.1, "count": 1.5}, "$.count: expected integer"),
        ({"sentiment": "neutral", "confidence": True}, "$.confidence: expected number, got true"),
        ({"sentiment": "neutral", "confidence": 0.1, "tags": ["a", 2]}, "$.tags[1]: expected string"),
        ({"sentiment": "neutral", "confidence": 0.1, "tags": ["a", "b", "c"]}, "outside the allowed size"),
        (["sentiment"], "$: expected object, got"),
    ],
)
def test_each_way_of_breaking_the_schema_is_named_with_its_path(value: object, problem: str) -> None:
    found = validate(value, SENTIMENT)
    assert found is not None and problem in found


def test_combinators_refs_patterns_and_const() -> None:
    schema = {
        "$defs": {"Code": {"type": "string", "pattern": "^[A-Z]{3}$"}},
        "type": "object",
        "properties": {
            "code": {"$ref": "#/$defs/Code"},
            "value": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "kind": {"const": "fx"},
            "one": {"oneOf": [{"type": "integer"}, {"type": "number"}]},
        },
    }
    check_schema(schema, "json_schema")
    assert validate({"code": "EUR", "value": None, "kind": "fx"}, schema) is None
    assert "does not match the pattern" in (validate({"code": "eur"}, schema) or "")
    assert "matches none of the anyOf" in (validate({"value": "x"}, schema) or "")
    assert 'expected "fx"' in (validate({"kind": "fy"}, schema) or "")
    # 2 is an integer and a number: both oneOf choices match, which oneOf forbids
    assert "exactly one" in (validate({"one": 2}, schema) or "")
    assert validate({"one": 2.5}, schema) is None


def test_json_equality_keeps_true_and_1_apart() -> None:
    assert validate(1, {"enum": [True]}) is not None
    assert validate(1.0, {"enum": [1]}) is None


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "object", "patternProperties": {}}, "keyword 'patternProperties' at $ is not supported"),
        ({"type": "strin"}, "unknown type 'strin'"),
        ({"properties": {"a": {"$ref": "#/$defs/Missing"}}}, "points at nothing"),
        ({"properties": {"a": {"$ref": "https://example.com/s.json"}}}, "only local references"),
        ({"properties": {"a": {"type": "string", "pattern": "("}}}, "not a valid regular expression"),
        ({"properties": {"a": {"not": {"type": "string"}}}}, "keyword 'not' at $.a"),
    ],
)
def test_a_schema_that_could_not_be_enforced_is_refused_with_where(schema: dict[str, object], message: str) -> None:
    with pytest.raises(JobError, match=r"json_schema in job\.toml") as caught:
        check_schema(schema, "json_schema in job.toml")
    assert message in str(caught.value)


def test_schema_is_found_in_openai_and_together_forms_and_fields_are_listed() -> None:
    assert schema_of({"type": "json_schema", "json_schema": {"name": "a", "schema": SENTIMENT}}) == SENTIMENT
    assert schema_of({"type": "json_object", "schema": SENTIMENT}) == SENTIMENT
    assert schema_of({"type": "json_object"}) is None
    assert output_fields(SENTIMENT) == (
        ("sentiment", "string"), ("confidence", "number"), ("count", "integer"), ("tags", "array"),
    )  # fmt: skip
