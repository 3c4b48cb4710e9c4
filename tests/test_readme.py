"""README's example outputs are what the commands it shows print: each is run here and compared,
with only what changes from run to run (the time of day, durations, latencies) left out."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from .helpers import cli_subprocess

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = re.compile(r"[^\n]*`(batchchat [^`]+)`[^\n]*(?:\n[^\n`]+)*:\n\n```text\n(.*?)```", re.S)


def examples() -> list[tuple[str, str]]:
    """(command, the output README shows for it) of each output block README introduces with its command."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return [(found[1], found[2]) for found in EXAMPLE.finditer(readme)]


def steady(text: str) -> list[str]:
    """The lines, without what no two runs share."""
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "<when>", text)
    text = re.sub(r" in \d[\d,.]* (s|min|h)\b", " in <time>", text)
    text = re.sub(r"(\d+\.\d\d)(?=\s+\d+\.\d\d\s+[\d,]+\s+\$)", "<p50>", text)  # the latency columns of a table
    text = re.sub(r"<p50>\s+\d+\.\d\d", "<p50> <p95>", text)
    return [" ".join(line.split()) for line in text.strip().splitlines()]


def test_readme_introduces_its_example_outputs_with_their_commands() -> None:
    shown = [command for command, _ in examples()]
    assert "batchchat run jobs/eval-models.toml --provider sim" in shown
    assert "batchchat run jobs/label-sentiment.toml --provider sim -q" in shown


@pytest.mark.parametrize(("command", "output"), examples(), ids=[c for c, _ in examples()])
def test_each_example_output_is_what_its_command_prints(tmp_path: Path, command: str, output: str) -> None:
    shutil.copytree(ROOT / "jobs", tmp_path / "jobs", ignore=shutil.ignore_patterns("*.parquet", "*.journal"))
    ran = cli_subprocess(*shlex.split(command)[1:], cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    printed = steady(ran.stderr + ran.stdout)
    for line in steady(output):
        assert line in printed, f"README shows {line!r}; {command} printed:\n" + "\n".join(printed)
