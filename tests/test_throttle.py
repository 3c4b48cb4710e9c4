"""Limits, cool-down, AIMD and header pacing, on a virtual clock (no real waiting)."""

import asyncio
import random

import pytest

from batchchat.core.records import ChatRequest
from batchchat.pacing.congestion import BETA, DEEPEST_CUT, Congestion
from batchchat.pacing.throttle import Permit, RateChange, Throttle, TokenEstimator
from batchchat.providers.openai import rate_of
from batchchat.store.stats import Counters
from tests.fake_api import FakeAPI, drive, error, requests, timed_out, truncated
from tests.virtual_time import run_virtual


def run(api, items, throttle, max_attempts=10):
    async def go():
        counters = Counters()
        outcomes = await drive(api, items, throttle, max_attempts, counters)
        return outcomes, counters, asyncio.get_running_loop().time()

    return run_virtual(go())


def within_bucket(times, costs, burst, rate):
    """Every stretch of departures fits a bucket of ``burst`` refilled at ``rate``."""
    for i in range(len(times)):
        total = 0.0
        for j in range(i, len(times)):
            total += costs[j]
            if total > burst + rate * (times[j] - times[i]) + 1e-6:
                return False
    return True


def test_rpm_is_never_exceeded():
    api = FakeAPI(latency=0.01)
    outcomes, _, elapsed = run(api, requests(200), Throttle(50, rpm=600))
    assert len(outcomes) == 200
    assert within_bucket(api.departures, [1] * 200, burst=5, rate=10)
    assert elapsed == pytest.approx(19.5, abs=0.2)  # five at once, then ten a second


def test_tpm_is_never_exceeded():
    api = FakeAPI(latency=0.01, tokens=101)  # answers cost what was estimated: q{i}/4 + max_tokens
    throttle = Throttle(50, tpm=6000)
    outcomes, _, elapsed = run(api, requests(120, max_tokens=100), throttle)
    assert len(outcomes) == 120
    assert within_bucket(api.departures, [101] * 120, burst=6000, rate=100)
    assert elapsed > (120 * 101 - 6000) / 100 - 1


def test_a_request_costing_more_than_the_whole_budget_goes_alone_rather_than_never():
    small = requests(6, max_tokens=10)
    big = [ChatRequest(row=100 + i, key=f"b{i}", model="m", messages=({"role": "user", "content": "x"},),
                       params=(("max_tokens", 5000),)) for i in range(2)]  # fmt: skip
    api = FakeAPI(latency=0.01, tokens=11)
    outcomes, _, _ = run(api, [*small[:3], big[0], *small[3:], big[1]], Throttle(4, tpm=1000))
    assert len(outcomes) == 8 and all(o.status == "ok" for o in outcomes.values())
    order = list(zip(api.departures, api.departed_rows, strict=True))
    for when, row in order:
        if row >= 100:  # a big one: only once everything sent before it has drained from the budget
            spent_before = sum(11 if r < 100 else 1000 for t, r in order if t < when)
            assert spent_before <= 1000 / 60 * when + 1e-6


def test_token_estimates_are_corrected_by_the_usage_answers_report():
    estimator = TokenEstimator(default_completion_tokens=256)
    request = requests(1, max_tokens=1000)[0]
    assert estimator.raw(request) == 1 + 1000  # "q0" is one token of prompt, plus max_tokens
    assert estimator.raw(requests(1)[0]) == 1 + 256  # no max_tokens: the default
    for _ in range(10):
        estimator.observe(estimator.raw(request), 100)
    assert estimator.ratio == pytest.approx(100 / 1001)
    assert estimator.mean_tokens == 100


def test_a_tpm_job_speeds_up_once_answers_prove_shorter_than_max_tokens():
    api = FakeAPI(latency=0.01, tokens=10)  # max_tokens 1000 asked, 10 tokens used
    _, _, elapsed = run(api, requests(300, max_tokens=1000), Throttle(20, tpm=60_000))
    assert elapsed < 300 * 1001 / 1000 / 5  # five times faster than trusting max_tokens


