"""The executor seam and the pure per-batch functions: what lets another engine (a provider's
Batch API, Ray Data) answer a job and still give the same output table.

A fake executor answers requests itself, without HTTP, and puts its outcomes in the ledger: the
plan before it and the assembly after it must work exactly as with the live engine.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from batchchat.core.errors import AUTH, FatalAPIError, Interrupted, RequestError
from batchchat.core.keys import request_key
from batchchat.core.records import ChatRequest, ChatResult, InvalidRow, RowOutcome, Usage
from batchchat.execute.base import Ending, Ledger, Work
from batchchat.job.jobfile import load_job
from batchchat.job.spec import Answers, Price, Scoring
from batchchat.plan.answers import Derived, derive_batch
from batchchat.plan.rows import RowSpec, row_requests
from batchchat.runs.frames import frame_result
from batchchat.runs.runfile import arun
from batchchat.store.journal import Journal
from tests.helpers import read_output, write_csv


def fake_answer(request: ChatRequest) -> str:
    return f"fake answer to {request.messages[-1]['content']}"


class FakeExecutor:
    """Answers each request at once with a canned reply; ``stop_after`` answers, it ends with
    ``ending`` (as an interrupted or capped engine would); ``refuse`` fails like a bad key."""

    def __init__(self, stop_after: int | None = None, ending: Ending = Ending.STOPPED, refuse: bool = False) -> None:
        self.stop_after = stop_after
        self.ending = ending
        self.refuse = refuse
        self.seen: list[ChatRequest] = []

    async def execute(self, work: Work, ledger: Ledger) -> Ending:
        if self.refuse:
            raise FatalAPIError("HTTP 401", RequestError(AUTH, "HTTP 401: invalid key", status=401))
        for request in work.requests:
            if self.stop_after is not None and len(self.seen) >= self.stop_after:
                return self.ending
            self.seen.append(request)
            result = ChatResult(fake_answer(request), "stop", Usage(3, 5, 8), f"fake-{len(self.seen)}", request.model, 0.01)
            ledger.counters.add_usage(request.model, result.usage)  # paid: executors count it as it happens
            ledger.finished(RowOutcome.answered(request, result, attempts=1))
            await asyncio.sleep(0)
        return Ending.DONE


PROMPTS = ["alpha", "beta", "alpha", "", "gamma"]  # a repeat, and a row with nothing to send


def job_files(tmp_path: Path) -> tuple[Path, Path]:
    source = write_csv(tmp_path / "in.csv", ["id", "prompt"], [[str(i), p] for i, p in enumerate(PROMPTS)])
    return source, tmp_path / "out.parquet"


def test_plan_and_assembly_work_with_any_executor_that_fills_the_store(tmp_path: Path) -> None:
    source, output = job_files(tmp_path)
    fake = FakeExecutor()
    result = asyncio.run(arun(input=source, output=output, model="m", provider="sim", executor=fake))
    assert [r.messages[-1]["content"] for r in fake.seen] == ["alpha", "beta", "gamma"]  # each distinct request once
    rows = read_output(output)
    assert [r["id"] for r in rows] == ["0", "1", "2", "3", "4"]  # one output row per input row, in order
    assert [r["response"] for r in rows] == ["fake answer to alpha", "fake answer to beta", "fake answer to alpha",
                                             None, "fake answer to gamma"]  # fmt: skip
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "error", "ok"]
    assert rows[3]["error_type"] == "invalid_input"
    assert result.summary.ok == 4 and result.summary.answered == 3 and result.summary.prompt_tokens == 9
    journaled = [json.loads(line) for line in (tmp_path / "out.parquet.journal").read_text().splitlines()]
    assert sorted(r["response"] for r in journaled if "response" in r) == [
        "fake answer to alpha", "fake answer to beta", "fake answer to gamma"]  # fmt: skip

    again = asyncio.run(arun(input=source, output=output, model="m", provider="sim"))  # the live engine
    assert again.summary.requests == 0  # the store the fake filled is the one resume reads
    assert [r["paid"] for r in rows] == ["this_run", "this_run", "shared", None, "this_run"]
    reread = read_output(output)
    assert [r.pop("paid") for r in reread] == ["earlier_run", "earlier_run", "shared", None, "earlier_run"]
    assert reread == [{k: v for k, v in r.items() if k != "paid"} for r in rows]


def test_an_executor_that_stops_leaves_the_rest_pending_for_the_next_run(tmp_path: Path) -> None:
    source, output = job_files(tmp_path)
    with pytest.raises(Interrupted) as stopped:
        asyncio.run(arun(input=source, output=output, model="m", provider="sim", executor=FakeExecutor(stop_after=1)))
    assert [r["status"] for r in read_output(output)] == ["ok", "pending", "ok", "error", "pending"]
    assert stopped.value.result.summary.pending == 2
    rest = FakeExecutor()
    asyncio.run(arun(input=source, output=output, model="m", provider="sim", executor=rest))
    assert [r.messages[-1]["content"] for r in rest.seen] == ["beta", "gamma"]  # nothing paid twice
    assert [r["status"] for r in read_output(output)] == ["ok", "ok", "ok", "error", "ok"]


def test_an_executor_stopped_by_the_budget_says_so_in_the_summary(tmp_path: Path) -> None:
    source, output = job_files(tmp_path)
    capped = FakeExecutor(stop_after=2, ending=Ending.BUDGET)
    result = asyncio.run(arun(input=source, output=output, model="m", provider="sim", executor=capped))
    assert result.summary.budget_stopped and result.summary.pending == 1 and result.exit_code == 1


def test_an_executor_refused_by_the_endpoint_stops_the_run_with_what_to_do(tmp_path: Path) -> None:
    source, output = job_files(tmp_path)
    with pytest.raises(FatalAPIError, match=r"stopped: the built-in simulator wants an API key, and none was sent \(HTTP 401: invalid key\)"):
        asyncio.run(arun(input=source, output=output, model="m", provider="sim", executor=FakeExecutor(refuse=True)))
    assert not output.exists()  # no row finished, so nothing was written


def test_a_dataframe_run_takes_any_executor_too() -> None:
    frame = pd.DataFrame({"prompt": PROMPTS}, index=[10, 11, 12, 13, 14])
    fake = FakeExecutor()
    result = asyncio.run(frame_result(frame, model="m", provider="sim", executor=fake))
    assert result.frame is not None
    assert list(result.frame.index) == [10, 11, 12, 13, 14]
    assert list(result.frame["response"])[:3] == ["fake answer to alpha", "fake answer to beta", "fake answer to alpha"]
    assert len(fake.seen) == 3


def test_the_ledger_keeps_every_outcome_in_the_store_and_counts_only_finished_ones(tmp_path: Path) -> None:
    from batchchat.output.progress import Silent
    from batchchat.plan.answers import AnswerCheck
    from batchchat.store.journal import Scope
    from batchchat.store.stats import Stats

    journal = Journal(tmp_path / "j.journal", Scope("sim"))
    stats = Stats(2)
    ledger = Ledger(journal, stats, Silent(), AnswerCheck(Answers(labels=("yes", "no"))))
    request = ChatRequest(0, request_key("m", ({"role": "user", "content": "q"},), ()), "m",
                          ({"role": "user", "content": "q"},))  # fmt: skip
    answer = RowOutcome.answered(request, ChatResult("maybe", "stop", Usage(1, 1, 2), "r", "m", 0.1), 1)
    journal.begin()
    ledger.keep(answer)  # an answer paid for before its request ended
    assert request.key in journal and stats.done == 0
    assert ledger.recall(request.key) is not None
    ledger.finished(answer)
    assert stats.done == 1
    journal.close()


# --- the pure per-batch functions ------------------------------------------------------------


def test_row_requests_on_shards_give_what_the_whole_batch_gives() -> None:
    job = load_job(model=["a", "b"], provider="sim", template="{q}?", system="Be brief.",
                   variants=[{"name": "cold", "temperature": 0}, {"name": "warm", "temperature": 0.7}],
                   option_columns=["max_tokens"])  # fmt: skip
    batch = pa.RecordBatch.from_pylist([{"q": f"question {i}", "max_tokens": str(10 + i)} for i in range(7)]
                                       + [{"q": "", "max_tokens": "5"}])  # fmt: skip
    spec = RowSpec.of(job, batch.schema.names)
    whole = row_requests(spec, batch, 0, "in.csv")
    assert [item.row for item in whole] == list(range(8 * 4))  # input_row * fanout + slot
    shards = [item for start in (0, 3, 5) for item in
              row_requests(spec, batch.slice(start, {0: 3, 3: 2, 5: 3}[start]), start, "in.csv")]  # fmt: skip
    assert shards == whole
    first = whole[0]
    assert isinstance(first, ChatRequest) and first.model == "a"
    assert first.messages == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "question 0?"})
    assert dict(first.params) == {"max_tokens": 10, "temperature": 0}
    assert first.key == request_key("a", first.messages, first.params)
    assert [(r.model, dict(r.params)["temperature"]) for r in whole[4:8] if isinstance(r, ChatRequest)] == [
        ("a", 0), ("a", 0.7), ("b", 0), ("b", 0.7)]  # fmt: skip
    assert [item.row for item in whole if isinstance(item, InvalidRow)] == []  # "?" is something to send
    empty = row_requests(RowSpec.of(load_job(model="m", provider="sim"), ["prompt"]),
                         pa.RecordBatch.from_pylist([{"prompt": " "}]), 5, "in.csv")  # fmt: skip
    assert empty == [InvalidRow(5, "m", "empty prompt: the row has no text to send")]


def test_derive_batch_on_shards_gives_what_the_whole_batch_gives() -> None:
    derived = Derived(Answers(labels=("positive", "negative")), Scoring("expected", "exact"), variants=True,
                      transcripts=False, prices={"m": Price(1.0, 2.0)})  # fmt: skip
    slots = [("m", "v1"), ("m", "v2")]
    batch = pa.RecordBatch.from_pylist([{"expected": "positive"}, {"expected": "negative"}, {"expected": None}])
    answers = ["Positive.", "negative", "NEGATIVE!", "positive", "neutral", None]
    outcomes = [RowOutcome(i, f"k{i}", "ok" if answer else "pending", 1, "m", response=answer, prompt_tokens=100,
                           completion_tokens=10) for i, answer in enumerate(answers)]  # fmt: skip
    paid = ["this_run", "earlier_run", "this_run", "shared", None, None]
    whole = derive_batch(derived, batch, outcomes, slots, paid)
    assert whole["label"] == ["positive", "negative", "negative", "positive", None, None]
    assert whole["score"] == [1.0, 0.0, 1.0, 0.0, None, None]
    assert whole["variant"] == ["v1", "v2"] * 3
    # a row's cost is what its answer took, whoever paid: its ``paid`` cell says who did
    assert whole["cost"][0] == whole["cost"][3] == pytest.approx((100 * 1.0 + 10 * 2.0) / 1e6)
    assert whole["paid"] == paid
    halves = [derive_batch(derived, batch.slice(i, 1), outcomes[2 * i : 2 * i + 2], slots, paid[2 * i : 2 * i + 2])
              for i in range(3)]  # fmt: skip
    assert {name: [cell for half in halves for cell in half[name]] for name in whole} == whole


def test_the_ledger_keeps_no_answer_that_fails_the_checks_as_ok_whatever_engine_got_it(tmp_path: Path) -> None:
    source, output = job_files(tmp_path)
    asyncio.run(arun(input=source, output=output, model="m", provider="sim", labels=["alpha", "beta"],
                     executor=FakeExecutor()))  # fmt: skip
    rows = read_output(output)
    assert [r["status"] for r in rows] == ["error"] * 5  # "fake answer to alpha" names no label
    assert rows[0]["error_type"] == "invalid_label" and rows[0]["response"] == "fake answer to alpha"
