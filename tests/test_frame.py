"""run_frame: a DataFrame in, a DataFrame out, from scripts and from inside a running loop."""

import asyncio

import pandas as pd
import pytest

import batchchat
from batchchat.core.errors import JobError
from batchchat.output.sink import OUTPUT_COLUMNS
from batchchat.simulator import synthetic_reply


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {"prompt": ["What is 2+2?", "Name a colour.", ""], "n": [1, 2, 3]},
        index=pd.Index(["a", "b", "c"], name="key"),
    )


def expected(text: str) -> str:
    return synthetic_reply({"model": "sim-chat", "messages": [{"role": "user", "content": text}]})[0]


def check(result: pd.DataFrame, df: pd.DataFrame) -> None:
    assert list(result.columns) == ["prompt", "n", *OUTPUT_COLUMNS, "cost", "paid"]
    assert result.index.equals(df.index)
    assert result["n"].dtype == df["n"].dtype
    assert result.loc["a", "response"] == expected("What is 2+2?")
    assert result.loc["b", "response"] == expected("Name a colour.")
    assert result.loc["c", "status"] == "error" and result.loc["c", "error_type"] == "invalid_input"
    assert str(result["prompt_tokens"].dtype) == "Int64" and pd.isna(result.loc["c", "prompt_tokens"])
    assert list(df.columns) == ["prompt", "n"]  # the caller's frame is not modified


def test_run_frame_from_a_script(sim):
    df = frame()
    check(batchchat.run_frame(df, model="sim-chat", base_url=sim.url), df)


def test_run_frame_inside_a_running_event_loop_like_a_notebook_cell(sim):
    df = frame()

    async def notebook_cell():
        asyncio.get_running_loop()  # a loop is running, as in Jupyter
        return batchchat.run_frame(df, model="sim-chat", base_url=sim.url)

    check(asyncio.run(notebook_cell()), df)


def test_arun_frame_can_be_awaited(sim):
    df = frame()
    check(asyncio.run(batchchat.arun_frame(df, model="sim-chat", base_url=sim.url)), df)


def test_run_frame_with_a_template_and_provider_sim():
    df = pd.DataFrame({"city": ["Paris", "Lima"]})
    result = batchchat.run_frame(df, model="sim-chat", provider="sim", template="What is the population of {city}?")
    assert result["status"].tolist() == ["ok", "ok"]
    assert result.loc[1, "response"] == expected("What is the population of Lima?")


def test_run_frame_refuses_file_settings_and_missing_columns(sim):
    with pytest.raises(JobError, match="output= is not used with a DataFrame"):
        batchchat.run_frame(frame(), model="sim-chat", base_url=sim.url, output="x.parquet")
    with pytest.raises(JobError, match="no column 'question'"):
        batchchat.run_frame(frame(), model="sim-chat", base_url=sim.url, prompt_column="question")


NOTEBOOK = r"""
import asyncio, os, signal, sys, threading
import pandas as pd
import batchchat
url = sys.argv[1]
df = pd.DataFrame({"prompt": [f"slow question {i}" for i in range(40)]})
async def cell():  # a notebook cell: a loop is running, and run_frame blocks it
    return batchchat.run_frame(df, model="sim-chat", base_url=url, concurrency=4)
# A kernel hears the interrupt button whatever its parent ignored (a test run started in the
# background of a script ignores SIGINT, and a Python started so installs no KeyboardInterrupt).
signal.signal(signal.SIGINT, signal.default_int_handler)
threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()  # the user presses "interrupt"
loop = asyncio.new_event_loop()  # like Jupyter: no asyncio.run, so SIGINT raises KeyboardInterrupt
try:
    loop.run_until_complete(cell())
except KeyboardInterrupt as e:
    print("interrupted", flush=True)
    frame = e.result.frame  # batchchat.Interrupted: what was answered, the others pending
    print(len(frame), (frame.status == "ok").sum(), sorted(set(frame.status)), flush=True)
    import time; time.sleep(4)  # the kernel lives on: a background loop left running would keep sending
"""


@pytest.mark.slow
def test_interrupting_run_frame_in_a_notebook_stops_its_requests_and_keeps_those_in_flight(sim_factory):
    import subprocess
    import sys
    import time

    server = sim_factory(latency_ms=3000)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", NOTEBOOK, server.url], capture_output=True, text=True, timeout=60)
    answered = server.stats()["answered"]
    assert result.stdout.splitlines() == ["interrupted", f"40 {answered} ['ok', 'pending']"], (result.returncode, result.stderr)
    assert answered == 4  # the 4 in flight when the user pressed stop had their grace period: paid, and kept
    assert time.monotonic() - started < 15  # not the 30 s the 40 slow rows would take
    assert server.stats()["received"] == 4  # nothing went on being sent