def test_429s_in_company_hold_every_dispatch_until_the_hint_has_passed():
    burst = range(8, 16)  # two rounds of four refused, after two answered: plainly over a limit
    api = FakeAPI(latency=0.1, script=lambda request, attempt: error(429, {"retry-after": "2"})
                  if request.row in burst and attempt == 1 else None)  # fmt: skip
    throttle = Throttle(4)
    outcomes, counters, _ = run(api, requests(40), throttle)
    held_from, held_until = throttle.resume_at - 2.0, throttle.resume_at  # the hint of the 429 found ours
    assert held_from <= max(api.departures[:16])  # found within the burst
    assert not [t for t in api.departures if held_from < t < held_until - 1e-6]  # nothing went out meanwhile ...
    assert min(t for t in api.departures if t >= held_until - 1e-6) == pytest.approx(held_until, abs=1e-3)  # ... then at once
    assert all(o.status == "ok" for o in outcomes.values()) and counters.rate_limited == len(burst)


def test_a_lone_429_among_answers_delays_only_its_own_request():
    api = FakeAPI(latency=0.1, script=lambda request, attempt: error(429, {"retry-after": "2"})
                  if request.row == 20 and attempt == 1 else None)  # fmt: skip
    throttle = Throttle(4)
    outcomes, counters, _ = run(api, requests(80), throttle)
    assert counters.rate_limited == 1
    rejected_at = next(t for t, row in zip(api.departures, api.departed_rows, strict=True) if row == 20)
    assert [t for t in api.departures if rejected_at < t < rejected_at + 2.0]  # the others went on
    retried_at = [t for t, row in zip(api.departures, api.departed_rows, strict=True) if row == 20][1]
    # not the whole hint: that speaks of the provider's capacity, and would cost the run's tail
    assert 0.05 <= retried_at - rejected_at <= 0.1 + 1e-3
    assert throttle.adaptive_rate is None and all(o.status == "ok" for o in outcomes.values())


@pytest.mark.parametrize(
    ("server_rate", "rows", "time_factor", "share_429", "rate_factor"),
    # Far below, with no headers, a rate a quarter over the limit answers a fifth 429: as many as
    # a provider may answer whatever the rate, so it is not cut for them until a cut shows them
    # following the rate. The job still goes at the limit.
    [(20, 1000, 1.15, 0.05, 1.5), (2, 200, 1.2, 0.25, 1.6)],
    ids=["near-the-concurrency", "far-below-the-concurrency"],
)
def test_aimd_converges_to_the_servers_rate_without_headers(server_rate, rows, time_factor, share_429, rate_factor):
    api = FakeAPI(latency=0.05, rate=server_rate, limit_headers=False)
    throttle = Throttle(32)
    outcomes, counters, elapsed = run(api, requests(rows), throttle)
    assert all(o.status == "ok" for o in outcomes.values())
    assert elapsed <= time_factor * rows / server_rate
    assert counters.rate_limited <= share_429 * counters.requests
    assert server_rate * 0.6 <= throttle.adaptive_rate <= server_rate * rate_factor


def test_one_burst_of_429s_is_one_cut_not_one_per_response():
    async def go():
        throttle = Throttle(32)
        loop = asyncio.get_running_loop()
        for _ in range(20):  # twenty requests sent together; twelve refused
            throttle._recent.append(loop.time())
            throttle._congestion.departed(loop.time())
        await asyncio.sleep(0.01)
        for _ in range(12):
            throttle.failed(Permit(dispatched_at=0.0, raw_cost=1), error(429))
        after_burst, cuts = throttle.adaptive_rate, throttle.changed
        await asyncio.sleep(3)
        sent_at = loop.time()
        for _ in range(20):  # a new burst, of requests sent after the cut: again twelve of twenty
            throttle._recent.append(sent_at)
            throttle._congestion.departed(sent_at)
        for _ in range(12):
            throttle.failed(Permit(dispatched_at=sent_at, raw_cost=1), error(429))
        return after_burst, cuts, throttle.adaptive_rate, throttle.changed

    after_burst, cuts, after_second, all_cuts = run_virtual(go())
    # the cut goes to the share let through when it was found ours (less a margin), a quarter at most
    assert 20 * DEEPEST_CUT <= after_burst <= 20 * BETA and cuts == 1
    assert after_second < after_burst and all_cuts == 2


