import json
from collections import Counter

import pyarrow as pa
import pytest

from batchchat.core.errors import JobError
from batchchat.core.keys import request_key
from batchchat.core.records import ChatRequest, InvalidRow
from batchchat.job.jobfile import load_job
from batchchat.plan.rows import RequestBuilder, RowSpec, row_requests


def build(rows: list[dict], **settings):
    job = load_job(model="m", provider="sim", **settings)
    batch = pa.RecordBatch.from_pylist(rows)
    spec = RowSpec.of(job, batch.schema.names)
    RequestBuilder(spec, batch.schema.names, "in.csv")  # checks the columns
    return row_requests(spec, batch, 0, "in.csv", Counter())


def test_prompt_column_becomes_one_user_message():
    [request] = build([{"prompt": "What are some fun things to do in New York?"}])
    assert isinstance(request, ChatRequest)
    assert request.body() == {
        "model": "m",
        "messages": [{"role": "user", "content": "What are some fun things to do in New York?"}],
    }


def test_system_prompt_goes_first_and_options_go_in_the_body():
    [request] = build([{"q": "hi"}], prompt_column="q", system="You are a helpful travel guide.",
                      max_tokens=50, temperature=0.0, params={"stop": ["\n"]})  # fmt: skip
    assert request.body() == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "You are a helpful travel guide."},
            {"role": "user", "content": "hi"},
        ],
        "max_tokens": 50,
        "temperature": 0.0,
        "stop": ["\n"],
    }


def test_template_fills_placeholders_from_the_row():
    [request] = build([{"lang": "French", "text": "cat"}], template="Translate to {lang}: {text}")
    assert request.messages == ({"role": "user", "content": "Translate to French: cat"},)


def test_messages_column_is_the_whole_conversation():
    history = [
        {"role": "system", "content": "You are a helpful travel guide."},
        {"role": "user", "content": "What are some fun things to do in New York?"},
        {"role": "assistant", "content": "See a Broadway show."},
        {"role": "user", "content": "And in the evening?"},
    ]
    [request] = build([{"conv": json.dumps(history)}], messages_column="conv", system="ignored: the row has its own")
    assert list(request.messages) == history


def test_history_plus_an_explicit_prompt_column_appends_the_new_turn():
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    [request] = build([{"h": json.dumps(history), "prompt": "How are you?"}], messages_column="h",
                      prompt_column="prompt", system="Be brief.")  # fmt: skip
    assert list(request.messages) == [
        {"role": "system", "content": "Be brief."},
        *history,
        {"role": "user", "content": "How are you?"},
    ]


def test_messages_given_as_arrow_lists_drop_the_fields_a_message_does_not_have():
    rows = [{"m": [{"role": "user", "content": "hi", "name": None}]}]
    [request] = build(rows, messages_column="m")
    assert request.messages == ({"role": "user", "content": "hi"},)


def test_empty_prompts_become_invalid_rows_not_requests():
    items = build([{"prompt": ""}, {"prompt": "   "}, {"prompt": None}, {"prompt": "ok"}])
    assert [type(i) for i in items] == [InvalidRow, InvalidRow, InvalidRow, ChatRequest]
    assert items[0].reason.startswith("empty prompt")


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("{not json", "row 1, column 'h': not valid JSON"),
        ('{"role": "user"}', "got a JSON dict"),
        ('[{"role": "robot", "content": "x"}]', "role 'robot'"),
        ('[{"role": "user"}]', "has no text content"),
        ('["hello"]', "message 1 is not an object"),
        ('[{"role": "tool", "content": "42"}]', "needs a tool_call_id"),
    ],
)
def test_bad_messages_cells_name_the_row_and_column(cell, message):
    with pytest.raises(JobError, match=r"in\.csv, row 1, column 'h'") as info:
        build([{"h": cell}], messages_column="h")
    assert message in str(info.value)


