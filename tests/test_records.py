"""The records' faster ``__init__`` (``quick_init``) makes what the dataclass's own makes."""

from dataclasses import FrozenInstanceError, dataclass, field, fields, replace

import pytest

from batchchat.core.records import ChatRequest, ChatResult, RowOutcome, Usage, quick_init


@dataclass(frozen=True, slots=True)
class Plain:
    """The same fields as ``Quick``, with the dataclass's own ``__init__``."""

    a: int
    b: str | None = None
    c: dict[str, int] = field(default_factory=dict)


@quick_init
@dataclass(frozen=True, slots=True)
class Quick:
    a: int
    b: str | None = None
    c: dict[str, int] = field(default_factory=dict)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1,), {}), ((1, "x"), {}), ((1,), {"c": {"k": 2}}), ((), {"a": 3, "b": None}), ((1, "x", {"k": 1}), {})],
)
def test_a_record_made_by_quick_init_is_the_one_the_dataclass_makes(args, kwargs):
    quick, plain = Quick(*args, **kwargs), Plain(*args, **kwargs)
    assert [getattr(quick, f.name) for f in fields(Quick)] == [getattr(plain, f.name) for f in fields(Plain)]
    assert quick == Quick(*args, **kwargs) and quick != Quick(quick.a + 1, quick.b, quick.c)
    assert repr(quick).removeprefix("Quick") == repr(plain).removeprefix("Plain")
    assert replace(quick, b="y") == Quick(quick.a, "y", quick.c)


def test_a_quick_record_stays_frozen_and_refuses_what_the_dataclass_refuses():
    record = Quick(1)
    with pytest.raises(FrozenInstanceError):
        record.a = 2  # type: ignore[misc]
    assert Quick(1).c is not Quick(1).c  # a fresh default from the factory each time
    for bad in (lambda: Quick(), lambda: Quick(1, b="x", e=2), lambda: Quick(1, "x", {}, 4)):
        with pytest.raises(TypeError):
            bad()


def test_quick_init_takes_only_records_it_can_make_alike():
    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True, slots=True)
    class Named:
        a: int = field(kw_only=True)

    for cls in (Checked, Named):
        with pytest.raises(TypeError):
            quick_init(cls)


def test_the_hot_records_are_made_by_quick_init_and_keep_their_defaults():
    for cls in (ChatRequest, Usage, ChatResult, RowOutcome):
        assert [name.removeprefix("_set_") for name in cls.__init__.__code__.co_names if name.startswith("_set_")] == [
            f.name for f in fields(cls)
        ]
    result = ChatResult("text", "stop", Usage(1, 2, 3), "id", "m", 0.5)
    assert (result.ttft_s, result.rate, result.answer, result.problem, result.notes) == (None, None, None, None, ())
    outcome = RowOutcome(0, "k", "ok", 1, "m")
    assert all(getattr(outcome, f.name) is None for f in fields(RowOutcome)[5:])
    assert ChatRequest(0, "k", "m", ()).params == () and Usage() == Usage(None, None, None)
    assert hash(Usage(1, 2, 3)) == hash(Usage(1, 2, 3)) and len({outcome, RowOutcome(0, "k", "ok", 1, "m")}) == 1