def test_together_limit_headers_set_the_pace():
    api = FakeAPI(latency=0.05, rate=20, limit_headers=True)
    throttle = Throttle(32)
    outcomes, counters, elapsed = run(api, requests(300), throttle)
    assert len(outcomes) == 300 and throttle.request_ceiling == 20 and throttle.rate == 20
    assert elapsed <= 1.1 * 300 / 20
    assert counters.rate_limited <= 0.01 * counters.requests


def test_token_limit_headers_pace_by_the_mean_answer_size():
    api = FakeAPI(latency=0.01, tokens=100, extra_headers={"x-tokenlimit-limit": "60000"})
    throttle = Throttle(16)
    run(api, requests(50), throttle)
    assert throttle.token_ceiling == 1000 and throttle.rate == pytest.approx(10)
    gaps = [b - a for a, b in zip(api.departures[16:], api.departures[17:], strict=False)]
    assert min(gaps) >= 0.1 - 1e-6


def test_no_requests_left_holds_until_the_stated_reset():
    async def go():
        throttle = Throttle(4)
        now = asyncio.get_running_loop().time()
        throttle._learn(rate_of({"x-ratelimit-limit-requests": "6000", "x-ratelimit-remaining-requests": "0",
                                 "x-ratelimit-reset-requests": "2s"}))  # fmt: skip
        return throttle.resume_at - now, throttle.request_ceiling

    hold, ceiling = run_virtual(go())
    assert hold == pytest.approx(2.0) and ceiling == 100


def test_with_rpm_given_a_429_still_backs_off():
    api = FakeAPI(latency=0.05, rate=10)  # the user's --rpm 1200 is twice what the server allows
    throttle = Throttle(32, rpm=1200)
    outcomes, counters, elapsed = run(api, requests(300), throttle)
    assert all(o.status == "ok" for o in outcomes.values())
    assert throttle.rate < 20
    assert counters.rate_limited <= 0.12 * counters.requests  # the first burst, judged before any background is known
    assert elapsed <= 1.3 * 300 / 10


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-ratelimit-limit": "600", "x-ratelimit-remaining": "12", "x-ratelimit-reset": "1",
          "x-tokenlimit-limit": "180000", "x-tokenlimit-remaining": "900"},
         dict(request_limit=600, requests_remaining=12, requests_reset_s=1, token_limit=180000, tokens_remaining=900)),
        ({"x-ratelimit-limit": "600", "x-ratelimit-limit-dynamic": "300", "x-tokenlimit-limit-dynamic": "9000"},
         dict(request_limit=300, token_limit=9000)),
        ({"x-ratelimit-limit-requests": "5000", "x-ratelimit-remaining-requests": "4999",
          "x-ratelimit-reset-requests": "12ms", "x-ratelimit-limit-tokens": "160000",
          "x-ratelimit-remaining-tokens": "159976", "x-ratelimit-reset-tokens": "6m0s"},
         dict(request_limit=5000, requests_remaining=4999, requests_reset_s=0.012, token_limit=160000,
              tokens_remaining=159976, tokens_reset_s=360)),
        ({"x-ratelimit-limit": "lots"}, {}),
    ],
    ids=["together", "together-dynamic", "openai", "garbage"],
)  # fmt: skip
def test_rate_headers_in_both_dialects(headers, expected):
    info = rate_of(headers)
    for name in ("request_limit", "requests_remaining", "requests_reset_s", "token_limit", "tokens_remaining",
                 "tokens_reset_s"):  # fmt: skip
        value = getattr(info, name)
        assert value == (pytest.approx(expected[name]) if name in expected else None), name


def sporadic(share, seed=1, status=429):
    """A provider that answers ``share`` of requests 429 (or 503) whatever the rate (capacity bursts)."""

    def script(request, attempt):
        chance = random.Random(f"{seed}:{request.row}:{attempt}").random()
        return error(status, {"retry-after": "1"}) if chance < share else None

    return script


