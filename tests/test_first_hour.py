"""The first hour with batchchat: cost, labels and usage in the summary; a notebook user's
run_frame; grouped help and plain wording."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from batchchat.core.words import dollars as money
from batchchat.simulator import BackgroundSimulator

from .helpers import cli, read_output, write_csv
from .hostile_server import HostileServer

PRICE = {"sim-chat": (1000.0, 2000.0)}  # dollars per million input and output tokens


def cost_of(row: dict[str, Any], price: tuple[float, float]) -> float:
    return (int(row["prompt_tokens"]) * price[0] + int(row["completion_tokens"]) * price[1]) / 1e6


def test_each_row_has_its_cost_and_the_summary_totals_it(tmp_path: Path, sim: BackgroundSimulator) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"], ["b"], ["a"]])  # the third shares the first's answer
    output = tmp_path / "out.parquet"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url, "--price", "sim-chat=1000,2000")
    result = cli("run", *common)
    assert result.exit_code == 0, result.stderr
    rows = read_output(output)
    assert list(rows[0])[-2:] == ["cost", "paid"]
    assert rows[0]["cost"] == pytest.approx(cost_of(rows[0], PRICE["sim-chat"]))
    assert rows[1]["cost"] == pytest.approx(cost_of(rows[1], PRICE["sim-chat"]))
    assert rows[2]["cost"] == rows[0]["cost"]  # what its answer took, as its tokens say
    assert [r["paid"] for r in rows] == ["this_run", "this_run", "shared"]  # paid once, by the identical row
    spent = sum(r["cost"] for r in rows if r["paid"] != "shared")
    assert f"; cost {money(spent)}" in result.stderr
    again = cli("run", *common)
    assert again.exit_code == 0 and "nothing to send" in again.stderr
    assert [r["paid"] for r in read_output(output)] == ["earlier_run", "earlier_run", "shared"]
    assert f"; cost {money(spent)}; rows paid by an earlier run 2" in again.stderr  # nothing sent now, but it was paid
    unpriced = cli("run", "-i", source, "-o", tmp_path / "other.csv", "-m", "other", "--base-url", sim.url)
    assert unpriced.exit_code == 0
    assert all(r["cost"] == "" for r in read_output(tmp_path / "other.csv"))  # no price, no cost


def test_prices_come_from_the_catalogue_for_known_models_and_the_job_wins(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hi"]])
    model = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    known = cli("run", "-i", source, "-m", model, "--dry-run")
    assert known.exit_code == 0
    assert f"price of {model}: $0.88 input, $0.88 output per million tokens (from the catalogue" in known.stdout
    assert "no price for some models" not in known.stdout
    mine = cli("run", "-i", source, "-m", model, "--price", f"{model}=0.5,0.6", "--dry-run")
    assert "from the catalogue" not in mine.stdout
    capped = cli("run", "-i", source, "-m", model, "--max-cost", "1", "--max-tokens", "10", "--dry-run")
    assert capped.exit_code == 0  # the catalogue's price is enough for a cost cap
    local = cli("run", "-i", source, "-m", model, "--base-url", "http://127.0.0.1:9/v1", "--dry-run")
    assert "from the catalogue" not in local.stdout  # a local server's model is not priced as Together's


def test_a_server_that_reports_no_usage_is_said_not_counted_as_zero(tmp_path: Path) -> None:
    async def no_usage(request: web.Request) -> web.StreamResponse:
        body = {"id": "x", "object": "chat.completion", "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
        return web.Response(text=json.dumps(body), content_type="application/json")  # fmt: skip

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"], ["b"]])
    with HostileServer(no_usage) as server:
        result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "m", "--base-url", server.url)
    assert result.exit_code == 0, result.stderr
    assert "tokens this run: usage not reported for 2 answers" in result.stderr
    assert "0 prompt + 0 completion" not in result.stderr


def test_a_labeling_run_says_how_many_rows_got_each_label(tmp_path: Path, sim_factory: Any) -> None:
    server = sim_factory(labels=("yes", "no"))
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"q{i}"] for i in range(30)])
    result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "sim-chat", "--base-url", server.url,
                 "--labels", "yes,no")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = read_output(tmp_path / "out.csv")
    counts = {label: sum(r["label"] == label for r in rows) for label in ("yes", "no")}
    line = next(line for line in result.stderr.splitlines() if line.startswith("labels: "))
    assert all(f"{label} {count}" in line for label, count in counts.items() if count)


FRAME_RUN = r"""
import os, signal, sys, threading, time
import pandas as pd
import batchchat
url, journal = sys.argv[1], sys.argv[2]
df = pd.DataFrame({"prompt": [f"frame question {i}" for i in range(40)]})
if sys.argv[3] == "interrupt":
    threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    out = batchchat.run_frame(df, model="sim-chat", base_url=url, concurrency=4, journal=journal)
    print("done", (out.status == "ok").sum())
