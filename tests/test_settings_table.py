"""Each setting declared once (``settings.TABLE``): the flags of `run` and `chat`, the job file's
keys, the library's keywords, the help's groups and the checks' messages all follow the table."""

import pytest

from batchchat.cli.commands import OPTION_GROUPS, chat, run
from batchchat.core.errors import JobError
from batchchat.job.jobfile import load_job
from batchchat.job.settings import FLAG, FLOAT, INT, SETTINGS, TABLE, flag_name
from tests.helpers import cli, write_csv

COMMAND_ONLY = {"job_file", "dry_run", "report", "quiet", "progress_every", "debug", "prompt", "save", "help"}


def options(command):
    return {param.name: param for param in command.params if param.name not in COMMAND_ONLY}


@pytest.mark.parametrize("command", [run, chat], ids=["run", "chat"])
def test_every_flag_is_a_setting_of_the_table_spelled_and_helped_as_it_says(command):
    shown = options(command)
    expected = {s.name for s in TABLE if s.flags and (command is run or s.chat)}
    assert set(shown) == expected
    for setting in TABLE:
        if setting.name not in shown:
            continue
        option = shown[setting.name]
        assert set(option.opts) | set(option.secondary_opts) == {
            f for spelled in setting.flags for f in spelled.split("/")}  # fmt: skip
        help_text = setting.chat if command is chat and isinstance(setting.chat, str) else setting.help_text
        assert option.help == help_text


def test_the_help_groups_are_the_tables():
    grouped = {name: group for group, names in OPTION_GROUPS.items() for name in names}
    for setting in TABLE:
        if setting.flags and setting.group is not None:
            assert grouped[setting.name] == setting.group
    result = cli("run", "--help")
    assert result.exit_code == 0
    order = [result.output.index(f"{group}:") for group in OPTION_GROUPS]
    assert order == sorted(order)


def test_every_setting_is_a_job_file_key_and_a_keyword_and_nothing_else_is(tmp_path):
    assert set(SETTINGS) == {s.name for s in TABLE}
    (tmp_path / "job.toml").write_text('model = "m"\nconcurency = 3\n', encoding="utf-8")
    with pytest.raises(JobError, match="unknown key 'concurency'; did you mean 'concurrency'"):
        load_job(tmp_path / "job.toml")
    with pytest.raises(JobError, match="unknown setting concurency=; did you mean 'concurrency'"):
        load_job(model="m", concurency=3)


BOUNDED = [s for s in TABLE if s.kind in (INT, FLOAT) and s.low is not None and s.flags]


@pytest.mark.parametrize("setting", BOUNDED, ids=[s.name for s in BOUNDED])
def test_a_value_under_a_settings_bound_is_refused_the_same_way_by_flag_file_and_keyword(setting, tmp_path, sim):
    """The bound is the table's, whichever way the value came, and the message names the setting
    as its user wrote it."""
    low = setting.low - 1 if setting.kind == INT else setting.low - 0.5
    value = int(low) if setting.kind == INT else low
    source = write_csv(tmp_path / "in.csv", ["prompt"], [["hi"]])
    base = {"input": str(source), "model": "m", "provider": "sim"}
    extra = {"batch_api": True} if setting.group and setting.group.startswith("Provider batches") else {}
    extra |= {"ray": True} if setting.name == "ray_workers" else {}
    extra |= {"prices": {"m": {"input": 1, "output": 1}}, "max_tokens": 10} if setting.name == "max_cost" else {}
    with pytest.raises(JobError) as keyword:
        load_job(**base, **extra, **{setting.name: value})
    assert str(keyword.value).startswith(f"{setting.name}= must be at least {setting.low:g}")
    job_file = tmp_path / "job.toml"
    job_file.write_text(f'{setting.name} = {value!r}\n', encoding="utf-8")
    with pytest.raises(JobError) as in_file:
        load_job(job_file, **base, **extra)
    assert str(in_file.value).startswith(f"'{setting.name}' in {job_file} must be at least {setting.low:g}")
    flags = ["--batch-api"] if "batch_api" in extra else []
    flags += ["--ray"] if "ray" in extra else []
    flags += ["--price", "m=1,1", "--max-tokens", "10"] if "prices" in extra else []
    result = cli("run", "-i", source, "-m", "m", "--provider", "sim", *flags, f"{setting.shown}={value}")
    assert result.exit_code == 2
    assert f"{flag_name(setting.name)} must be at least {setting.low:g}" in result.stderr, result.stderr


def test_an_unset_setting_takes_the_tables_default():
    job = load_job(model="m", provider="sim")
    read = {"concurrency": job.limits.concurrency, "max_attempts": job.retry.max_attempts,
            "timeout": job.retry.timeout_s, "grace": job.resume.grace_s, "stream": job.stream, "dedup": job.dedup,
            "invalid_retries": job.answers.invalid_retries, "score": job.scoring.method}  # fmt: skip
    table = {s.name: s.default for s in TABLE}
    assert read == {name: table[name] for name in read}
    assert {s.name for s in TABLE if s.kind == FLAG and s.default is None} >= {"restart", "batch_api"}


def test_every_setting_of_the_table_is_read_by_the_job_reader():
    """A setting declared and never read would be accepted and do nothing."""
    from pathlib import Path

    import batchchat.job.jobfile as jobfile

    code = Path(jobfile.__file__).read_text(encoding="utf-8")
    unread = [s.name for s in TABLE if f'"{s.name}"' not in code and f"'{s.name}'" not in code]
    assert not unread, unread


def test_the_table_formats_readers_and_writers_name_the_same_formats():
    from batchchat.core.tableformats import FORMATS
    from batchchat.input.source import READERS
    from batchchat.output.sink import WRITERS

    assert set(READERS) == set(WRITERS) == {table.name for table in FORMATS}