def clean_time(rows: int) -> float:
    return run(FakeAPI(latency=0.2), requests(rows), Throttle(16))[2]


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize(("share", "rows", "slower_by", "seeds"),
                         [(0.05, 200, 1.15, 8), (0.15, 200, 1.3, 8), (0.05, 2000, 1.15, 3), (0.15, 2000, 1.3, 3)])  # fmt: skip
def test_refusals_our_rate_does_not_cause_cost_only_their_own_retries(status, share, rows, slower_by, seeds, monkeypatch):
    """429s (or 503s) a provider sends whatever the rate are judged by their share of the
    requests sent, which does not fall when the rate does: the rate is not cut for them (or a
    cut is undone at once), and each waits a short backoff rather than its hint. Over any seed."""
    from batchchat.pacing import retry

    clean_s = clean_time(rows)
    for seed in range(seeds):
        monkeypatch.setattr(retry, "_JITTER", random.Random(seed))
        throttle = Throttle(16)
        outcomes, counters, elapsed = run(FakeAPI(latency=0.2, script=sporadic(share, seed, status)), requests(rows),
                                          throttle)  # fmt: skip
        assert all(o.status == "ok" for o in outcomes.values())
        assert counters.retries > 0.5 * share * rows
        assert elapsed <= slower_by * clean_s, (seed, elapsed, clean_s, throttle.changes)


def test_a_quarter_refused_whatever_the_rate_never_collapses_the_run(monkeypatch):
    from batchchat.pacing import retry

    monkeypatch.setattr(retry, "_JITTER", random.Random(0))
    clean_s = clean_time(1000)
    throttle = Throttle(16)
    outcomes, counters, elapsed = run(FakeAPI(latency=0.2, script=sporadic(0.25)), requests(1000), throttle)
    assert all(o.status == "ok" for o in outcomes.values())
    assert counters.rate_limited > 0.8 * 0.25 * 1000
    assert elapsed <= 2 * clean_s
    # no cut was kept below the rate the run went at: the 429s did not track the rate
    assert throttle.rate is None or throttle.rate >= 0.9 * 1000 / clean_s


def test_a_rise_of_503s_that_follows_the_rate_slows_it_without_a_storm():
    """A provider short of capacity answers 503 to what is over its rate, with no limit said."""
    api = FakeAPI(latency=0.05, rate=20, over_status=503)
    throttle = Throttle(32)
    outcomes, _counters, elapsed = run(api, requests(900), throttle)
    assert all(o.status == "ok" for o in outcomes.values())
    assert elapsed <= 1.15 * 900 / 20
    assert len(api.rejected) <= 0.08 * len(api.departures)  # not retried into a storm
    assert throttle.rate is not None and throttle.rate <= 1.5 * 20
    assert throttle.changes and "answered 503" in throttle.changes[0].why


def test_a_limit_that_falls_is_followed_within_a_few_429s():
    api = FakeAPI(latency=0.05, rate=20, rate_later=(15.0, 10.0))  # no headers: only 429s say it
    throttle = Throttle(32)
    outcomes, _, _ = run(api, requests(900), throttle)
    assert all(o.status == "ok" for o in outcomes.values())
    sent = [t for t in api.departures if 20 <= t < 40]
    refused = [t for t in api.rejected if 20 <= t < 40]
    assert (len(sent) - len(refused)) / 20 <= 11  # followed within five seconds ...
    assert len([t for t in api.rejected if 15 <= t < 20]) <= 30  # ... after a few 429s
    assert throttle.rate is not None and throttle.rate <= 1.5 * 10


@pytest.mark.parametrize("headers", [True, False], ids=["announced", "unannounced"])
def test_a_limit_that_rises_is_found_within_20_s(headers):
    api = FakeAPI(latency=0.05, rate=10, limit_headers=headers, rate_later=(15.0, 20.0))
    throttle = Throttle(32)
    outcomes, _, _ = run(api, requests(900), throttle)
    assert all(o.status == "ok" for o in outcomes.values())
    assert len([t for t in api.departures if 35 <= t < 40]) / 5 >= 17


