"""Answers: labels, JSON checks, derived columns and scores."""

from __future__ import annotations

import pytest

from batchchat.core.errors import INVALID_LABEL, INVALID_OUTPUT, SERVER_ERROR
from batchchat.job.spec import Answers, Scoring
from batchchat.plan.answers import AnswerCheck, Derived, match_label, parse_json_answer, score

LABELS = ("positive", "negative", "neutral", "very negative")
SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"type": "string", "enum": ["pos", "neg"]}, "stars": {"type": "integer"},
                   "score": {"type": "number"}, "spam": {"type": "boolean"}, "tags": {"type": "array"}},
    "required": ["sentiment"],
}  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "label"),
    [("positive", "positive"), (" Positive.", "positive"), ("NEGATIVE!", "negative"), ("'neutral'\n", "neutral"),
     ("Very   negative", "very negative"), ("very-negative", "very negative"), ("**Neutral**", "neutral"),
     ("The answer is positive", None), ("positively", None), ("", None), (None, None)],
)  # fmt: skip
def test_labels_match_ignoring_case_whitespace_and_punctuation(answer: str | None, label: str | None) -> None:
    assert match_label(answer, LABELS) == label


def test_label_check_names_the_answer_and_the_labels() -> None:
    check = AnswerCheck(Answers(labels=LABELS))
    assert check("Neutral.") is None
    error_type, why = check("I think it's fine") or ("", "")
    assert error_type == INVALID_LABEL
    assert '"I think it\'s fine"' in why and "positive, negative, neutral" in why


def test_json_checks_parse_fences_and_validate_the_schema() -> None:
    check = AnswerCheck(Answers(schema=SCHEMA, json_required=True))
    assert check('{"sentiment": "pos"}') is None
    assert check('```json\n{"sentiment": "neg"}\n```') is None
    assert check('{"sentiment": "meh"}') == (
        INVALID_OUTPUT,
        'the answer does not match the schema: $.sentiment: "meh" is not one of ["pos", "neg"]',
    )
    error_type, why = check('{"sentiment": "pos"') or ("", "")
    assert error_type == INVALID_OUTPUT and why.startswith("the answer is not valid JSON")
    assert check(None) == (INVALID_OUTPUT, "the answer is empty")
    object_only = AnswerCheck(Answers(json_required=True))
    assert object_only('{"a": 1}') is None
    assert object_only("[1, 2]") is not None
    assert AnswerCheck(Answers())("anything at all") is None


def test_derived_out_columns_are_typed_and_empty_when_the_answer_is_not_ok() -> None:
    derived = Derived(Answers(schema=SCHEMA, json_required=True), Scoring(), variants=True, transcripts=False)
    assert derived.columns() == [
        ("variant", "string"), ("out_sentiment", "string"), ("out_stars", "int64"), ("out_score", "float64"),
        ("out_spam", "bool"), ("out_tags", "string"), ("cost", "float64"), ("paid", "string"),
    ]  # fmt: skip
    cells = derived.values(
        "ok", '{"sentiment": "pos", "stars": 4.0, "score": 3, "spam": false, "tags": ["a"]}', None, None
    )
    assert cells == {"out_sentiment": "pos", "out_stars": 4, "out_score": 3.0, "out_spam": False, "out_tags": '["a"]'}
    assert isinstance(cells["out_score"], float)
    wrong_types = derived.values("ok", '{"sentiment": 5, "stars": "four", "spam": "no"}', None, None)
    assert wrong_types["out_sentiment"] == "5" and wrong_types["out_stars"] is None and wrong_types["out_spam"] is None
    failed = derived.values("error", '{"sentiment": "pos"}', INVALID_OUTPUT, None)
    assert set(failed.values()) == {None}


def test_scores_count_invalid_answers_as_wrong_and_skip_failed_requests() -> None:
    derived = Derived(Answers(labels=LABELS), Scoring("expected", "exact"), variants=False, transcripts=False)
    assert derived.values("ok", "Positive.", None, "positive") == {"label": "positive", "score": 1.0}
    assert derived.values("ok", "neutral", None, "positive") == {"label": "neutral", "score": 0.0}
    assert derived.values("error", "no idea", INVALID_LABEL, "positive") == {"label": None, "score": 0.0}
    assert derived.values("error", None, SERVER_ERROR, "positive") == {"label": None, "score": None}
    assert derived.values(None, None, None, "positive") == {"label": None, "score": None}  # pending
    assert derived.values("ok", "positive", None, "  ") == {"label": "positive", "score": None}  # nothing expected


@pytest.mark.parametrize(
    ("method", "answer", "expected", "right"),
    [
        ("exact", " Paris\n", "Paris", True),
        ("exact", "paris", "Paris", False),
        ("contains", "It is PARIS, of course.", "paris", True),
        ("contains", "Lyon", "Paris", False),
        ("contains", "It has 6 sides", "6", True),
        ("contains", "It is 6.", "6", True),
        ("contains", "(6)", 6, True),
        ("contains", "It has 16 sides", "6", False),
        ("contains", "[a6b3c1] Simulated answer", "6", False),
        ("contains", "about 6.5 of them", "6", False),
        ("contains", "6,000 people", "6", False),
        ("contains", "It is -6.", "6", False),
        ("contains", "It is \u22126.", "6", False),
        ("contains", "It is -6.", "-6", True),
        ("contains", "It is New   York\ncity", "new york", True),
        ("contains", "Newark", "new", False),
        ("contains", "C++ is fast.", "c++", True),
        ("contains", "3.14159", "3.14", False),
        ("contains", "pi is 3.14", "3.14", True),
        ("contains", "anything", "  ", False),
        ("regex", "The total is 42 units", r"\b42\b", True),
        ("regex", "The total is 420", r"\b42\b", False),
        ("json_equal", '{"b": [1, 2], "a": 1.0}', '{"a": 1, "b": [1, 2]}', True),
        ("json_equal", '```json\n{"a": 1}\n```', '{"a": 1}', True),
        ("json_equal", '{"a": true}', '{"a": 1}', False),
        ("json_equal", '{"a": 1}', '{"a": 1, "b": null}', False),
        ("json_equal", "not json", '{"a": 1}', False),
        ("exact", "12", 12, True),
        ("exact", None, "x", False),
    ],
)
def test_score_methods(method: str, answer: str | None, expected: object, right: bool) -> None:
    assert score(method, answer, expected) is right


def test_fenced_json_is_accepted_but_prose_around_it_is_not() -> None:
    assert parse_json_answer("```\n[1]\n```") == [1]
    with pytest.raises(ValueError):
        parse_json_answer('Sure! {"a": 1}')