def test_missing_columns_list_what_exists_and_suggest_the_closest():
    with pytest.raises(JobError) as info:
        build([{"promt": "x", "id": "1"}])
    text = str(info.value)
    assert "no column 'prompt'" in text and "'promt', 'id'" in text and "did you mean 'promt'" in text
    with pytest.raises(JobError, match="no column 'lang' \\(a placeholder in the template\\)"):
        build([{"text": "x"}], template="{lang}: {text}")


def test_keys_are_stable_and_change_with_what_is_sent():
    messages = ({"role": "user", "content": "hi"},)
    key = request_key("m", messages, (("temperature", 0.0),))
    assert key == request_key("m", [{"role": "user", "content": "hi"}], [("temperature", 0.0)])
    assert key != request_key("m2", messages, (("temperature", 0.0),))
    assert key != request_key("m", ({"role": "user", "content": "hi!"},), (("temperature", 0.0),))
    assert key != request_key("m", messages, (("temperature", 0.7),))
    assert key != request_key("m", messages, (("temperature", 0.0),), sample=1)
    assert len(key) == 32


def test_the_plan_keeps_the_first_requests_to_send_and_the_rest_are_built_again(monkeypatch):
    from batchchat.core.records import RowOutcome
    from batchchat.execute.pipeline import _Requests
    from batchchat.input.source import ArrowSource
    from batchchat.plan.plan import Setup, _size
    from batchchat.store.journal import MemoryStore

    job = load_job(None, model="m", provider="sim")
    source = ArrowSource(pa.table({"prompt": ["a", "b", "a", "", "c"]}))
    setup = Setup.of(job, source.columns, "in.csv")
    store = MemoryStore()
    _, rows = setup.plan(source, store, None)
    built = list(setup.builder.requests(source, rows.keys, rows.sends))
    assert rows.kept == built and [r.row for r in built] == [0, 1, 4]  # a repeat and an empty row send nothing
    assert rows.built_from is None and list(_Requests(setup, source, rows)) == built
    store.add(RowOutcome(1, built[1].key, "ok", 1, "m", response="B"))
    _, rows = setup.plan(source, store, None)
    assert [r.row for r in rows.kept] == [0, 4]  # an answered row is not kept to send again
    monkeypatch.setattr("batchchat.plan.plan.KEPT_BYTES", _size(built[0]) + _size(built[1]) // 2)  # one fits, not two
    _, rows = setup.plan(source, store, None)
    assert [r.row for r in rows.kept] == [0] and rows.built_from == 1
    sent = list(_Requests(setup, source, rows))
    assert sent == [built[0], built[2]] and sent[0] is rows.kept[0]  # the first as kept, the rest built again
    monkeypatch.setattr("batchchat.plan.plan.KEPT_BYTES", 0)
    _, rows = setup.plan(source, store, None)
    assert rows.kept == [] and rows.built_from == 0 and list(_Requests(setup, source, rows)) == [built[0], built[2]]


def _planned_keeping(monkeypatch, prompts, models, keep):
    """A plan of ``prompts`` that keeps its first ``keep`` requests (``KEPT_BYTES`` set to their
    size): the setup, the source, every request to send, and the plan's rows."""
    from batchchat.execute.pipeline import _Requests
    from batchchat.input.source import ArrowSource
    from batchchat.plan.plan import Setup, _size
    from batchchat.store.journal import MemoryStore

    job = load_job(None, models=models, provider="sim")
    source = ArrowSource(pa.table({"prompt": prompts}))
    setup = Setup.of(job, source.columns, "in.csv")
    every = list(_Requests(setup, source, setup.plan(source, MemoryStore(), None)[1]))
    monkeypatch.setattr("batchchat.plan.plan.KEPT_BYTES", sum(_size(r) for r in every[:keep]))
    return setup, source, every, setup.plan(source, MemoryStore(), None)[1]


@pytest.mark.parametrize("keep", [0, 1, 2, 3])
def test_a_row_whose_request_another_sends_is_not_sent_whether_it_was_kept_or_is_built_again(monkeypatch, keep):
    """A Ray block plans its rows, then clears ``sends`` for the requests another block claimed:
    the kept ones were sent all the same, and paid for twice."""
    from batchchat.execute.pipeline import _Requests

    setup, source, _, rows = _planned_keeping(monkeypatch, ["a", "b", "c"], ["m"], keep)
    assert len(rows.kept) == keep
    rows.sends[1] = 0  # another block asks "b"
    assert [r.row for r in _Requests(setup, source, rows)] == [0, 2]


@pytest.mark.parametrize("keep", range(7))
def test_with_several_models_the_kept_requests_may_end_inside_a_row_and_each_is_sent_once(monkeypatch, keep):
    from batchchat.execute.pipeline import _Requests

    setup, source, every, rows = _planned_keeping(monkeypatch, ["a", "b", "a", "c"], ["m1", "m2", "m3"], keep)
    assert [(r.row, r.model) for r in every] == [(row, f"m{row % 3 + 1}") for row in (0, 1, 2, 3, 4, 5, 9, 10, 11)]
    assert len(rows.kept) == keep and rows.built_from == keep  # the repeat at row 6 counts, and is not sent
    assert list(_Requests(setup, source, rows)) == every


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "built-again"])
def test_a_run_sends_and_writes_the_same_whether_its_requests_were_kept_or_built_again(tmp_path, sim, monkeypatch, kept):
    from tests.helpers import cli, read_output, write_csv

    if not kept:
        monkeypatch.setattr("batchchat.plan.plan.KEPT_BYTES", 0)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["one"], ["two"], ["one"], [""], ["three"]])
    result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "m1", "-m", "m2", "--base-url", sim.url)
    assert result.exit_code == 1  # the empty row is an error row
    rows = read_output(tmp_path / "out.csv")
    assert [(r["prompt"], r["model"], r["status"]) for r in rows] == [
        (p, m, "error" if p == "" else "ok") for p in ("one", "two", "one", "", "three") for m in ("m1", "m2")
    ]
    assert len(sim.requests) == 6  # three distinct prompts, two models: each sent once
    assert sorted((r["body"]["model"], r["body"]["messages"][-1]["content"]) for r in sim.requests) == sorted(
        (m, p) for p in ("one", "two", "three") for m in ("m1", "m2")
    )