def test_a_server_that_serves_one_at_a_time_is_sent_one_at_a_time():
    """llama.cpp's server cuts the stream in flight when the next request arrives."""
    api = FakeAPI(latency=0.5, one_at_a_time=True)
    throttle = Throttle(4)
    outcomes, counters, elapsed = run(api, requests(60), throttle, max_attempts=4)
    assert [o.status for o in outcomes.values()].count("ok") == 60
    assert throttle.crowding.lowest == 1  # (a slot may open again near the end, to be tried)
    assert api.cut <= 8  # a handful before the slots came down, not one per row
    assert counters.retries == api.cut
    assert elapsed < 60 * 0.5 + 10
    assert counters.crowded is not None
    assert counters.crowded.startswith("the server cut ") and "at once; ran at 1" in counters.crowded


def test_a_crowded_server_gets_its_concurrency_back_in_a_few_tries_once_it_recovers():
    api = FakeAPI(latency=0.2)
    api.script = lambda request, attempt: (
        truncated() if asyncio.get_running_loop().time() < 5 and api.in_flight > 2 else None
    )
    throttle = Throttle(8)
    seen = []

    async def go():
        async def watch():
            while True:
                seen.append((asyncio.get_running_loop().time(), throttle.crowding.limit))
                await asyncio.sleep(1)

        watcher = asyncio.create_task(watch())
        outcomes = await drive(api, requests(3000), throttle, 10, counters)
        watcher.cancel()
        return outcomes

    counters = Counters()
    outcomes = run_virtual(go())
    assert all(o.status == "ok" for o in outcomes.values())
    lowest = min(limit for _, limit in seen)
    assert lowest <= 2
    cut_at = next(at for at, limit in seen if limit == lowest)
    assert cut_at < 5
    assert all(limit <= 2 for at, limit in seen if cut_at <= at < 5)  # nothing more while crowded ...
    # ... then one more after a clean stretch and 30 s; once that one serves, what failed
    # before is old news, and the middle up to every slot is tried after each clean window ...
    assert [limit for at, limit in seen if at < cut_at + 29][-1] <= 3
    assert [limit for at, limit in seen if at < cut_at + 40][-1] >= 6
    assert seen[-1][1] == 8  # ... and every slot in the end
    assert counters.crowded == throttle.crowded and f"ran at {lowest} (now 8)" in counters.crowded


def test_a_stream_cut_now_and_then_does_not_lower_concurrency():
    def script(request, attempt):
        chance = random.Random(f"{request.row}:{attempt}").random()
        return truncated() if chance < 0.02 else None

    throttle = Throttle(16)
    outcomes, counters, _ = run(FakeAPI(latency=0.2, script=script), requests(2000), throttle)
    assert all(o.status == "ok" for o in outcomes.values())
    assert counters.retries > 20
    # halved at the first, which is how a crowded local server is told: undone once more came
    # at a share no crowding explains
    assert throttle.crowding.limit == 16 and (counters.crowded is None or "so 16 went on" in counters.crowded)


@pytest.mark.parametrize("kind", ["timeout", "503", "529"])
def test_timeouts_and_503s_in_company_lower_concurrency_too(kind):
    from batchchat.providers import dialect

    overloaded = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'

    def script(request, attempt):
        if api.in_flight <= 2:
            return None
        if kind == "529":  # Anthropic's "overloaded", said as it says it
            return dialect("anthropic").error(529, overloaded, "application/json", None)
        return timed_out() if kind == "timeout" else error(503)

    api = FakeAPI(latency=0.2, script=script)
    throttle = Throttle(8)
    outcomes, counters, _ = run(api, requests(200), throttle)
    assert all(o.status == "ok" for o in outcomes.values())
    assert throttle.crowding.lowest <= 2
    assert counters.crowded is not None
    assert ("timed out on" if kind == "timeout" else f"answered {kind} to") in counters.crowded


def test_a_lone_request_that_times_out_does_not_lower_concurrency():
    api = FakeAPI(latency=0.2, script=lambda request, attempt: timed_out() if attempt == 1 else None)
    throttle = Throttle(4)
    outcomes, _, _ = run(api, requests(1), throttle)
    assert outcomes[0].status == "ok" and throttle.crowding.limit == 4


