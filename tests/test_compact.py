"""The compact key index answers as a dict would, folded or not."""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchchat.core.compact import KeyIndex


def key(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()[:32]


odd_keys = st.sampled_from(["a.2", "x" * 32, "A" * 32, key(1).upper(), key(2) + ".checked", "", "0" * 31])
keys = st.one_of(st.integers(0, 60).map(key), odd_keys, st.just("0" * 32), st.just("00" * 15 + "10"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(keys, st.integers(0, 2**40)), max_size=200), st.integers(1, 9))
def test_it_answers_as_a_dict_does(writes, fold_at):
    index, model = KeyIndex(fold_at=fold_at), {}
    for k, value in writes:
        index[k] = value
        model[k] = value
        assert index.get(k) == value
    for k in {*model, *(key(n) for n in range(70)), "a.2", "0" * 32, "00" * 15 + "10"}:
        assert index.get(k) == model.get(k)
        assert (k in index) == (k in model)
    assert len(index) == len(model)


def test_keys_ending_in_zero_bytes_are_told_apart():
    index = KeyIndex(fold_at=1)
    index["00" * 15 + "10"] = 1
    index["10" + "00" * 15] = 2
    index["0" * 32] = 3
    assert (index.get("00" * 15 + "10"), index.get("10" + "00" * 15), index.get("0" * 32)) == (1, 2, 3)
    assert index.get("00" * 14 + "1000") is None and len(index) == 3


@pytest.mark.slow
def test_a_million_keys_take_a_fraction_of_a_dict():
    import tracemalloc

    tracemalloc.start()
    index = KeyIndex()
    for n in range(300_000):
        index[key(n)] = n * 100
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert index.get(key(123_456)) == 12_345_600 and len(index) == 300_000
    assert size < 80 * 300_000  # a dict of these strings: about 170 bytes a key


def test_the_first_row_of_each_key_is_found_by_sorting_as_by_a_set(monkeypatch):
    import random

    import batchchat.core.compact as compact
    from batchchat.core.compact import first_rows

    rng = random.Random(5)
    pool = [bytes.fromhex(key(n)) for n in range(50)] + [bytes(15) + b"\x01", b"\x01" + bytes(15)]
    none = bytes(16)
    data = b"".join(rng.choice([*pool, none]) for _ in range(3000))
    by_set = first_rows(data, none)
    monkeypatch.setattr(compact, "FOLD_AT", 1)  # the sorting way
    by_sort = first_rows(data, none)
    monkeypatch.setattr(compact, "COMPARE_STEP", 7)  # compared in slices
    assert first_rows(data, none) == by_sort == by_set
    expected, seen = bytearray(), {none}
    for row in range(3000):
        chunk = data[16 * row : 16 * row + 16]
        expected.append(chunk not in seen)
        seen.add(chunk)
    assert by_set == expected and by_set.count(1) == len(pool)


def test_percentiles_of_many_measurements_are_those_of_few(monkeypatch):
    import random
    from array import array

    import batchchat.core.compact as compact
    from batchchat.store.stats import percentile

    values = array("d", (random.Random(3).expovariate(2) for _ in range(5001)))
    few = [percentile(compact.ordered(values), q) for q in (50, 95)]
    monkeypatch.setattr(compact, "FOLD_AT", 1)
    many = compact.ordered(values)
    assert type(many) is not list
    assert [percentile(many, q) for q in (50, 95)] == few and all(type(p) is float for p in few)
    assert percentile(compact.ordered(array("d")), 50) is None


def test_numbers_past_four_gigabytes_are_kept_whole():
    index = KeyIndex(fold_at=2)
    index[key(1)] = 5
    index[key(2)] = 6  # folded, in 4 bytes a number
    index[key(3)] = 2**40
    index[key(4)] = 7  # folded again: the arrays widen
    assert [index.get(key(n)) for n in (1, 2, 3, 4)] == [5, 6, 2**40, 7]


def test_runs_past_the_fold_answer_each_row_once_and_resume(monkeypatch, tmp_path, sim):
    """The folded arrays (past FOLD_AT keys) on a real run: the journal's index and the plan's
    first rows. Shared prompts share an answer, each answer lands on its row, and a rerun sends
    only what is new."""
    import batchchat
    import batchchat.core.compact as compact
    from batchchat.simulator import synthetic_reply
    from tests.helpers import read_output, write_csv

    monkeypatch.setattr(compact, "FOLD_AT", 4)
    prompts = [f"question {i % 23}" for i in range(60)]  # 23 distinct, each asked two or three times
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[p] for p in prompts])
    output = tmp_path / "out.parquet"
    batchchat.run(input=source, output=output, model="sim-chat", base_url=sim.url)
    assert sim.stats()["answered"] == 23

    def check(rows, asked):
        assert len(rows) == len(asked)
        for row, prompt in zip(rows, asked, strict=True):
            content, *_ = synthetic_reply({"model": "sim-chat", "messages": [{"role": "user", "content": prompt}]})
            assert row["status"] == "ok" and row["response"] == content

    check(read_output(output), prompts)
    batchchat.run(input=source, output=output, model="sim-chat", base_url=sim.url)
    assert sim.stats()["answered"] == 23  # nothing sent again
    more = [*prompts, *(f"new question {i}" for i in range(9)), "question 3"]
    write_csv(source, ["prompt"], [[p] for p in more])
    batchchat.run(input=source, output=output, model="sim-chat", base_url=sim.url)
    assert sim.stats()["answered"] == 32 and sim.stats()["answered_twice"] == 0  # only the 9 new
    check(read_output(output), more)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(keys, st.integers(0, 2**40)), max_size=120), st.integers(1, 9),
       st.lists(keys, max_size=40), st.lists(st.tuples(keys, st.integers(0, 2**40)), max_size=20))  # fmt: skip
def test_keys_looked_up_at_once_answer_as_a_dict_does_and_after_a_write_too(writes, fold_at, fetched, later):
    """``prefetch`` answers a batch's keys from one search; a key written after it (folded or
    not) must answer its new number, and one never written none."""
    index, model = KeyIndex(fold_at=fold_at), {}
    for k, value in writes:
        index[k] = model[k] = value
    index.prefetch(fetched)
    for k in fetched:
        assert index.get(k) == model.get(k)
    for k, value in later:
        index[k] = model[k] = value
    for k in {*model, *fetched, *(key(n) for n in range(70))}:
        assert index.get(k) == model.get(k) and (k in index) == (k in model)


def test_keys_looked_up_at_once_after_a_fold_of_only_odd_keys():
    index = KeyIndex(fold_at=1)
    index["x" * 32] = 0  # 32 characters, not hexadecimal: kept aside, and the arrays folded empty
    index.prefetch([key(0), "x" * 32])
    assert index.get(key(0)) is None and index.get("x" * 32) == 0


def test_a_prefetched_key_is_found_without_a_search_of_its_own(monkeypatch):
    index = KeyIndex(fold_at=2)
    for n in range(10):
        index[key(n)] = n
    index.prefetch([key(3), key(99)])
    monkeypatch.setattr(KeyIndex, "_find", lambda self, k: pytest.fail(f"searched for {k} one at a time"))
    assert index.get(key(3)) == 3 and index.get(key(99)) is None
