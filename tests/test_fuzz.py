"""Property-based tests: any text a cell can hold reaches the request unchanged; any template is
either rendered exactly or refused with a message, never a crash."""

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchchat.core.errors import JobError
from batchchat.core.records import ChatRequest, InvalidRow
from batchchat.core.template import parse_template
from batchchat.input.source import open_source
from batchchat.job.jobfile import load_job
from batchchat.plan.rows import RequestBuilder, RowSpec

# Any Unicode text a file can hold: everything but lone surrogates, which UTF-8 cannot encode.
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
NAME = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="{}"), min_size=1, max_size=20).filter(
    lambda s: s.strip()
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.text(max_size=80))
def test_any_template_text_is_parsed_or_refused_with_a_message(text):
    try:
        template = parse_template(text)
    except JobError as e:
        assert str(e).startswith("template: ")
        return
    assert template.columns  # a parsed template always names a column


@FUZZ
@given(
    st.lists(st.one_of(st.tuples(st.just("text"), TEXT), st.tuples(st.just("field"), NAME)), min_size=1, max_size=8),
    st.data(),
)
def test_a_valid_template_renders_exactly_its_literals_and_cells(parts, data):
    if not any(kind == "field" for kind, _ in parts):
        parts = [*parts, ("field", "x")]
    source = "".join(value.replace("{", "{{").replace("}", "}}") if kind == "text" else "{" + value + "}"
                     for kind, value in parts)  # fmt: skip
    cells = {name: data.draw(TEXT, label=name) for kind, name in parts if kind == "field"}
    expected = "".join(value if kind == "text" else cells[value] for kind, value in parts)
    assert parse_template(source).render(cells) == expected


def request_for(path, **settings) -> ChatRequest | InvalidRow:
    job = load_job(model="m", provider="sim", **settings)
    source = open_source(path)
    builder = RequestBuilder(RowSpec.of(job, source.columns), source.columns, source.name)
    [(_, [item])] = list(builder.rows(source))
    return item


def check_sent_unchanged(item: ChatRequest | InvalidRow, cell: str) -> None:
    if not cell.strip():
        assert isinstance(item, InvalidRow)  # nothing to send: an error row, not a request
        return
    assert isinstance(item, ChatRequest)
    body = json.loads(json.dumps(item.body(), ensure_ascii=False).encode("utf-8"))  # as it goes on the wire
    assert body["messages"] == [{"role": "user", "content": cell}]


@FUZZ
@given(TEXT.filter(lambda s: "\x00" not in s))  # NUL cannot be written by Python's csv module
def test_any_csv_cell_reaches_the_request_body_unchanged(tmp_path_factory, cell):
    path = tmp_path_factory.mktemp("csv") / "in.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["id", "prompt"], ["1", cell]])
    check_sent_unchanged(request_for(path), cell)


@FUZZ
@given(TEXT)
def test_any_jsonl_and_parquet_cell_reaches_the_request_body_unchanged(tmp_path_factory, cell):
    folder = tmp_path_factory.mktemp("tables")
    jsonl = folder / "in.jsonl"
    jsonl.write_text(json.dumps({"prompt": cell}) + "\n", encoding="utf-8")
    check_sent_unchanged(request_for(jsonl), cell)
    parquet = folder / "in.parquet"
    pq.write_table(pa.table({"prompt": [cell]}), parquet)
    check_sent_unchanged(request_for(parquet), cell)


@FUZZ
@given(TEXT, TEXT)
def test_cells_in_a_template_and_a_history_reach_the_request_unchanged(tmp_path_factory, question, earlier):
    path = tmp_path_factory.mktemp("tpl") / "in.jsonl"
    history = [{"role": "user", "content": earlier}, {"role": "assistant", "content": "ok"}]
    path.write_text(json.dumps({"q": question, "h": history}) + "\n", encoding="utf-8")
    item = request_for(path, template="Q: {q}", messages_column="h")
    assert isinstance(item, ChatRequest)
    assert list(item.messages) == [*history, {"role": "user", "content": f"Q: {question}"}]