def test_a_kept_requests_size_is_never_underestimated():
    """The plan keeps requests by their estimated size: options and image parts count too (a
    row of tools or an image is many times its prompt)."""
    import json
    import tracemalloc

    from batchchat.plan.plan import _size

    tools = [{"type": "function", "function": {"name": f"f{j}", "description": "x" * 100,
                                               "parameters": {"type": "object"}}} for j in range(8)]  # fmt: skip
    image = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:," + "A" * 50_000}}]
    shapes = {
        "prompt": lambda i: (({"role": "user", "content": f"Question {i}: what about {i}?"},), ()),
        "tools": lambda i: (({"role": "user", "content": f"Q {i}"},), (("tools", json.loads(json.dumps(tools))),)),
        "image": lambda i: (({"role": "user", "content": json.loads(json.dumps(image))},), ()),
        "non-ascii": lambda i: (({"role": "user", "content": f"Вопрос {i}: 質問 " * 20},), ()),
    }
    for name, shape in shapes.items():
        tracemalloc.start()
        made = [ChatRequest(i, f"{i:032x}", "m", *shape(i)) for i in range(300)]
        actual = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert sum(_size(r) for r in made) >= actual, name


def test_a_kept_request_is_counted_at_what_it_takes_whatever_its_script():
    """Text not ASCII was counted at four bytes a character, so half of a real table's prompts
    (accented, CJK) counted twice what they take, and were built and hashed again when sent."""
    import sys

    from batchchat.core.records import ChatRequest
    from batchchat.plan.plan import _size

    for text in ("Question 1: what about 1?", "café " * 400, "第2問: " + "翀飅玐" * 300, "🚀" * 500):
        message = {"role": "user", "content": text}
        request = ChatRequest(0, "0" * 32, "sim-chat", (message,))
        held = sys.getsizeof(request) + sys.getsizeof(request.key) + sys.getsizeof(request.messages)
        held += sys.getsizeof(message) + sum(map(sys.getsizeof, [*message, *message.values()]))
        assert held <= _size(request) <= held + 200
