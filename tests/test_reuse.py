"""A trial written elsewhere, and what a later run reuses of it: exactly what README says."""

from __future__ import annotations

from pathlib import Path

from batchchat.simulator import BackgroundSimulator

from .helpers import cli, read_output, write_csv


def hundred(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "in.csv", ["prompt"], [[f"question {i}"] for i in range(100)])


def test_a_trial_written_elsewhere_is_reused_when_named_and_then_kept_by_the_new_output(
    tmp_path: Path, sim: BackgroundSimulator
) -> None:
    source = hundred(tmp_path)
    common = ("-i", source, "-m", "sim-chat", "--base-url", sim.url)
    trial = cli("run", *common, "--limit", "20", "-o", tmp_path / "trial.parquet")
    assert trial.exit_code == 0
    assert f"not sent again by a run to {tmp_path / 'trial.parquet'}, or to another output given --reuse" in trial.stderr
    full = cli("run", *common, "-o", tmp_path / "full.parquet", "--reuse", tmp_path / "trial.parquet")
    assert full.exit_code == 0, full.stderr
    assert len(sim.requests) == 100  # 20, then the 80 the trial did not answer
    rows = read_output(tmp_path / "full.parquet")
    assert [r["paid"] for r in rows] == ["earlier_run"] * 20 + ["this_run"] * 80
    assert [r["response"] for r in rows[:20]] == [r["response"] for r in read_output(tmp_path / "trial.parquet")]
    (tmp_path / "trial.parquet").unlink()
    (tmp_path / "trial.parquet.journal").unlink()
    again = cli("run", *common, "-o", tmp_path / "full.parquet")  # the copies are this output's own now
    assert again.exit_code == 0 and len(sim.requests) == 100
    assert read_output(tmp_path / "full.parquet") == [{**r, "paid": "earlier_run"} for r in rows]
    unnamed = cli("run", *common, "-o", tmp_path / "other.parquet")  # nothing named, nothing reused: as README says
    assert unnamed.exit_code == 0 and len(sim.requests) == 200


def test_a_run_written_elsewhere_reuses_the_jobs_own_output_and_a_missing_one_is_named(
    tmp_path: Path, sim: BackgroundSimulator
) -> None:
    source = hundred(tmp_path)
    common = ("-i", source, "-m", "sim-chat", "--base-url", sim.url)
    assert cli("run", *common, "--limit", "30").exit_code == 0  # the job's own output: in.out.parquet
    elsewhere = cli("run", *common, "-o", tmp_path / "copy.csv")
    assert elsewhere.exit_code == 0 and len(sim.requests) == 100
    assert "30 rows answered by an earlier run" in elsewhere.stderr
    missing = cli("run", *common, "-o", tmp_path / "x.csv", "--reuse", tmp_path / "nothing.parquet")
    assert missing.exit_code == 2
    assert f"--reuse: {tmp_path / 'nothing.parquet'} has no journal" in missing.stderr
    assert not (tmp_path / "x.csv").exists()


def test_a_dry_run_counts_what_a_run_would_reuse_and_so_sends_what_it_said(
    tmp_path: Path, sim: BackgroundSimulator
) -> None:
    """A dry run read no reused journal: it said all 100 requests were to send (and estimated
    their cost) where the run sent 70. It now opens the store as the run does, --restart too."""
    source = hundred(tmp_path)
    common = ("-i", source, "-m", "sim-chat", "--base-url", sim.url)
    assert cli("run", *common, "--limit", "30", "-o", tmp_path / "trial.parquet").exit_code == 0
    reuse = ("--reuse", tmp_path / "trial.parquet")
    for flags, to_send in [((), 100), (reuse, 70), ((*reuse, "--restart"), 70)]:
        dry = cli("run", *common, "-o", tmp_path / "full.parquet", *flags, "--dry-run")
        assert dry.exit_code == 0 and f"{to_send} requests to send" in dry.stdout, (flags, dry.stdout)
        assert not (tmp_path / "full.parquet.journal").exists()  # a look, writing nothing
    assert len(sim.requests) == 30
    assert cli("run", *common, "-o", tmp_path / "full.parquet", *reuse).exit_code == 0
    assert len(sim.requests) == 100  # the 70 the dry run said
    redo = cli("run", *common, "-o", tmp_path / "full.parquet", "--restart", "--dry-run")
    assert "100 requests to send" in redo.stdout  # its own journal forgotten, as --restart would
    kept = cli("run", *common, "-o", tmp_path / "full.parquet", "--dry-run")
    assert "0 requests to send" in kept.stdout


def test_reusing_the_output_a_restart_forgets_is_refused_before_anything_is_deleted(
    tmp_path: Path, sim: BackgroundSimulator
) -> None:
    """The run deleted the journal (--restart), then failed: "--reuse: out.parquet has no
    journal"; the dry run said 100 requests to send. Both now refuse at once, naming both."""
    source = hundred(tmp_path)
    output = tmp_path / "out.parquet"
    common = ("-i", source, "-m", "sim-chat", "--base-url", sim.url, "-o", output)
    assert cli("run", *common, "--limit", "30").exit_code == 0
    journal = (tmp_path / "out.parquet.journal").read_bytes()
    for dry in ((), ("--dry-run",)):
        refused = cli("run", *common, "--reuse", output, "--restart", *dry)
        assert refused.exit_code == 2, refused.stderr
        assert f"--reuse names {output}, this run's own output, whose journal --restart deletes" in refused.stderr
    assert (tmp_path / "out.parquet.journal").read_bytes() == journal and len(sim.requests) == 30
