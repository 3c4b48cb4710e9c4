from pathlib import Path

import pytest

from batchchat.cli.commands import flag_name
from batchchat.core.errors import JobError
from batchchat.job.jobfile import build_job, load_job


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.csv"
    path.write_text("prompt\nhi\n", encoding="utf-8")
    return path


def write_job(folder: Path, text: str) -> Path:
    path = folder / "job.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_flags_win_over_the_job_file(tmp_path, prompts):
    job_file = write_job(tmp_path, 'input = "prompts.csv"\nmodel = "a"\nprovider = "sim"\nconcurrency = 4\n'
                                   "temperature = 0.2\n[params]\nseed = 1\nstop = ['x']\n")  # fmt: skip
    job = build_job(job_file, {"model": "b", "concurrency": 9, "params": {"seed": 2}}, flag_name)
    assert job.model == "b"
    assert job.limits.concurrency == 9
    assert dict(job.params) == {"seed": 2, "stop": ["x"], "temperature": 0.2}


def test_relative_paths_in_a_job_file_resolve_against_its_folder(tmp_path, prompts, monkeypatch):
    folder = tmp_path / "jobs"
    folder.mkdir()
    (folder / "in.csv").write_text("prompt\nhi\n", encoding="utf-8")
    job_file = write_job(folder, 'input = "in.csv"\noutput = "out.csv"\nmodel = "m"\nprovider = "sim"\n')
    monkeypatch.chdir(tmp_path.parent)
    job = load_job(job_file)
    assert job.input == folder / "in.csv"
    assert job.output == folder / "out.csv"


def test_output_defaults_to_a_parquet_file_beside_the_input(prompts):
    job = load_job(input=prompts, model="m", provider="sim")
    assert job.output == prompts.with_name("prompts.out.parquet")


def test_model_is_required_with_no_silent_default(prompts):
    with pytest.raises(JobError, match="no model: give one with model="):  # the library's name for it
        load_job(input=prompts, provider="sim")


def test_together_without_a_key_names_the_variable(prompts):
    with pytest.raises(JobError, match="TOGETHER_API_KEY is not set"):
        load_job(input=prompts, model="m")
    with pytest.raises(JobError, match="OPENAI_API_KEY is not set"):
        load_job(input=prompts, model="m", provider="openai")
    with pytest.raises(JobError, match="MY_KEY is not set"):
        load_job(input=prompts, model="m", api_key_env="MY_KEY")


def test_a_key_in_the_environment_is_read_at_run_time_and_never_stored(prompts, monkeypatch):
    monkeypatch.setenv("TOGETHER_API_KEY", "sk-test-secret")
    job = load_job(input=prompts, model="m")
    assert job.endpoint.base_url == "https://api.together.xyz/v1"
    assert job.endpoint.api_key() == "sk-test-secret"
    assert "sk-test-secret" not in repr(job)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "http://localhost:11434/v1", "http://[::1]:8080/v1"])
def test_a_loopback_base_url_needs_no_key(prompts, url):
    job = load_job(input=prompts, model="m", base_url=url + "/")
    assert job.endpoint.base_url == url
    assert job.endpoint.api_key() is None


def test_a_remote_base_url_still_needs_a_key(prompts):
    with pytest.raises(JobError, match="TOGETHER_API_KEY"):
        load_job(input=prompts, model="m", base_url="https://example.com/v1")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"concurrency": -3}, "concurrency= must be at least 1, got -3"),
        ({"concurrency": "lots"}, "concurrency= must be a whole number"),
        ({"concurrency": True}, "concurrency= must be a whole number"),
        ({"temperature": "hot"}, "temperature= must be a number, got 'hot'"),
        ({"top_p": 1.5}, "top_p= must be at most 1"),
        ({"max_attempts": 0}, "max_attempts= must be at least 1"),
        ({"timeout": 0}, "timeout= must be at least"),
        ({"provider": "togther"}, "did you mean 'together'"),
        ({"provider": "openai", "base_url": "api.together.xyz"}, "is not an http(s) URL"),
        ({"output": "out.xlsx"}, "use one of .csv, .parquet, .jsonl"),
        ({"params": {"stream": True}}, "request option 'stream' cannot be set"),
        ({"params": {"messages": []}}, "request option 'messages' cannot be set"),
        ({"params": {"n": 3}}, "n must be 1"),
        ({"template": "no fields"}, "no {column} placeholder"),
        ({"template": "{a}", "prompt_column": "b"}, "use one"),
        ({"concurency": 3}, "did you mean 'concurrency'"),
    ],
)
def test_bad_settings_say_which_and_what_to_do(prompts, settings, message):
    base = {"input": prompts, "model": "m", "provider": "sim"}
    with pytest.raises(JobError) as info:
        load_job(**{**base, **settings})
    assert message in str(info.value)


