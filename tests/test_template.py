import pytest

from batchchat.core.errors import JobError
from batchchat.core.template import cell_text, parse_template


def test_placeholders_are_filled_from_the_row():
    t = parse_template("Translate to {lang}: {text}")
    assert t.columns == ("lang", "text")
    assert t.render({"lang": "French", "text": "good morning"}) == "Translate to French: good morning"


def test_double_braces_are_literal():
    t = parse_template('Reply as JSON like {{"label": "..."}} for: {text}')
    assert t.columns == ("text",)
    assert t.render({"text": "hi"}) == 'Reply as JSON like {"label": "..."} for: hi'


def test_column_names_with_format_syntax_characters_work():
    t = parse_template("{score:raw} / {q.text} / {a[0]} / {first name}")
    assert t.columns == ("score:raw", "q.text", "a[0]", "first name")
    values = {"score:raw": "1", "q.text": "2", "a[0]": "3", "first name": "Ada"}
    assert t.render(values) == "1 / 2 / 3 / Ada"


def test_a_column_used_twice_is_listed_once():
    assert parse_template("{a} and {a} and {b}").columns == ("a", "b")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("Hello {name", "never closed"),
        ("Hello name}", "closes nothing"),
        ("Hello {}", "empty placeholder"),
        ("Hello {a{b}}", "never closed"),
        ("no placeholders at all", "no {column} placeholder"),
    ],
)
def test_bad_templates_are_rejected_with_a_reason(text, fragment):
    with pytest.raises(JobError, match="template") as info:
        parse_template(text)
    assert fragment in str(info.value)


def test_cell_values_read_naturally():
    assert cell_text(None) == ""
    assert cell_text("NA") == "NA"
    assert cell_text(3) == "3"
    assert cell_text(3.0) == "3"
    assert cell_text(2.5) == "2.5"
    assert cell_text(True) == "True"
