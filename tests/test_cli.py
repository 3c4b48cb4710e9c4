"""The command line: exit codes, messages, summary, and files left alone when a run cannot start."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from batchchat.cli.commands import parse_param
from tests.helpers import cli, cli_subprocess, read_output, write_csv

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "in.csv", ["prompt"], [["hello"], ["world"]])


def test_all_rows_ok_exits_0_and_the_summary_names_the_output(sim, prompts, tmp_path):
    output = tmp_path / "answers.csv"
    result = cli("run", "-i", prompts, "-o", output, "-m", "sim-chat", "--base-url", sim.url)
    assert result.exit_code == 0, result.stderr
    assert "done: 2 rows" in result.stderr and "2 ok, 0 errors" in result.stderr
    assert f"output: {output}" in result.stderr
    assert "tokens this run:" in result.stderr and "latency: p50" in result.stderr
    assert len(read_output(output)) == 2


def test_some_rows_in_error_exits_1_and_the_summary_counts_error_types(sim, tmp_path):
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["ok"], ["[sim:fault=404]"]])
    result = cli("run", "-i", source, "-m", "sim-chat", "--base-url", sim.url)
    assert result.exit_code == 1
    assert "1 ok, 1 error (not_found 1)" in result.stderr


def test_request_options_and_params_reach_the_request_body(sim, prompts):
    result = cli("run", "-i", prompts, "-m", "sim-chat", "--base-url", sim.url, "--max-tokens", "5",
                 "--temperature", "0", "--top-p", "0.9", "--param", "seed=42", "--param", 'stop=["\\n"]',
                 "--param", "user=alice", "--concurrency", "1")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    body = sim.requests[0]["body"]
    assert body["max_tokens"] == 5 and body["temperature"] == 0 and body["top_p"] == 0.9
    assert body["seed"] == 42 and body["stop"] == ["\n"] and body["user"] == "alice"


def test_param_values_are_json_when_they_parse():
    assert parse_param("seed=42") == ("seed", 42)
    assert parse_param('response_format={"type": "json_object"}') == ("response_format", {"type": "json_object"})
    assert parse_param("user=alice") == ("user", "alice")
    assert parse_param("note=a=b") == ("note", "a=b")


def test_a_missing_key_exits_2_naming_the_variable_before_anything_runs(sim, prompts, tmp_path):
    output = tmp_path / "out.parquet"
    result = cli("run", "-i", prompts, "-o", output, "-m", "meta-llama/Llama-3.3-70B-Instruct-Turbo")
    assert result.exit_code == 2
    assert "TOGETHER_API_KEY is not set" in result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists()


def test_quiet_ends_with_one_line_and_errors_always_print(sim, prompts, tmp_path):
    result = cli("run", "-i", prompts, "-o", tmp_path / "out.csv", "-m", "sim-chat", "--base-url", sim.url, "--quiet",
                 "--price", "sim-chat=1,2")  # fmt: skip
    assert result.exit_code == 0 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert re.fullmatch(r"batchchat: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC done: 2 rows, 2 ok, 0 errors, 0 pending; "
                        rf"this run 2 requests in [\d.]+ s, cost \$[\d.]+; output: {re.escape(str(tmp_path / 'out.csv'))}",
                        line), line  # fmt: skip
    failed = cli("run", "-i", tmp_path / "missing.csv", "-m", "sim-chat", "--base-url", sim.url, "--quiet")
    assert failed.exit_code == 2 and "missing.csv" in failed.stderr


def test_the_cron_line_readme_gives_leaves_a_line_in_the_log_each_night(tmp_path):
    root = Path(__file__).resolve().parent.parent
    shutil.copytree(root / "jobs", tmp_path / "jobs", ignore=shutil.ignore_patterns("*.parquet", "*.journal"))
    command = (f"{shlex.quote(sys.executable)} -m batchchat run jobs/label-sentiment.toml --provider sim -q "
               ">> label.log 2>&1")  # fmt: skip
    for _ in range(2):
        assert subprocess.run(command, shell=True, cwd=tmp_path, timeout=120).returncode == 0
    log = (tmp_path / "label.log").read_text().splitlines()
    assert len(log) == 2 and all(" done: 20 rows, 20 ok, 0 errors, 0 pending; " in line for line in log), log
    assert "this run 20 requests" in log[0] and "this run 0 requests" in log[1]
    assert log[0].endswith("output: jobs/reviews_labeled.parquet")


def test_the_key_never_appears_in_what_the_cli_prints(sim, tmp_path):
    canary = "sk-canary-cli-5150"
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hi"], ["[sim:fault=401]"]])
    result = cli_subprocess("run", "-i", source, "-m", "sim-chat", "--base-url", sim.url, "--debug",
                            env={"TOGETHER_API_KEY": canary})  # fmt: skip
    assert result.returncode == 2  # the 401 stops the run: every row would fail the same way
    assert (
        "refused the API key (HTTP 401: simulated invalid API key); set a valid key in TOGETHER_API_KEY"
        in result.stderr
    )
    assert canary not in result.stdout + result.stderr
    assert sim.requests[0]["authorization"] == f"Bearer {canary}"
    bad = cli_subprocess("run", "-i", source, "-m", "sim-chat", "--base-url", "https://example.invalid/v1",
                         "--api-key-env", "EMPTY_KEY", env={"EMPTY_KEY": "", "TOGETHER_API_KEY": canary})  # fmt: skip
    assert bad.returncode == 2 and canary not in bad.stdout + bad.stderr


def test_the_demo_job_runs_offline_from_a_fresh_copy(tmp_path):
    jobs = tmp_path / "jobs"
    shutil.copytree(ROOT / "jobs", jobs, ignore=shutil.ignore_patterns("*.parquet", "*.journal"))
    result = cli_subprocess("run", "jobs/demo.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    output = jobs / "demo_answers.parquet"
    assert "output: jobs/demo_answers.parquet" in result.stderr
    rows = read_output(output)
    assert len(rows) == 40 and all(r["status"] == "ok" for r in rows)
    assert any(r["history"] for r in rows)


def test_run_with_nothing_says_how_to_start():
    result = cli("run")
    assert result.exit_code == 2 and "nothing to run: give a job file" in result.stderr


def test_the_progress_bar_shows_rate_429s_retries_tokens_and_errors():
    from batchchat.core.records import RowOutcome, Usage
    from batchchat.output.progress import live_counters
    from batchchat.store.stats import Stats

    stats = Stats(total=3)
    stats.add(RowOutcome(0, "k", "ok", 2, "m", response="a", prompt_tokens=1000, completion_tokens=234))
    stats.counters.add_usage("m", Usage(1000, 234))
    stats.add(RowOutcome(1, "k", "error", 1, "m", error_type="bad_request", error="x"))
    stats.counters.rate, stats.counters.rate_limited, stats.counters.retries = 18.25, 12, 14
    assert live_counters(stats) == "rate=18.2/s 429s=12 retries=14 tokens=1,234 errors=1"
    stats.counters.rate = None
    assert live_counters(stats).startswith("rate=unlimited ")


def test_the_sdks_base_url_variables_are_read_and_flags_win(sim, tmp_path):
    result = cli_subprocess("chat", "hi", "-m", "sim-chat", env={"TOGETHER_BASE_URL": sim.url})
    assert result.returncode == 0, result.stderr
    assert len(sim.requests) == 1  # went to the simulator, not to Together, and needed no key
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"]])
    run = cli_subprocess("run", "-i", source, "-m", "sim-chat", "--dry-run", env={"TOGETHER_BASE_URL": sim.url})
    assert f"-> {sim.url} (from TOGETHER_BASE_URL)" in run.stdout
    openai = cli_subprocess("run", "-i", source, "-m", "sim-chat", "--provider", "openai", "--dry-run",
                            env={"OPENAI_BASE_URL": sim.url, "TOGETHER_BASE_URL": "http://127.0.0.1:9/v1"})  # fmt: skip
    assert f"-> {sim.url} (from OPENAI_BASE_URL)" in openai.stdout
    flag = cli_subprocess("run", "-i", source, "-m", "sim-chat", "--base-url", sim.url, "--dry-run",
                          env={"TOGETHER_BASE_URL": "http://127.0.0.1:9/v1"})  # fmt: skip
    assert f"-> {sim.url}\n" in flag.stdout
    bad = cli_subprocess("run", "-i", source, "-m", "m", env={"TOGETHER_BASE_URL": "ftp://nowhere"})
    assert bad.returncode == 2 and "TOGETHER_BASE_URL (in the environment): 'ftp://nowhere' is not an http(s) URL" in bad.stderr


def test_a_limit_tries_the_first_rows_and_a_run_without_it_goes_on(sim, tmp_path):
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"q{i}"] for i in range(50)])
    output = tmp_path / "out.parquet"
    common = ("-i", source, "-o", output, "-m", "sim-chat", "-m", "sim-chat-large", "--base-url", sim.url)
    dry = cli("run", *common, "--limit", "20", "--dry-run")
    assert "40 rows (20 rows x 2 models)" in dry.stdout and "40 requests to send" in dry.stdout
    trial = cli("run", *common, "--limit", "20")
    assert trial.exit_code == 0, trial.stderr
    assert "only the first 20 input rows (--limit)" in trial.stderr
    rows = read_output(output)
    assert len(rows) == 40 and [r["prompt"] for r in rows[::2]] == [f"q{i}" for i in range(20)]
    assert len(sim.requests) == 40  # every model for each of the 20 rows
    whole = cli("run", *common)
    assert whole.exit_code == 0 and len(read_output(output)) == 100
    assert len(sim.requests) == 100  # the first 20 rows were not paid for twice
    job = tmp_path / "job.toml"
    job.write_text(f'input = "in.csv"\noutput = "j.csv"\nmodel = "sim-chat"\nbase_url = "{sim.url}"\nlimit = 3\n')
    assert cli("run", job).exit_code == 0 and len(read_output(tmp_path / "j.csv")) == 3
    assert cli("run", job, "--limit", "0").exit_code == 2


def test_variants_and_simulator_settings_from_flags(tmp_path):
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"], ["b"]])
    output = tmp_path / "out.csv"
    result = cli("run", "-i", source, "-o", output, "-m", "sim-chat", "--provider", "sim",
                 "--variant", "temperature=0", "--variant", 'name=hot,temperature=0.7,stop=["\\n", ","]',
                 "--sim", "latency_ms=5,seed=3", "--sim", 'labels=["yes", "no"]', "--labels", "yes,no")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = read_output(output)
    assert [(r["prompt"], r["variant"]) for r in rows] == [
        ("a", "temperature=0"), ("a", "hot"), ("b", "temperature=0"), ("b", "hot")]
    assert {r["label"] for r in rows} <= {"yes", "no"}
    wrong = cli("run", "-i", source, "-m", "m", "--base-url", "http://127.0.0.1:9/v1", "--sim", "latency_ms=5")
    assert wrong.exit_code == 2 and "--sim configures the built-in simulator, which runs only with provider sim: set --provider to sim" in wrong.stderr
    bad = cli("run", "-i", source, "-m", "m", "--provider", "sim", "--variant", "temperature")
    assert bad.exit_code == 2 and "expected KEY=VALUE" in bad.stderr


def test_without_a_terminal_progress_is_a_plain_line_at_a_steady_interval(sim_factory, tmp_path):
    server = sim_factory(latency_ms=50)
    source = write_csv(tmp_path / "in.csv", ["prompt"], [[f"q{i}"] for i in range(60)])
    result = cli_subprocess("run", "-i", source, "-m", "sim-chat", "--base-url", server.url, "--concurrency", "2",
                            "--progress-every", "0.3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("batchchat: progress: ")]
    assert len(lines) >= 3
    assert re.match(r"batchchat: progress: [\d,]+ of 60 requests \(\d+%\), [\d.,]+/s; \d+ 429s, \d+ retries, "
                    r"\d+ errors; [\d,]+ tokens(; about .+ left)?$", lines[-1]), lines[-1]  # fmt: skip
    assert "\r" not in result.stderr and "\x1b" not in result.stderr  # no bar drawn into a log


def test_every_problem_of_a_job_is_reported_at_once_and_an_empty_key_is_called_empty(tmp_path, monkeypatch):
    source = write_csv(tmp_path / "in.csv", ["question"], [["hi"]])
    model = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    monkeypatch.setenv("TOGETHER_API_KEY", "")
    both = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", model)
    assert both.exit_code == 2
    assert "this job has 2 problems:" in both.stderr
    assert "has no column 'prompt'" in both.stderr and "the variable TOGETHER_API_KEY is empty" in both.stderr
    fixed = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", model, "--prompt-column", "question")
    assert fixed.exit_code == 2 and "problems" not in fixed.stderr and "TOGETHER_API_KEY is empty" in fixed.stderr
    dry = cli("run", "-i", source, "-m", model, "--prompt-column", "question", "--dry-run")
    assert dry.exit_code == 0 and "note: TOGETHER_API_KEY is empty; a real run needs it" in dry.stdout
    monkeypatch.delenv("TOGETHER_API_KEY")
    unset = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", model, "--prompt-column", "question")
    assert "the variable TOGETHER_API_KEY is not set" in unset.stderr
    assert not (tmp_path / "out.csv").exists()


def test_flags_win_over_the_job_files_provider_and_url(tmp_path, sim):
    write_csv(tmp_path / "in.csv", ["prompt"], [["hi"]])
    (tmp_path / "sim.toml").write_text('input = "in.csv"\noutput = "out.csv"\nprovider = "sim"\nmodel = "sim-chat"\n'
                                       "[simulator]\nlatency_ms = 1\n")  # fmt: skip
    served = cli("run", tmp_path / "sim.toml", "--base-url", sim.url)
    assert served.exit_code == 0, served.stderr
    assert len(sim.requests) == 1  # sent to the running server the flag names
    (tmp_path / "url.toml").write_text(f'input = "in.csv"\noutput = "out2.csv"\nbase_url = "{sim.url}"\n'
                                       'model = "sim-chat"\n')  # fmt: skip
    simulated = cli("run", tmp_path / "url.toml", "--provider", "sim")
    assert simulated.exit_code == 0, simulated.stderr
    assert len(sim.requests) == 1  # the built-in simulator answered


def test_run_help_names_every_exit_code_and_messages_read_right(tmp_path, sim):
    shown = " ".join(cli("run", "--help").output.split())
    for code in ("0 every row ok", "1 some rows", "2 the job could not run", "74 the disk", "130 stopped"):
        assert code in shown
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hi"]])
    unpriced = cli("run", "-i", source, "-m", "a", "-m", "b", "--base-url", sim.url, "--max-cost", "1",
                   "--max-tokens", "5")  # fmt: skip
    assert "'a', 'b' have none; give them with --price" in unpriced.stderr
    one = cli("run", "-i", source, "-m", "a", "--base-url", sim.url, "--max-cost", "1", "--max-tokens", "5")
    assert "'a' has none; give one with --price" in one.stderr


def test_one_shared_row_is_said_in_the_singular(tmp_path, sim):
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["a"], ["a"]])
    result = cli("run", "-i", source, "-o", tmp_path / "out.csv", "-m", "sim-chat", "--base-url", sim.url)
    assert "1 row shares a request with an identical row" in result.stderr
