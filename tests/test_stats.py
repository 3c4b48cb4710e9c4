import pytest

from batchchat.core.records import ERROR, OK, RowOutcome, Usage
from batchchat.store.stats import RowTally, Stats, percentile


def test_percentile_interpolates_between_ranks():
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None


def test_the_summary_counts_this_runs_requests_and_the_outputs_rows():
    stats = Stats(total=3)
    stats.add(
        RowOutcome(0, "k0", OK, 1, "m", response="a", prompt_tokens=10, completion_tokens=5, latency_s=0.2, ttft_s=0.1)
    )
    stats.add(
        RowOutcome(1, "k1", OK, 2, "m", response="b", prompt_tokens=7, completion_tokens=3, latency_s=0.4, ttft_s=0.3)
    )
    stats.add(RowOutcome(2, "k2", ERROR, 6, "m", error_type="server_error", error="HTTP 500"))
    rows = RowTally()
    for status, error_type in [("ok", None)] * 4 + [
        ("error", "server_error"),
        ("error", "invalid_input"),
        ("pending", None),
    ]:
        rows.add(status, error_type)
    stats.counters.add_usage("m", Usage(10, 5))
    stats.counters.add_usage("m", Usage(7, 3))
    s = stats.summary(wall_s=2.0, rows=rows)
    assert (s.rows, s.ok, s.errors, s.pending) == (7, 4, 2, 1)
    assert dict(s.error_types) == {"server_error": 1, "invalid_input": 1}
    assert s.answered == 3 and s.requests_per_s == 1.5
    assert (s.prompt_tokens, s.completion_tokens, s.total_tokens) == (17, 8, 25)
    assert s.latency_p50_s == pytest.approx(0.3) and s.ttft_p50_s == pytest.approx(0.2)


def test_this_runs_tokens_and_cost_count_every_answer_received_by_model():
    from batchchat.job.spec import Price

    stats = Stats(total=2, prices={"a": Price(1.0, 2.0), "b": Price(10.0, 20.0)})
    stats.counters.add_usage("a", Usage(1_000, 500))
    stats.counters.add_usage("a", Usage(1_000, 500))  # a re-ask: paid again
    stats.counters.add_usage("b", Usage(100, None))
    assert (stats.prompt_tokens, stats.completion_tokens) == (2_100, 1_000)
    assert stats.cost == pytest.approx((2_000 * 1 + 1_000 * 2 + 100 * 10) / 1e6)
    stats.counters.add_usage("c", Usage(1, 1))  # a model without a price: the total is unknown
    assert stats.cost is None
    assert Stats(total=1).cost is None


def test_a_model_without_a_price_has_no_cost_even_while_all_its_rows_are_pending() -> None:
    rows = RowTally()
    rows.add_row("pending", None, "m", None, cost=None)
    rows.add_row("pending", None, "priced", None, cost=0.0)
    costs = {g.model: g.cost for g in rows.group_summaries()}
    assert costs == {"m": None, "priced": 0.0}
    assert rows.cost is not None  # one model is priced, the other has no counted row
