"""Job settings for evaluation and labeling: fan-out, row options, answers, scoring, prices."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchchat.cli.commands import flag_name
from batchchat.core.errors import JobError
from batchchat.job.jobfile import build_job, load_job
from batchchat.job.spec import Price, Variant


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "in.csv").write_text("prompt,expected\nhi,x\n", encoding="utf-8")
    return tmp_path


def job_file(folder: Path, body: str) -> Path:
    path = folder / "job.toml"
    path.write_text('input = "in.csv"\nprovider = "sim"\n' + body, encoding="utf-8")
    return path


def test_models_and_variants_make_the_fanout(folder: Path) -> None:
    job = load_job(job_file(folder, """
models = ["a", "b"]
temperature = 0.5
max_tokens = 10
[[variants]]
name = "cold"
temperature = 0
[[variants]]
temperature = 0.9
seed = 3
"""))  # fmt: skip
    assert job.models == ("a", "b") and job.model == "a"
    assert job.variants == (
        Variant("cold", (("temperature", 0),)),
        Variant("seed=3,temperature=0.9", (("seed", 3), ("temperature", 0.9))),
    )
    assert job.fanout == 4
    assert dict(job.params) == {"temperature": 0.5, "max_tokens": 10}


def test_a_model_list_and_a_model_flag(folder: Path) -> None:
    assert load_job(job_file(folder, 'model = ["a", "b"]\n')).models == ("a", "b")
    path = job_file(folder, 'models = ["a", "b"]\n')
    assert build_job(path, {"model": "c"}, flag_name).models == ("c",)  # the flag wins over the file's list


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('model = "a"\nmodels = ["b"]\n', "both 'model' in"),
        ('models = ["a", "a"]\n', "names 'a' more than once"),
        ('models = []\n', "must be a model name or a list"),
        ('model = "a"\n[[variants]]\nname = "x"\n[[variants]]\nname = "x"\n', "variant name(s) 'x' used twice"),
        ('model = "a"\n[[variants]]\nmodel = "b"\n', "request option 'model' cannot be set ('variants' in"),
        ('model = "a"\n[[variants]]\nn = 2\n', "n must be 1"),
        ('model = "a"\nvariants = 3\n', "must be a list of tables"),
        ('model = "a"\noption_columns = ["messages"]\n', "request option 'messages' cannot be set"),
        ('model = "a"\nlabels = ["Yes", "yes."]\n', "labels 'Yes' and 'yes.' are the same"),
        ('model = "a"\nlabels = ["!!"]\n', "has no letters or digits"),
        ('model = "a"\nlabels = ["a"]\njson_schema = { type = "object" }\n', "use one (for a label inside a JSON answer"),
        ('model = "a"\njson_schema = { type = "object" }\nresponse_format = { type = "json_object" }\n', "keep one"),
        ('model = "a"\nresponse_format = { type = "json_schema" }\n', "needs its schema under json_schema.schema"),
        ('model = "a"\nresponse_format = { type = "yaml" }\n', "'type' must be json_object, json_schema or text"),
        ('model = "a"\njson_schema = { type = "object", properties = { a = { type = "string", format = "x", minContains = 1 } } }\n',
         "'minContains' at $.a is not supported"),
        ('model = "a"\nscore = "exact"\n', "needs the column of expected answers"),
        ('model = "a"\nexpected_column = "expected"\nscore = "fuzzy"\n', "unknown score 'fuzzy'"),
        ('model = "a"\n[prices]\na = { input = 1 }\n', "must be { input = USD, output = USD }"),
        ('model = "a"\n[prices]\na = { input = -1, output = 1 }\n', "must be at least 0"),
        ('model = "a"\nmax_cost = 1\n', "needs the price of every model, and 'a' has none"),
        ('model = "a"\nturns_column = "t"\ntemplate = "{prompt}"\n', "has nothing to add"),
        ('model = "a"\ninvalid_retries = -1\n', "must be at least 0"),
        ('model = "a"\n[params]\nresponse_format = { type = "json_object" }\n[json_schema]\ntype = "object"\n',
         "response_format is set both"),
    ],
)  # fmt: skip
def test_bad_evaluation_settings_name_the_setting(folder: Path, body: str, message: str) -> None:
    with pytest.raises(JobError) as caught:
        load_job(job_file(folder, body))
    assert message in str(caught.value)


def test_json_schema_becomes_the_response_format_sent_with_every_request(folder: Path) -> None:
    job = load_job(
        job_file(
            folder,
            'model = "a"\ninvalid_retries = 4\n[json_schema]\ntype = "object"\nproperties = { x = { type = "integer" } }\n',
        )
    )
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    assert dict(job.params)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema},
    }
    assert job.answers.schema == schema and job.answers.json_required and job.answers.invalid_retries == 4


def test_a_response_format_in_params_is_checked_like_one_on_its_own(folder: Path) -> None:
    job = load_job(job_file(folder, 'model = "a"\n[params]\nresponse_format = { type = "json_object" }\n'))
    assert job.answers.json_required and job.answers.schema is None
    assert dict(job.params)["response_format"] == {"type": "json_object"}


def test_labels_rows_options_scoring_and_prices(folder: Path) -> None:
    job = load_job(job_file(folder, """
model = "m/x"
labels = ["positive", "negative"]
option_columns = { max_tokens = "limit" }
options_column = "opts"
expected_column = "expected"
score = "contains"
max_cost = 2.5
max_tokens = 64
[prices]
"m/x" = { input = 0.5, output = 1.5 }
"""))  # fmt: skip
    assert job.answers.labels == ("positive", "negative") and job.answers.checked
    assert job.row_options.columns == (("max_tokens", "limit"),) and job.row_options.json_column == "opts"
    assert (job.scoring.expected_column, job.scoring.method) == ("expected", "contains")
    assert job.prices.get("m/x") == Price(0.5, 1.5) and job.prices.get("other") is None
    assert job.max_cost == 2.5
    assert Price(0.5, 1.5).cost(1_000_000, 2_000_000) == pytest.approx(3.5)


def test_flags_for_labels_and_option_columns(folder: Path) -> None:
    job = build_job(None, {"input": str(folder / "in.csv"), "model": "m", "provider": "sim",
                           "labels": "yes, no", "option_columns": ["max_tokens"]}, flag_name)  # fmt: skip
    assert job.answers.labels == ("yes", "no")
    assert job.row_options.columns == (("max_tokens", "max_tokens"),)


def test_a_dry_run_needs_no_api_key_but_a_run_does(folder: Path) -> None:
    settings = {"input": str(folder / "in.csv"), "model": "m", "provider": "together"}
    with pytest.raises(JobError, match="TOGETHER_API_KEY is not set"):
        build_job(None, settings, flag_name)
    assert build_job(None, settings, flag_name, check_key=False).endpoint.api_key_env == "TOGETHER_API_KEY"
