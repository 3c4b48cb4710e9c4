"""Helpers the tests share: writing inputs, running the CLI, reading what the simulator saw."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from batchchat.cli.commands import main
from batchchat.simulator import BackgroundSimulator

KEY_VARIABLES = ("TOGETHER_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "TOGETHER_BASE_URL", "OPENAI_BASE_URL",
                 "ANTHROPIC_BASE_URL")


# The report extra (matplotlib) is installed: without it (`pip install '.[test]'`), a test checks
# what it can of a run and leaves the report out.
REPORTS = importlib.util.find_spec("matplotlib") is not None


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def cli(*args: str | Path, input: str | None = None) -> Result:
    """Run the CLI in-process, stderr kept apart from stdout."""
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def cli_subprocess(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None,
                   timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    full_env = {k: v for k, v in os.environ.items() if k not in KEY_VARIABLES}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "batchchat", *map(str, args)],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout,
    )  # fmt: skip


def sent_prompts(server: BackgroundSimulator) -> list[str]:
    """The content of the last message of every request the simulator received."""
    return [r["body"]["messages"][-1]["content"] for r in server.requests]


def read_output(path: Path) -> list[dict[str, Any]]:
    """An output table as a list of rows (CSV cells as text)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_table(path: Path, columns: dict[str, list[Any]]) -> Path:
    """Write the same columns as CSV, Parquet or JSONL, by suffix."""
    names = list(columns)
    rows = [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    if path.suffix == ".csv":
        return write_csv(path, names, [[row[n] for n in names] for row in rows])
    if path.suffix == ".jsonl":
        return write_jsonl(path, rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def hears_ctrl_c() -> None:
    """A child's ``preexec_fn``: Ctrl-C as a terminal would give it. A test run started in the
    background of a script (``pytest ... &``) ignores SIGINT, and its children inherit that:
    Python then installs no KeyboardInterrupt for them (found by a CI started with ``&``)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_child(process: subprocess.Popen[str], timeout: float = 20) -> int:
    """Ctrl-C a child and wait for it to end; one that does not is killed (a failed test leaves
    no server behind), and the failure says how the child held its signals."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        status = Path(f"/proc/{process.pid}/status")
        held = [line for line in status.read_text().splitlines() if line.startswith("Sig")] if status.exists() else []
        process.kill()
        process.wait()
        raise AssertionError(f"the child did not stop within {timeout} s of SIGINT; its signals: {held}") from None