except batchchat.Interrupted as e:
    frame = e.result.frame
    print("interrupted", len(frame), (frame.status == "ok").sum(), (frame.status == "pending").sum())
"""


def test_an_interrupted_run_frame_keeps_its_answers_and_resumes_from_its_journal(
    tmp_path: Path, sim_factory: Any
) -> None:
    import subprocess
    import sys

    server = sim_factory(latency_ms=200)
    journal = tmp_path / "frame.journal"
    first = subprocess.run([sys.executable, "-c", FRAME_RUN, server.url, str(journal), "interrupt"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    word, rows, ok, pending = first.stdout.split()
    assert word == "interrupted" and rows == "40" and int(ok) > 0 and int(ok) + int(pending) == 40, first.stderr
    again = subprocess.run([sys.executable, "-c", FRAME_RUN, server.url, str(journal), "finish"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert again.stdout.split() == ["done", "40"], again.stderr
    assert server.stats()["answered_twice"] == 0  # those in flight when interrupted finished, and were kept


def test_run_frame_draws_a_bar_on_request_and_gives_the_summary(sim: BackgroundSimulator, capsys: Any) -> None:
    import pandas as pd

    import batchchat

    df = pd.DataFrame({"prompt": ["a", "b", "c"]})
    out = batchchat.run_frame(df, model="sim-chat", base_url=sim.url, progress=True)
    assert "3/3" in capsys.readouterr().err  # the bar, drawn where a notebook shows it
    summary = out.attrs["batchchat"]
    assert summary.ok == 3 and summary.rows == 3
    result = batchchat.run(df, model="sim-chat", base_url=sim.url)
    assert result.summary.ok == 3 and list(result.frame.status) == ["ok"] * 3 and result.output is None
    quiet = batchchat.run_frame(df, model="sim-chat", base_url=sim.url)
    assert capsys.readouterr().err == "" and list(quiet.status) == ["ok"] * 3  # the library prints nothing unasked


def test_run_frame_refuses_a_list_or_a_series_and_takes_an_empty_frame(sim: BackgroundSimulator) -> None:
    import pandas as pd

    import batchchat

    for wrong in (["a", "b"], pd.Series(["a", "b"], name="prompt")):
        with pytest.raises(TypeError, match="run_frame takes a pandas DataFrame, not a"):
            batchchat.run_frame(wrong, model="sim-chat", base_url=sim.url)  # type: ignore[arg-type]
    empty = batchchat.run_frame(pd.DataFrame({"prompt": pd.Series([], dtype=str)}), model="sim-chat", base_url=sim.url)
    assert len(empty) == 0 and {"response", "status", "cost"} <= set(empty.columns)
    assert sim.requests == []


def test_library_errors_name_library_arguments(tmp_path: Path) -> None:
    import pandas as pd

    import batchchat

    with pytest.raises(batchchat.JobError, match="give one with model="):
        batchchat.run_frame(pd.DataFrame({"prompt": ["a"]}), provider="sim")
    with pytest.raises(batchchat.JobError, match=r"\(the prompt column, prompt_column=\)"):
        batchchat.run_frame(pd.DataFrame({"text": ["a"]}), model="m", provider="sim")
    write_csv(tmp_path / "in.csv", ["prompt"], [["a"]])
    (tmp_path / "taken").mkdir()
    with pytest.raises(batchchat.JobError, match="choose another output="):
        batchchat.run(input=str(tmp_path / "in.csv"), output=str(tmp_path / "in.csv"), model="m", provider="sim")


def test_the_output_read_by_pandas_has_the_dtypes_run_frame_gives(tmp_path: Path, sim: BackgroundSimulator) -> None:
    import pandas as pd

    import batchchat

    df = pd.DataFrame({"prompt": ["a", "b", "[sim:fault=400]"]})
    df.to_csv(tmp_path / "in.csv", index=False)
    settings: dict[str, Any] = {"model": "sim-chat", "base_url": sim.url, "json_schema": {
        "type": "object", "properties": {"n": {"type": "integer"}, "flag": {"type": "boolean"}}}}  # fmt: skip
    batchchat.run(input=str(tmp_path / "in.csv"), output=str(tmp_path / "out.parquet"), **settings)
    read = pd.read_parquet(tmp_path / "out.parquet")
    framed = batchchat.run_frame(df, **settings)
    assert {c: str(read[c].dtype) for c in framed.columns} == {c: str(framed[c].dtype) for c in framed.columns}
    assert str(read["prompt_tokens"].dtype) == "Int64" and str(read["out_flag"].dtype) == "boolean"


def test_a_401_when_no_key_was_sent_says_so_and_which_variable_to_set(tmp_path: Path, sim_factory: Any) -> None:
    server = sim_factory(api_key="the-right-key")  # a local server that wants a key: none is sent to loopback
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hi"]])
    run = cli("run", "-i", source, "-m", "sim-chat", "--base-url", server.url)
    assert run.exit_code == 2
    assert "wants an API key, and none was sent (HTTP 401: Invalid API key provided); set the variable " \
           "TOGETHER_API_KEY and run again" in run.stderr  # fmt: skip
    chat = cli("chat", "hi", "-m", "sim-chat", "--base-url", server.url, "--api-key-env", "MY_LOCAL_KEY")
    assert chat.exit_code == 2 and "none was sent" in chat.stderr and "set the variable MY_LOCAL_KEY" in chat.stderr


def test_run_help_groups_its_options_and_ends_with_examples() -> None:
    text = cli("run", "--help").stdout
    titles = ["Input and prompts:", "Model and request:", "Limits and retries:", "Output and resume:",
              "Evaluation:", "Other:", "Examples:"]  # fmt: skip
    positions = [text.index(title) for title in titles]
    assert positions == sorted(positions)
    assert text.index("--limit N") < text.index("Model and request:") < text.index("--max-tokens")
    assert text.index("Evaluation:") < text.index("--labels") < text.index("Other:") < text.index("--dry-run")
    assert "batchchat run jobs/demo.toml" in text[positions[-1]:]


def test_chat_help_does_not_offer_several_models() -> None:
    text = cli("chat", "--help").stdout
    line = next(line for line in text.splitlines() if "--model" in line)
    assert "repeat" not in line.lower() and "compare" not in text


def test_the_readme_shows_the_demo_job_as_it_is() -> None:
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    shown = readme.split("See `jobs/demo.toml`:\n\n```toml\n", 1)[1].split("```", 1)[0]
    assert shown == (root / "jobs" / "demo.toml").read_text(encoding="utf-8")


def test_messages_count_in_good_grammar(tmp_path: Path, sim: BackgroundSimulator) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"], [""]])
    result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "sim-chat", "-m", "sim-chat-large",
                 "--variant", "temperature=0", "--base-url", sim.url)  # fmt: skip
    err = result.stderr
    assert "4 rows (2 rows x 2 models x 1 variant)" in err
    assert "1 input row has nothing to send, an empty prompt (row 2): its 2 output rows become error rows (invalid_input)" in err
    assert "this run: 2 requests finished" in err and "0 retries" in err
    assert "2 ok, 2 errors (invalid_input 2)" in err
    for wrong in ("1 requests", "1 rows", "0 error ", "1 variants", "1 retries", "((", "))"):
        assert wrong not in err, wrong
    header = read_output(tmp_path / "out.csv")[0]
    names = list(header)
    assert names.index("variant") == names.index("model") + 1  # side by side
    bad = cli("run", "-i", source, "-m", "m", "--provider", "sim", "--param", "stream=true")
    assert "(--param)" in bad.stderr and "--params" not in bad.stderr


# --- found by a new user's walk-through ------------------------------------------------------


def test_a_limit_on_a_dataframe_sends_and_returns_only_the_first_rows(sim: BackgroundSimulator) -> None:
    import pandas as pd

    import batchchat

    frame = pd.DataFrame({"prompt": [f"question {i}" for i in range(20)]})
    out = batchchat.run_frame(frame, model="sim-chat", base_url=sim.url, limit=3)
    assert list(out.index) == [0, 1, 2] and list(out.status) == ["ok"] * 3  # as a file run writes only them
    assert len(sim.requests) == 3


def test_a_limited_run_never_replaces_an_output_with_more_rows(tmp_path: Path, sim: BackgroundSimulator) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"q{i}"] for i in range(30)])
    output = tmp_path / "out.parquet"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "--base-url", sim.url)
    assert cli("run", *common).exit_code == 0
    before = output.read_bytes()
    trial = cli("run", *common, "--limit", "5")
    assert trial.exit_code == 2
    assert f"the output {output} holds 30 rows, and this run, limited to the first input rows (--limit)" in trial.stderr
    assert output.read_bytes() == before  # the 25 rows answered beyond the limit are still there
    again = cli("run", "-i", source, "-o", tmp_path / "trial.csv", "-m", "sim-chat", "--base-url", sim.url,
                "--limit", "5")  # fmt: skip
    assert again.exit_code == 0 and len(read_output(tmp_path / "trial.csv")) == 5


class Stopper:
    """An engine interrupted after its first answer (as Ctrl-C would stop the live one)."""

    def __init__(self, ending: Any) -> None:
        self.ending = ending

    async def execute(self, work: Any, ledger: Any) -> Any:
        from batchchat.core.records import ChatResult, RowOutcome, Usage

        for request in work.requests:
            ledger.finished(RowOutcome.answered(request, ChatResult("a", "stop", Usage(1, 1, 2), "r", "m", 0.1), 1))
            return self.ending
        return self.ending


def test_the_resume_advice_after_a_restart_does_not_restart_again(tmp_path: Path) -> None:
    import asyncio

    from batchchat.cli.commands import flag_name
    from batchchat.core.errors import Interrupted
    from batchchat.execute.base import Ending
    from batchchat.job.jobfile import build_job
    from batchchat.runs.runfile import arun

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"], ["b"]])
    settings = {"input": str(source), "output": str(tmp_path / "out.csv"), "model": "m", "provider": "sim"}
    for restart, names, advice in (
        (True, flag_name, "run the same command again without --restart to resume"),
        (False, flag_name, "run the same command again to resume"),
        (True, lambda key: f"{key}=", "call again with the same settings without restart= to resume"),
    ):
        job = build_job(None, {**settings, "restart": restart}, names)
        with pytest.raises(Interrupted) as stopped:
            asyncio.run(arun(job, executor=Stopper(Ending.STOPPED)))
        assert advice in str(stopped.value)


def test_a_run_stopped_at_once_says_what_the_journal_keeps(tmp_path: Path) -> None:
    import asyncio

    from batchchat.core.errors import Interrupted
    from batchchat.execute.base import Ending
    from batchchat.reports.text import summary_text
    from batchchat.runs.runfile import arun

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"], ["b"]])
    with pytest.raises(Interrupted) as stopped:
        asyncio.run(arun(input=source, output=tmp_path / "out.csv", model="m", provider="sim",
                         executor=Stopper(Ending.AT_ONCE)))  # fmt: skip
    text = summary_text(stopped.value.result, finished=False)
    assert text.startswith("stopped at once: the output was not written; the journal keeps what this run finished "
                           "(1 request)")  # fmt: skip
    assert "0 rows" not in text


def test_a_run_of_something_else_than_a_table_or_a_job_says_what_to_pass(sim: BackgroundSimulator) -> None:
    import pandas as pd

    import batchchat

    for wrong in (["a", "b"], pd.Series(["a"])):
        with pytest.raises(TypeError, match=r"run takes a job file's path, a Job or a pandas DataFrame"):
            batchchat.run(wrong, model="sim-chat", base_url=sim.url)
    with pytest.raises(batchchat.JobError, match="input= is not used with a DataFrame"):
        batchchat.run(pd.DataFrame({"prompt": ["a"]}), input="q.csv", model="sim-chat", base_url=sim.url)


def test_money_reads_as_money() -> None:
    assert [money(v) for v in (0, 0.6, 0.88, 0.000123, 0.0123, 1234.5)] == [
        "$0.00", "$0.60", "$0.88", "$0.00012", "$0.012", "$1,234.50"]  # fmt: skip


def test_a_price_for_a_model_the_job_does_not_ask_is_refused(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hi"]])
    typo = cli("run", "-i", source, "-m", "sim-chat", "--provider", "sim", "--price", "sim-chta=1,2", "--dry-run")
    assert typo.exit_code == 2
    assert "--price prices 'sim-chta', which this job does not ask; its models are 'sim-chat'; did you mean" in typo.stderr


def test_usage_never_reported_makes_the_cost_unknown_not_zero(tmp_path: Path) -> None:
    async def no_usage(request: web.Request) -> web.StreamResponse:
        body = {"id": "x", "object": "chat.completion", "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
        return web.Response(text=json.dumps(body), content_type="application/json")  # fmt: skip

    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"]])
    with HostileServer(no_usage) as server:
        result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "m", "--base-url", server.url,
                     "--price", "m=1,2")  # fmt: skip
    assert "cost unknown: no answer said how many tokens it took" in result.stderr
    assert "$0.00" not in result.stderr


def test_help_and_messages_read_plainly(tmp_path: Path, sim: BackgroundSimulator) -> None:
    import pandas as pd

    import batchchat

    help_text = cli("run", "--help").stdout
    assert "[JOB_FILE]  " not in help_text.split("Other:", 1)[1] and "x>=0.05" not in help_text
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"], ["b"]])
    one = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "sim-chat", "--base-url", sim.url,
              "--limit", "1")  # fmt: skip
    assert "only the first input row (--limit)" in one.stderr
    assert "1 row from" in one.stderr and "(1 row x" not in one.stderr  # no fan-out: nothing to multiply
    bad = cli("run", "-i", source, "-m", "m", "--provider", "sim", "--variant", "temperature=-1")
    assert "must be a number of at least 0" in bad.stderr
    param = cli("run", "-i", source, "-m", "m", "--provider", "sim", "--param", "oops")
    assert "got 'oops'. See " in param.stderr  # a sentence ends before the pointer to the help
    sim_flag = cli("run", "-i", source, "-m", "m", "--provider", "sim", "--sim", "fault_rate=2", "--dry-run")
    assert "the simulator's fault_rate (--sim) must be at most 1" in sim_flag.stderr
    price = cli("run", "-i", source, "-m", "m", "--provider", "sim", "--price", "m=-1,2", "--dry-run")
    assert "the input price of 'm' (--price) must be at least 0" in price.stderr
    with pytest.raises(batchchat.JobError, match=r"the DataFrame has no column 'prompt' .*; it has no columns at all"):
        batchchat.run_frame(pd.DataFrame(index=[0, 1]), model="m", provider="sim")


def test_a_plain_progress_line_after_the_stop_says_so_not_the_time_left() -> None:
    from batchchat.reports.text import progress_line
    from batchchat.store.stats import Stats

    stats = Stats(10)
    stats.done = 4
    stats.counters.rate = 2.5
    assert "about" in progress_line(10, stats, 2.0) and "(the throttle allows 2.5/s)" in progress_line(10, stats, 2.0)
    stopping = progress_line(10, stats, 2.0, stopping=True)
    assert "left" not in stopping and stopping.endswith("; stopping: waiting for the requests in flight")


def test_a_base_url_without_v1_that_finds_nothing_says_to_add_it(tmp_path: Path, sim_factory: Any) -> None:
    server = sim_factory()
    bare = server.url.removesuffix("/v1")
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"q{i}"] for i in range(5)])
    result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "sim-chat", "--base-url", bare,
                 "--provider", "anthropic", "--batch-api")  # fmt: skip
    assert result.exit_code == 2
    assert f"most servers answer under /v1: try --base-url {bare}/v1" in result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_a_labeling_run_where_no_answer_named_a_label_says_what_to_check(tmp_path: Path, sim_factory: Any) -> None:
    server = sim_factory()  # started without the labels: it answers free text
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"q{i}"] for i in range(3)])
    result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "sim-chat", "--base-url", server.url,
                 "--labels", "yes,no", "--invalid-retries", "0")  # fmt: skip
    assert result.exit_code == 1
    assert "no answer named a label: does the prompt list them?" in result.stderr
