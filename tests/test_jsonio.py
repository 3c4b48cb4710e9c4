"""JSON on the hot path: request keys hash exactly the standard library's text, whatever orjson
would write, so a rerun after installing or upgrading orjson finds its answers and pays nothing
again; and the output's columns are the Arrow arrays ``pa.array`` would make."""

import datetime
import hashlib
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchchat.core import jsonio
from batchchat.core.arrays import array_of
from batchchat.core.keys import request_key

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()  # past 64 bits too: orjson refuses those
    | st.floats()  # NaN, infinities and tiny floats: orjson writes them differently
    | st.sampled_from([1e-05, 3.5e-05, 1e-07, -2.5e-09, 1e-10, 1e16, 1e-4, 0.0001, -0.0])
    | st.text()  # lone surrogates too: neither can write them as UTF-8
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    | st.dictionaries(st.integers(), inner, max_size=2),  # keys orjson refuses
    max_leaves=12,
)


def stdlib(value):
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@settings(max_examples=2000, deadline=None)
@given(VALUES)
def test_the_text_hashed_is_the_standard_librarys_for_any_value(value):
    try:
        expected = stdlib(value)
    except (TypeError, ValueError) as error:  # a lone surrogate: refused by both
        with pytest.raises(type(error)):
            jsonio.same_dumps(value)
        return
    assert jsonio.same_dumps(value) == expected


@pytest.mark.parametrize("value", [1e-05, 2.5e-07, math.nan, math.inf, 2**70, {1: "a"}])
def test_where_orjson_writes_otherwise_the_standard_library_decides(value):
    assert jsonio.same_dumps(["m", [{"role": "user", "content": "hi"}], [("temperature", value)]]) == stdlib(
        ["m", [{"role": "user", "content": "hi"}], [["temperature", value]]]
    )


def test_a_request_key_is_the_hash_of_the_standard_librarys_text():
    messages = [{"role": "user", "content": "Grüße, 世界 \n\"quoted\""}]
    for params in ([("temperature", 0.7)], [("temperature", 1e-05)], [("top_p", math.nan)]):
        text = stdlib(["sim-chat", messages, [list(p) for p in params]])
        assert request_key("sim-chat", messages, params) == hashlib.sha256(text).hexdigest()[:32]


LONG = "Summarise: " + " ".join(["warranty refund café"] * 100)  # 2,210 bytes
EMOJI = 'Emoji \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f4bb \u2764\ufe0f and null 1e-05 "quotes" \\ \n tab\t'
CJK = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "第2問: 翀飅玐ゅ厜襯闒盛ぷ枱。"})
SHORT = ({"role": "user", "content": "Question 1: what about 1?"},)


@pytest.mark.parametrize(
    ("model", "messages", "params", "sample", "turns", "key"),
    [
        ("sim-chat", SHORT, (), 0, (), "cf1580b587990b37fb044ff86085b9fe"),
        ("sim-chat", CJK, (("max_tokens", 64), ("temperature", 0.0)), 0, (), "047e0154f570b37f46fdb669d1a5372d"),
        ("m", ({"role": "user", "content": EMOJI},), (("temperature", 1e-05),), 0, (), "f7575e55712d87ba52b72622868a37c9"),
        ("sim-chat", ({"role": "user", "content": LONG},), (("stop", ["\n"]),), 0, (), "afae62cc622d46c0bee2e87b7ded6d29"),
        ("sim-chat", SHORT, (), 2, (), "76eb9310436aa0db3bbe6aa6c8c026a7"),
        ("sim-chat", SHORT, (), 0, ("Hi", "And then? 再见"), "0aa2876728a3783072a7afd3dfbfc63e"),
    ],
)  # fmt: skip
def test_request_keys_are_the_ones_earlier_versions_wrote(model, messages, params, sample, turns, key):
    """Worked out by the code before keys were hashed part by part (8f7258a): a key that changed
    would make every resumed output pay for its rows again."""
    assert request_key(model, messages, params, sample, turns) == key


TEXTS = st.lists(st.dictionaries(st.sampled_from(["role", "content", "name"]), st.text(), min_size=1, max_size=3),
                 max_size=3)  # fmt: skip
MESSAGES = TEXTS | st.lists(
    st.dictionaries(st.sampled_from(["role", "content", "name"]), st.text() | VALUES, min_size=1, max_size=3),
    max_size=3,
)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=8), MESSAGES, st.lists(st.tuples(st.text(max_size=5), VALUES), max_size=2),
       st.integers(0, 3), st.lists(st.text(max_size=8), max_size=2))  # fmt: skip