def test_errors_name_the_flag_for_cli_users(prompts):
    with pytest.raises(JobError, match="--concurrency must be at least 1"):
        build_job(None, {"input": str(prompts), "model": "m", "provider": "sim", "concurrency": 0}, flag_name)


def test_errors_name_the_job_file_key(tmp_path, prompts):
    job_file = write_job(tmp_path, 'input = "prompts.csv"\nmodel = "m"\nprovider = "sim"\nconcurrency = -1\n')
    with pytest.raises(JobError, match=r"'concurrency' in .*job.toml must be at least 1"):
        load_job(job_file)


def test_unknown_job_file_keys_suggest_the_right_one(tmp_path, prompts):
    job_file = write_job(tmp_path, 'input = "prompts.csv"\nmodel = "m"\nprompt_colum = "q"\n')
    with pytest.raises(JobError, match="unknown key 'prompt_colum'; did you mean 'prompt_column'"):
        load_job(job_file)


def test_toml_syntax_errors_give_the_line(tmp_path):
    job_file = write_job(tmp_path, 'model = "m"\ninput = \n')
    with pytest.raises(JobError, match=r"not valid TOML: .*line 2"):
        load_job(job_file)


def test_missing_input_and_output_folder(tmp_path, prompts):
    with pytest.raises(JobError, match="does not exist"):
        load_job(input=tmp_path / "nope.csv", model="m", provider="sim")
    with pytest.raises(JobError, match=r"output folder .* does not exist"):
        load_job(input=prompts, output=tmp_path / "missing" / "out.csv", model="m", provider="sim")
    with pytest.raises(JobError, match="is the input file"):
        load_job(input=prompts, output=prompts, model="m", provider="sim")


def test_sim_provider_refuses_a_base_url(prompts):
    with pytest.raises(JobError, match="cannot be combined with provider 'sim'"):
        load_job(input=prompts, model="m", provider="sim", base_url="http://127.0.0.1:1/v1")


def test_simulator_table_is_checked(tmp_path, prompts):
    job_file = write_job(tmp_path, 'input = "prompts.csv"\nmodel = "m"\nprovider = "sim"\n[simulator]\nlatncy_ms = 5\n')
    with pytest.raises(JobError, match="did you mean 'latency_ms'"):
        load_job(job_file)


@pytest.mark.parametrize(
    ("flag", "part", "name", "read"),
    [
        ("--concurrency", "Limits", "concurrency", lambda job: job.limits.concurrency),
        ("--max-attempts", "RetryPolicy", "max_attempts", lambda job: job.retry.max_attempts),
        ("--timeout", "RetryPolicy", "timeout_s", lambda job: job.retry.timeout_s),
        ("--grace", "Resume", "grace_s", lambda job: job.resume.grace_s),
        ("--invalid-retries", "Answers", "invalid_retries", lambda job: job.answers.invalid_retries),
        ("--score", "Scoring", "method", lambda job: job.scoring.method),
        ("--poll-every", "BatchAPI", "poll_s", lambda job: job.batch.poll_s),
    ],
)
def test_a_settings_default_is_the_same_in_the_help_a_job_file_and_the_library(tmp_path, flag, part, name, read):
    """Defaults were written in the job's parts, again in the job-file reader and again in the
    flags' help: the help said 300 s where a changed part would have waited otherwise. Each is now
    read from the part that holds it; this checks all three say the same."""
    import batchchat.job.spec as spec
    from batchchat.cli.commands import run

    value = spec.default(getattr(spec, part), name)
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    option = next(p for p in run.params if flag in p.opts)
    assert f"[default: {shown}" in " ".join((option.help or "").split()), option.help
    # A batch run against a remote endpoint, so that every part is in use (the simulator polls faster).
    settings = {"model": "m", "base_url": "https://api.example.com/v1", "batch_api": True}
    job_file = tmp_path / "job.toml"
    job_file.write_text('model = "m"\nbase_url = "https://api.example.com/v1"\nbatch_api = true\n', encoding="utf-8")
    assert read(load_job(None, check_key=False, **settings)) == value
    assert read(load_job(job_file, check_key=False)) == value


def test_the_default_of_a_setting_that_is_not_there_is_refused():
    import batchchat.job.spec as spec

    with pytest.raises(AssertionError):
        spec.default(spec.Limits, "nothing")