@pytest.mark.parametrize("share", [0.05, 0.2])
def test_a_provider_answering_quick_503s_now_and_then_keeps_its_concurrency(share):
    """Its 503s come back at once and its answers after a second: early on, nearly all that came
    back failed, but a fifth of what was sent did."""

    def script(request, attempt):
        return error(503) if random.Random(f"{request.row}:{attempt}").random() < share else None

    throttle = Throttle(64)
    outcomes, counters, _ = run(FakeAPI(latency=1.0, script=script), requests(3000), throttle)
    assert all(o.status == "ok" for o in outcomes.values())
    assert counters.retries > share * 3000 * 0.8
    assert throttle.crowding.lowest == 64 and counters.crowded is None


@pytest.mark.parametrize(("limited", "ours"), [(7, False), (8, False), (12, True), (20, True)])
def test_over_a_high_background_a_429_is_ours_only_well_above_it_by_chance(limited, ours):
    """A quarter of requests answered 429 whatever the rate, over the half minute before: seven
    or eight of the last twenty is chance (one window in five, one in ten), twelve is not."""
    congestion = Congestion()
    for i in range(400):  # the background: every fourth request refused, none of them ours
        congestion.departed(i * 0.04)
        if i % 4 == 0:
            congestion.limited(i * 0.04)
    for i in range(20):
        congestion.departed(20.0 + i * 0.01)
        if i < limited:
            congestion.limited(20.0 + i * 0.01)
    assert congestion.background(20.0) == pytest.approx(0.25, abs=0.01)
    assert congestion.ours(20.2) is ours


@pytest.mark.parametrize("concurrency", [1, 2, 8])
def test_a_small_limit_without_headers_or_hints_loses_no_row(concurrency, monkeypatch):
    """One request every five seconds, and 429s that say nothing: the first ones must slow
    everyone at once, or the first rows use up their attempts backing off alone."""
    from batchchat.pacing import retry

    for seed in range(8):
        monkeypatch.setattr(retry, "_JITTER", random.Random(seed))
        api = FakeAPI(latency=0.05, rate=0.2, burst=1, limit_headers=False, retry_after=None, reset_header=False)
        outcomes, _, _ = run(api, requests(10), Throttle(concurrency), max_attempts=6)  # the CLI's default
        assert all(o.status == "ok" for o in outcomes.values()), (seed, [o.error for o in outcomes.values()])


def test_eight_rows_on_a_one_slot_server_cost_at_most_three_cut_streams():
    """The first stream cut short halves the slots at once; the cuts of the requests sent before
    it bring them down to what the server served."""
    api = FakeAPI(latency=0.5, one_at_a_time=True)
    throttle = Throttle(4)
    outcomes, counters, _ = run(api, requests(8), throttle, max_attempts=4)
    assert [o.status for o in outcomes.values()] == ["ok"] * 8
    assert counters.requests <= 11 and throttle.crowding.limit == 1


@pytest.mark.parametrize("slots", [2, 4, 6])
def test_a_server_with_n_slots_settles_at_n_and_goes_nearly_as_fast_as_told_n(slots):
    told = run(FakeAPI(latency=0.3, slots=slots), requests(1000), Throttle(slots))[2]
    api = FakeAPI(latency=0.3, slots=slots)
    throttle = Throttle(16)
    outcomes, counters, elapsed = run(api, requests(1000), throttle)
    assert all(o.status == "ok" for o in outcomes.values())
    assert throttle.crowding.limit == slots
    assert elapsed <= 1.1 * told
    assert api.cut <= 20
    assert counters.crowded is not None
    assert counters.crowded.endswith((f"(now {slots})", f"ran at {slots}")), counters.crowded


def test_a_storm_of_changes_is_told_as_the_first_few_and_the_latest():
    async def go():
        throttle = Throttle(8)
        for i in range(300):
            throttle._changed(RateChange(1_796_000_000.0 + i, 10.0 + i, 9.0 + i, f"reason {i}"))
        return throttle

    throttle = run_virtual(go())
    assert throttle.changed == 300 and len(throttle.changes) <= 5
    told = throttle.paced
    assert told is not None and "reason 0" in told and "reason 3" in told and "reason 4;" not in told
    assert "296 more, the latest at " in told and told.endswith("reason 299; allowed no bound but concurrency at the end")
    assert throttle.last_cut is not None and throttle.last_cut.endswith("reason 299")
