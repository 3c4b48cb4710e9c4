"""Evaluation and labeling jobs end to end, over HTTP against the simulator."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

import batchchat
from batchchat.core.words import dollars as money
from batchchat.simulator import BackgroundSimulator
from batchchat.store.stats import percentile

from .helpers import cli, read_output, write_csv

LABELS = ["positive", "negative", "neutral"]


def eval_job(folder: Path, url: str, extra: str = "", rows: int = 50) -> Path:
    rng = random.Random(7)
    write_csv(folder / "reviews.csv", ["id", "text", "expected"],
              [[str(i), f"review {i}", rng.choice(LABELS)] for i in range(rows)])  # fmt: skip
    path = folder / "eval.toml"
    path.write_text(f"""
input = "reviews.csv"
output = "eval.parquet"
base_url = "{url}"
models = ["sim-chat", "sim-chat-large"]
template = "Sentiment of: {{text}}"
labels = {json.dumps(LABELS)}
expected_column = "expected"
max_tokens = 8
[[variants]]
name = "t0"
temperature = 0
[[variants]]
name = "t07"
temperature = 0.7
[prices]
"sim-chat" = {{ input = 0.2, output = 0.6 }}
"sim-chat-large" = {{ input = 1.0, output = 3.0 }}
{extra}""", encoding="utf-8")  # fmt: skip
    return path


def test_two_models_by_two_variants_give_every_row_four_scored_rows_and_a_summary_per_model(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(labels=tuple(LABELS))
    result = cli("run", eval_job(tmp_path, sim.url))
    assert result.exit_code == 0, result.stderr
    rows = read_output(tmp_path / "eval.parquet")
    assert len(rows) == 200
    assert [(r["id"], r["model"], r["variant"]) for r in rows[:5]] == [
        ("0", "sim-chat", "t0"), ("0", "sim-chat", "t07"), ("0", "sim-chat-large", "t0"),
        ("0", "sim-chat-large", "t07"), ("1", "sim-chat", "t0"),
    ]  # fmt: skip
    assert [r["id"] for r in rows] == [str(i) for i in range(50) for _ in range(4)]
    for row in rows:
        assert row["status"] == "ok" and row["label"] in LABELS
        assert row["score"] == (1.0 if row["label"] == row["expected"] else 0.0)
    assert {r["score"] for r in rows} == {0.0, 1.0}
    # every request carried its variant's options over the job's, and each was sent once
    bodies = [r["body"] for r in sim.requests]
    assert len(bodies) == 200
    assert Counter((b["model"], b["temperature"], b["max_tokens"]) for b in bodies) == {
        ("sim-chat", 0, 8): 50, ("sim-chat", 0.7, 8): 50, ("sim-chat-large", 0, 8): 50, ("sim-chat-large", 0.7, 8): 50,
    }  # fmt: skip
    # the summary has one line per model and variant, with its accuracy and its share of the cost
    for model, variant in [
        ("sim-chat", "t0"),
        ("sim-chat", "t07"),
        ("sim-chat-large", "t0"),
        ("sim-chat-large", "t07"),
    ]:
        group = [r for r in rows if r["model"] == model and r["variant"] == variant]
        accuracy = sum(r["score"] for r in group) / 50
        line = next(line for line in result.stderr.splitlines() if line.split()[:2] == [model, variant])
        assert f"{accuracy:.1%} of 50" in line, line
        assert line.split()[2:5] == ["50", "50", "0"]
        tokens = sum(r["total_tokens"] for r in group)
        price_in, price_out = (0.2, 0.6) if model == "sim-chat" else (1.0, 3.0)
        cost = sum(r["prompt_tokens"] * price_in + r["completion_tokens"] * price_out for r in group) / 1e6
        latencies = sorted(r["latency_s"] for r in group)
        assert line.split()[-4:] == [f"{percentile(latencies, 50):.2f}", f"{percentile(latencies, 95):.2f}",
                                     f"{tokens:,}", money(cost)]  # fmt: skip
    prompt = sum(r["prompt_tokens"] for r in rows if r["model"] == "sim-chat")
    completion = sum(r["completion_tokens"] for r in rows if r["model"] == "sim-chat")
    large_prompt = sum(r["prompt_tokens"] for r in rows if r["model"] == "sim-chat-large")
    large_completion = sum(r["completion_tokens"] for r in rows if r["model"] == "sim-chat-large")
    cost = (prompt * 0.2 + completion * 0.6 + large_prompt * 1.0 + large_completion * 3.0) / 1e6
    assert f"cost ${cost:.4f}" in result.stderr


def test_a_labeling_job_with_a_fifth_of_answers_invalid_ends_with_every_row_labeled_or_invalid_label(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(labels=tuple(LABELS), invalid_rate=0.2, seed=3)
    write_csv(tmp_path / "inbox.csv", ["prompt"], [[f"message {i}"] for i in range(300)])
    result = cli("run", "-i", tmp_path / "inbox.csv", "-o", tmp_path / "labels.csv", "-m", "sim-chat",
                 "--base-url", sim.url, "--labels", ",".join(LABELS), "--invalid-retries", "2")  # fmt: skip
    rows = read_output(tmp_path / "labels.csv")
    assert len(rows) == 300
    labeled = [r for r in rows if r["status"] == "ok"]
    invalid = [r for r in rows if r["status"] == "error"]
    assert all(r["label"] in LABELS for r in labeled)
    assert all(r["error_type"] == "invalid_label" and r["label"] == "" for r in invalid)
    assert len(labeled) + len(invalid) == 300
    # 0.2^3: about 2 rows in 300 stay invalid after their two re-asks; a fifth were asked again
    assert 0 < len(invalid) < 10
    assert all(r["attempts"] == "3" and r["response"] == "I am not sure which fits." for r in invalid)
    assert "is none of the labels positive, negative, neutral" in invalid[0]["error"]
    asked_again = [r for r in labeled if int(r["attempts"]) > 1]
    assert 30 < len(asked_again) < 100
    assert len(sim.requests) == sum(int(r["attempts"]) for r in rows)
    assert result.exit_code == 1
    assert "invalid_label" in result.stderr


def test_every_answer_a_row_paid_for_counts_in_its_tokens(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(labels=tuple(LABELS), invalid_rate=0.5, seed=4)
    write_csv(tmp_path / "in.csv", ["prompt"], [[f"p{i}"] for i in range(40)])
    result = cli("run", "-i", tmp_path / "in.csv", "-o", tmp_path / "out.jsonl", "-m", "sim-chat",
                 "--base-url", sim.url, "--labels", ",".join(LABELS), "--invalid-retries", "3")  # fmt: skip
    rows = read_output(tmp_path / "out.jsonl")
    one_prompt = 4 + 1  # the simulator's count for a two-character prompt
    assert {r["attempts"] for r in rows} >= {1, 2}
    for row in rows:
        assert row["prompt_tokens"] == row["attempts"] * one_prompt
        assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]
    prompt = sum(r["prompt_tokens"] for r in rows)
    assert prompt == len(sim.requests) * one_prompt
    assert (
        f"tokens this run: {prompt:,} prompt + {sum(r['completion_tokens'] for r in rows):,} completion"
        in result.stderr
    )


def test_re_asks_are_counted_in_tokens_and_attempts(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(labels=tuple(LABELS), invalid_rate=0.5, seed=1)
    write_csv(tmp_path / "in.csv", ["prompt"], [[f"p{i}"] for i in range(40)])
    cli("run", "-i", tmp_path / "in.csv", "-o", tmp_path / "out.jsonl", "-m", "sim-chat", "--base-url", sim.url,
        "--labels", ",".join(LABELS), "--invalid-retries", "0")  # fmt: skip
    rows = read_output(tmp_path / "out.jsonl")
    assert len(sim.requests) == 40  # no re-asks at all
    assert all(r["attempts"] == 1 for r in rows)
    assert {r["error_type"] for r in rows} == {None, "invalid_label"}


SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"type": "string", "enum": LABELS}, "confidence": {"type": "number"},
                   "stars": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["sentiment", "stars"],
}  # fmt: skip


def test_structured_output_fields_become_typed_columns_and_bad_json_ends_as_invalid_output(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(invalid_rate=0.5, seed=2)
    write_csv(tmp_path / "in.csv", ["prompt"], [[f"review {i}"] for i in range(60)])
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    result = cli("run", "-i", tmp_path / "in.csv", "-o", tmp_path / "out.parquet", "-m", "sim-chat",
                 "--base-url", sim.url, "--json-schema", tmp_path / "schema.json", "--invalid-retries", "1")  # fmt: skip
    schema = pq.read_schema(tmp_path / "out.parquet")
    assert [(f.name, str(f.type)) for f in schema][-5:] == [
        ("out_sentiment", "string"),
        ("out_confidence", "double"),
        ("out_stars", "int64"),
        ("cost", "double"),
        ("paid", "string"),
    ]
    frame = pd.read_parquet(tmp_path / "out.parquet")
    ok = frame[frame.status == "ok"]
    assert len(ok) > 30
    assert set(ok.out_sentiment) <= set(LABELS) and ok.out_stars.between(1, 5).all()
    for _, row in ok.iterrows():
        assert json.loads(row.response)["stars"] == row.out_stars
    bad = frame[frame.status == "error"]
    assert len(bad) > 0 and set(bad.error_type) == {"invalid_output"}
    assert bad.response.notna().all()  # the raw answer is kept
    assert bad.out_sentiment.isna().all()
    assert (bad.attempts == 2).all()
    # every request asked for the schema, the OpenAI way
    body = sim.requests[0]["body"]
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}
    assert result.exit_code == 1


def test_per_row_options_from_columns_and_from_a_json_column(tmp_path: Path, sim: BackgroundSimulator) -> None:
    write_csv(tmp_path / "in.csv", ["prompt", "max_tokens", "opts"], [
        ["a", "3", '{"temperature": 0.1, "stop": ["\\n"]}'],
        ["b", "", '{"max_tokens": 9}'],
        ["c", "5", ""],
    ])  # fmt: skip
    job = tmp_path / "job.toml"
    job.write_text(f'input = "in.csv"\noutput = "out.jsonl"\nmodel = "m"\nbase_url = "{sim.url}"\n'
                   'temperature = 0.5\noption_columns = ["max_tokens"]\noptions_column = "opts"\n', encoding="utf-8")  # fmt: skip
    assert cli("run", job).exit_code == 0
    bodies = {r["body"]["messages"][-1]["content"]: r["body"] for r in sim.requests}
    assert {k: v for k, v in bodies["a"].items() if k not in ("model", "messages")} == {
        "temperature": 0.1,
        "stop": ["\n"],
        "max_tokens": 3,
    }
    assert bodies["b"]["max_tokens"] == 9 and bodies["b"]["temperature"] == 0.5
    assert bodies["c"]["max_tokens"] == 5 and isinstance(bodies["c"]["max_tokens"], int)
    rows = read_output(tmp_path / "out.jsonl")
    assert rows[0]["completion_tokens"] == 3 and rows[0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        (["x", "many", ""], "in.csv, row 2, column 'max_tokens': request option 'max_tokens' must be a whole number"),
        (["x", "", '{"model": "other"}'], "in.csv, row 2, column 'opts': request option 'model' cannot be set per row"),
        (["x", "", "{max_tokens: 3}"], "in.csv, row 2, column 'opts': not valid JSON"),
        (["x", "", "[1]"], "in.csv, row 2, column 'opts': expected a JSON object"),
        (["x", "", '{"top_p": 3}'], "request option 'top_p' must be a number from 0 to 1"),
        (["x", "", '{"min_p": NaN}'], "column 'opts': request option 'min_p' must be a finite number"),
        (["x", "", '{"logit_bias": {"50256": -Infinity}}'], "request option 'logit_bias' must be a finite number"),
    ],
)
def test_bad_row_options_stop_the_job_before_any_request(
    tmp_path: Path, sim: BackgroundSimulator, cells: list[str], message: str
) -> None:
    write_csv(tmp_path / "in.csv", ["prompt", "max_tokens", "opts"], [["fine", "4", ""], cells])
    (tmp_path / "out.csv").write_text("old", encoding="utf-8")
    result = cli("run", "-i", tmp_path / "in.csv", "-o", tmp_path / "out.csv", "-m", "m", "--base-url", sim.url,
                 "--option-column", "max_tokens", "--options-column", "opts")  # fmt: skip
    assert result.exit_code == 2
    assert message in result.stderr
    assert sim.requests == []
    assert (tmp_path / "out.csv").read_text(encoding="utf-8") == "old"


@pytest.mark.parametrize(
    ("method", "expected", "scores"),
    [
        ("exact", ["Paris", "Lyon", "paris", ""], [1.0, 0.0, 0.0, None]),
        ("contains", ["paris", "berlin", "France", "x"], [1.0, 0.0, 1.0, 1.0]),
        ("regex", ["^Par", "\\d+", "Fr.nce$", "^x$"], [1.0, 0.0, 1.0, 1.0]),
        ("json_equal", ['"Paris"', '"Lyon"', '{"b": 2, "a": [1]}', "null"], [1.0, 0.0, 1.0, 0.0]),
    ],
)
def test_each_score_method_end_to_end(
    tmp_path: Path, sim: BackgroundSimulator, method: str, expected: list[str], scores: list[float | None]
) -> None:
    replies = ['"Paris"' if method == "json_equal" else "Paris", "Paris", '{"a": [1.0], "b": 2}'
               if method == "json_equal" else "Paris, France", "x"]  # fmt: skip
    write_csv(tmp_path / "in.csv", ["q", "reply", "expected"],
              [[f"q{i}", reply, want] for i, (reply, want) in enumerate(zip(replies, expected, strict=True))])  # fmt: skip
    result = cli("run", "-i", tmp_path / "in.csv", "-o", tmp_path / "out.jsonl", "-m", "m", "--base-url", sim.url,
                 "--template", "{q} [sim:reply={reply}]", "--expected-column", "expected", "--score", method)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rows = read_output(tmp_path / "out.jsonl")
    assert [r["response"] for r in rows] == replies
    assert [r["score"] for r in rows] == scores
    assert "accuracy" in result.stderr


def test_a_bad_regex_in_the_expected_column_is_refused_before_sending(tmp_path: Path, sim: BackgroundSimulator) -> None:
    write_csv(tmp_path / "in.csv", ["prompt", "expected"], [["a", "ok"], ["b", "(unclosed"]])
    result = cli("run", "-i", tmp_path / "in.csv", "-o", tmp_path / "o.csv", "-m", "m", "--base-url", sim.url,
                 "--expected-column", "expected", "--score", "regex")  # fmt: skip
    assert result.exit_code == 2
    assert "in.csv, row 2, column 'expected': not a valid regular expression" in result.stderr
    assert sim.requests == []


def test_derived_column_names_must_not_clash_with_input_columns(tmp_path: Path, sim: BackgroundSimulator) -> None:
    write_csv(tmp_path / "in.csv", ["prompt", "label"], [["a", "x"]])
    result = cli("run", "-i", tmp_path / "in.csv", "-o", tmp_path / "o.csv", "-m", "m", "--base-url", sim.url,
                 "--labels", "x,y")  # fmt: skip
    assert result.exit_code == 2 and "'label'" in result.stderr and "rename them" in result.stderr


def test_run_frame_fans_out_and_adds_the_derived_columns(sim_factory: Any) -> None:
    sim = sim_factory(labels=("yes", "no"))
    frame = pd.DataFrame({"prompt": ["a", "b", "c"], "gold": ["yes", "no", "yes"]}, index=[10, 20, 30])
    out = batchchat.run_frame(frame, model=["sim-chat", "sim-chat-large"], base_url=sim.url, labels=["yes", "no"],
                              expected_column="gold")  # fmt: skip
    assert list(out.index) == [10, 10, 20, 20, 30, 30]
    assert list(out.model) == ["sim-chat", "sim-chat-large"] * 3
    assert set(out.label) <= {"yes", "no"}
    assert list(out.score) == [1.0 if label == gold else 0.0 for label, gold in zip(out.label, out.gold, strict=True)]


def test_the_nightly_labeling_job_is_safe_to_repeat_and_labels_only_new_rows(tmp_path: Path) -> None:
    import shutil

    from .helpers import cli_subprocess

    root = Path(__file__).resolve().parent.parent
    shutil.copytree(root / "jobs", tmp_path / "jobs", ignore=shutil.ignore_patterns("*.parquet", "*.journal"))
    night = ("run", "jobs/label-sentiment.toml", "--provider", "sim")
    first = cli_subprocess(*night, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    labeled = read_output(tmp_path / "jobs" / "reviews_labeled.parquet")
    assert len(labeled) == 20 and all(r["label"] in LABELS for r in labeled)
    again = cli_subprocess(*night, cwd=tmp_path)
    assert again.returncode == 0
    assert "nothing to send" in again.stderr
    relabeled = read_output(tmp_path / "jobs" / "reviews_labeled.parquet")
    assert {r.pop("paid") for r in relabeled} == {"earlier_run"} and {r.pop("paid") for r in labeled} == {"this_run"}
    assert relabeled == labeled
    with (tmp_path / "jobs" / "reviews.csv").open("a", encoding="utf-8") as f:
        f.write("r021,Works as advertised.\nr022,Awful.\n")
    third = cli_subprocess(*night, cwd=tmp_path)
    assert third.returncode == 0
    assert "20 rows answered by an earlier run (journal); 2 requests to send" in third.stderr
    rows = read_output(tmp_path / "jobs" / "reviews_labeled.parquet")
    assert [r.pop("paid") for r in rows] == ["earlier_run"] * 20 + ["this_run"] * 2
    assert rows[:20] == labeled and len(rows) == 22 and rows[21]["label"] in LABELS


def test_the_fan_out_shares_one_concurrency_limit(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(latency_ms=40, labels=tuple(LABELS))
    result = cli("run", eval_job(tmp_path, sim.url, rows=6), "--concurrency", "3")
    assert result.exit_code == 0
    assert len(sim.requests) == 24
    assert sim.stats()["max_in_flight"] == 3  # not 3 per model or per variant


@pytest.mark.parametrize("engine", [[], ["--batch-api", "--sim", "batch_seconds=0.1"]])
def test_an_offline_evaluation_on_the_simulator_plays_each_model_right_at_its_own_rate(tmp_path: Path,
                                                                                      engine: list[str]) -> None:  # fmt: skip
    """The expected answers the plan gathers reach the simulator the engine starts: a larger model
    gets more rows right, and neither gets none or all, live and in provider batches."""
    rng = random.Random(3)
    source = write_csv(tmp_path / "in.csv", ["text", "expected"],
                       [[f"review {i}", rng.choice(LABELS)] for i in range(120)])  # fmt: skip
    output = tmp_path / "out.csv"
    result = cli("run", "-i", source, "-o", output, "--provider", "sim", "-m", "sim-1b", "-m", "sim-70b",
                 "--template", "Sentiment of: {text}", "--labels", ",".join(LABELS), "--expected-column", "expected",
                 *engine)  # fmt: skip
    assert result.exit_code in (0, 1), result.stderr
    scores: dict[str, list[float]] = {}
    for row in read_output(output):
        scores.setdefault(row["model"], []).append(float(row["score"] or 0))
    share = {model: sum(values) / len(values) for model, values in scores.items()}
    # 1B is right about 45% of the time and 70B about 78%; told nothing, both would pick a label at random (1/3)
    assert share["sim-70b"] > 0.65 and 0.38 < share["sim-1b"] < share["sim-70b"] - 0.15, share