def test_a_key_is_the_hash_of_the_standard_librarys_text_of_its_parts(model, messages, params, sample, turns):
    parts = [model, messages, params] + ([sample] if sample or turns else []) + ([turns] if turns else [])
    try:
        whole = hashlib.sha256(stdlib(parts)).hexdigest()[:32]
    except (TypeError, ValueError) as error:  # a lone surrogate: refused by both
        with pytest.raises(type(error)):
            request_key(model, messages, params, sample, turns)
        return
    assert request_key(model, messages, params, sample, turns) == whole


def test_orjson_writes_every_character_as_the_standard_library_does():
    """Why messages of plain text need no look for where orjson's text differs."""
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(chars), 4096):
        messages = [{"role": "user", "content": "".join(chars[start : start + 4096])}]
        assert jsonio.same_dumps_request(["m", messages, ()], messages, ()) == stdlib(["m", messages, []])


COLUMNS = [
    (pa.string(), st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",))))),
    (pa.int64(), st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))),
    (pa.int32(), st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1))),
    (pa.float64(), st.one_of(st.none(), st.floats(allow_nan=False), st.integers(-(2**53), 2**53))),
    (pa.bool_(), st.one_of(st.none(), st.booleans())),
]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_an_added_column_is_the_array_arrow_makes_of_its_values(data):
    kind, cells = data.draw(st.sampled_from(COLUMNS))
    values = data.draw(st.lists(cells, max_size=40))
    made = array_of(values, kind)
    made.validate(full=True)
    assert made.equals(pa.array(values, type=kind))


@pytest.mark.parametrize(
    ("values", "kind"),
    [(["1.5"], pa.float64()), ([1.5], pa.int64()), ([2**40], pa.int32()), ([2**70], pa.int64()), ([1], pa.string()),
     ([2**53 + 1], pa.float64()), ([True], pa.int64()), ([1], pa.bool_())],
)
def test_a_value_of_another_type_is_converted_or_refused_as_arrow_does(values, kind):
    try:
        expected = pa.array(values, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as error:
        with pytest.raises(type(error)):
            array_of(values, kind)
        return
    assert array_of(values, kind).equals(expected)


class Keys(dict):
    """A dict the standard library writes through its own iteration, orjson through its own."""

    def items(self):
        return [("z", 1)]


@pytest.mark.parametrize(
    "value",
    [datetime.date(2020, 1, 1), datetime.datetime(2020, 1, 1, 12), Keys(a=1), [Keys(a=1)]],
    ids=["date", "datetime", "dict-subclass", "nested-subclass"],
)
def test_what_the_standard_library_refuses_or_writes_its_own_way_it_decides(value):
    try:
        expected = stdlib(value)
    except TypeError:
        with pytest.raises(TypeError):
            jsonio.same_dumps(value)
        return
    assert jsonio.same_dumps(value) == expected


def test_a_row_option_with_no_json_form_stops_the_job_naming_its_cell(tmp_path, sim):
    from tests.helpers import cli

    pq.write_table(pa.table({"prompt": ["a", "b"], "when": [None, datetime.date(2020, 1, 1)]}), tmp_path / "in.parquet")
    result = cli("run", "-i", tmp_path / "in.parquet", "-o", tmp_path / "out.parquet", "-m", "m",
                 "--base-url", sim.url, "--option-column", "when")  # fmt: skip
    assert result.exit_code == 2
    assert "row 2, column 'when': request option 'when' must be JSON" in result.stderr and "(not date)" in result.stderr
    assert sim.requests == [] and not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize(
    ("cell", "why"),
    [
        ([{"role": "user", "content": "hi", "sent": datetime.date(2020, 1, 1)}], "(not date)"),
        ('[{"role": "user", "content": "hi", "weight": NaN}]', "must be a finite number"),
    ],
    ids=["struct-with-a-date", "json-with-nan"],
)
def test_a_message_with_no_json_form_stops_the_job_naming_its_cell(tmp_path, sim, cell, why):
    from tests.helpers import cli

    column = pa.array([cell]) if not isinstance(cell, str) else pa.array([cell], pa.string())
    pq.write_table(pa.table({"messages": column}), tmp_path / "in.parquet")
    result = cli("run", "-i", tmp_path / "in.parquet", "-o", tmp_path / "out.parquet", "-m", "m",
                 "--base-url", sim.url, "--messages-column", "messages")  # fmt: skip
    assert result.exit_code == 2, result.stderr
    assert "row 1, column 'messages': message 1 must be" in result.stderr and why in result.stderr
    assert "internal error" not in result.stderr and sim.requests == []
