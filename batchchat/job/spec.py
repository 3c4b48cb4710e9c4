"""What a job is: its frozen parts, each handed to the stage that needs it and to no other.

Loading and checking a job (TOML, flags, keyword arguments) is ``jobfile.py``'s; this module
only says what the parts are, so every stage can import it without pulling in the loading.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..core.errors import JobError
from ..core.reading import lone_surrogate
from .endpoint import Endpoint

# Body fields batchchat sets itself; a user setting them through options would break the run.
RESERVED_PARAMS = {
    "model": "the model is a setting of its own (model)",
    "messages": "messages are built from the input table (prompt column, template or messages column)",
    "stream": "streaming is a setting of its own (stream)",
    "stream_tokens": "streaming is a setting of its own (stream)",
}
SCORES = ("exact", "contains", "regex", "json_equal")
DEFAULT_INVALID_RETRIES = 2
Params = tuple[tuple[str, Any], ...]  # request options, sorted by name: hashable and in a stable order


@dataclass(frozen=True)
class Prompt:
    """How each row becomes messages: [system] + [history from messages_column] + [user prompt]."""

    column: str | None = "prompt"
    template: str | None = None
    messages_column: str | None = None
    system: str | None = None
    turns_column: str | None = None  # a JSON list of user turns, sent one after another
    column_optional: bool = False  # the default prompt column beside a messages column: used where it exists


def default(part: type, name: str) -> Any:
    """The default of a setting, as the part of a job that holds it declares it: the job-file
    reader and the flags' help take it from here, so it is written once (the library's keywords
    are read by the job-file reader)."""
    found = [f.default for f in fields(part) if f.name == name]
    assert found, f"{part.__name__} has no setting {name}"
    return found[0]


@dataclass(frozen=True)
class Limits:
    concurrency: int = 16
    rpm: int | None = None  # requests/min; None adapts to the provider's 429s and headers
    tpm: int | None = None  # tokens/min


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    timeout_s: float = 300.0


@dataclass(frozen=True)
class Resume:
    """What a run does with the journal of earlier runs, and how it stops."""

    restart: bool = False  # discard the journal: send everything again
    retry_errors: bool = False  # send again the requests that ended in error
    grace_s: float = 10.0  # after Ctrl-C or SIGTERM, how long in-flight requests may finish
    # other outputs (or their journals) whose answers this job reuses, as if this output's journal
    # held them: a trial written elsewhere is not paid for again
    reuse: tuple[Path, ...] = ()
    usual: Path | None = None  # the output the job writes without -o, when -o names another: reused too


@dataclass(frozen=True)
class Variant:
    """One set of request options every row is also sent with (``[[variants]]``)."""

    name: str
    params: Params = ()


@dataclass(frozen=True)
class RowOptions:
    """Request options read from each row, over the job's: named columns, or a JSON-object column."""

    columns: tuple[tuple[str, str], ...] = ()  # (request field, input column)
    json_column: str | None = None


@dataclass(frozen=True)
class Answers:
    """What counts as a valid answer. An invalid one is asked again, then ends as an error row."""

    schema: Mapping[str, Any] | None = None  # the JSON schema answers must fit; None for free text
    json_required: bool = False  # response_format asks for JSON (with or without a schema)
    labels: tuple[str, ...] = ()
    invalid_retries: int = DEFAULT_INVALID_RETRIES
    # The request's response_format that asks for this JSON: part of the checks, not of what
    # identifies a request, so a changed schema judges stored answers again rather than re-asking.
    response_format: Mapping[str, Any] | None = None

    @property
    def checked(self) -> bool:
        return self.json_required or bool(self.labels)

    @property
    def signature(self) -> str:
        """Short for the whole contract an answer is judged by. The journal keeps it beside the
        answers a run stored, so a later run with other checks judges those answers again
        instead of trusting a verdict given under the old ones."""
        if not self.checked:
            return "none"
        contract = [self.labels, self.json_required, self.schema, self.invalid_retries]
        text = json.dumps(contract, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def normalize_label(text: str) -> str:
    """Case, whitespace and punctuation do not matter: ' Positive.' is 'positive'."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", text).casefold().split())


@dataclass(frozen=True)
class Scoring:
    expected_column: str | None = None
    method: str = "exact"


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens; ``source`` says where the price came from. A provider batch
    costs ``batch_input``/``batch_output`` where they are known, else the live price less the
    job's batch discount."""

    input: float
    output: float
    source: str = field(default="job", compare=False)
    batch_input: float | None = None
    batch_output: float | None = None

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6

    def in_batch(self, discount: float) -> Price:
        """The price of the same tokens in a provider batch."""
        return Price(
            self.batch_input if self.batch_input is not None else self.input * (1 - discount),
            self.batch_output if self.batch_output is not None else self.output * (1 - discount),
            source=self.source,
        )


Prices = Mapping[str, Price]  # by model
NO_PRICES: Prices = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How the built-in simulator behaves: latency, speed, limits and injected faults."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    tokens_per_s: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    fault_rate: float = 0.0
    seed: int = 0
    labels: tuple[str, ...] = ()  # answer with one of these (a labeling model)
    invalid_rate: float = 0.0  # share of answers that break the labels or the asked-for JSON
    api_key: str | None = None  # when set, requests without this bearer key get 401
    # Like llama.cpp's server as it comes: one request at a time, and a new one cuts the stream in
    # flight short (it just ends: no finish_reason, no [DONE]).
    one_at_a_time: bool = False
    slots: int = 0  # serve this many at once (0: any number); one more stream arriving cuts the oldest short
    # Providers as they really behave: a share of requests answered 429 (retry-after 1) or 503
    # whatever the rate, and a requests/min limit that becomes another some seconds into a run.
    share_429: float = 0.0
    share_503: float = 0.0
    rpm_later: int | None = None
    rpm_change_s: float = 0.0  # after the first request, when rpm_later takes over from rpm
    # Its Batch API: which provider's dialect it speaks, how long a batch takes, and how it fails.
    batch_dialect: str = "together"
    batch_seconds: float = 1.0
    batch_error_rate: float = 0.0  # share of a batch's requests that end as error lines
    batch_expire_at: float | None = None  # the share done when every batch expires
    batch_fail_at: float | None = None  # the share done when every batch fails
    batch_delay_ms: float = 0.0  # before answering each files or batches call
    # Calls that make something, acting late or failing after they acted, as a provider's may:
    batch_upload_delay_ms: float = 0.0  # an upload keeps its file this long after it arrives, then answers
    batch_create_delay_ms: float = 0.0  # a create makes its batch this long after it arrives, then answers
    batch_upload_fails: int = 0  # the first uploads keep their file, then answer 502
    batch_create_fails: int = 0  # the first creates make their batch, then answer 502
    batch_max_lines: int | None = None  # requests a batch may hold, when fewer than the providers' 50,000
    # An offline evaluation: the expected answer of each row (by ``keys.messages_key`` of what it
    # sends), which each model played gets right at a rate of its own, so models compare as real
    # ones would. Filled from the job's expected column for provider sim; never shown.
    expected: Mapping[str, str] | None = field(default=None, compare=False)

    def __repr__(self) -> str:  # the key stays out of logs and tracebacks
        shown = {f: getattr(self, f) for f in self.__slots__ if f not in ("api_key", "expected")}
        return (
            f"SimConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())}, api_key={'***' if self.api_key else None})"
        )


SIM_POLL_S = 0.2  # a batch run against a server on this machine asks this often: it answers in moments


@dataclass(frozen=True)
class BatchAPI:
    """Running the job as provider batches (``batch_api``): about half the price, results within
    a day, no rate limit."""

    enabled: bool = False
    poll_s: float = 30.0  # how often a waiting run asks how its batches stand (SIM_POLL_S on this machine)
    detach: bool = False  # submit and return: a later run collects
    cancel: bool = False  # cancel this output's running batches (and collect what they finished)
    live_retry: bool = False  # the requests that ended in error before go live, not in a batch
    discount: float = 0.5  # a batch's price off the live price, where the price has no batch rate


@dataclass(frozen=True)
class RayCluster:
    """Running the job on Ray (``ray``): workers on a cluster, under one shared set of limits."""

    address: str | None = None  # None: not on Ray; "local": a Ray started for the run; else a cluster's address
    workers: int | None = None  # None: one per CPU the cluster has

    @property
    def enabled(self) -> bool:
        return self.address is not None


def _flag_or_keyword(key: str) -> str:
    return f"{key}="


@dataclass(frozen=True)
class Job:
    models: tuple[str, ...]
    input: Path | None = None
    output: Path | None = None
    prompt: Prompt = field(default_factory=Prompt)
    params: Params = ()
    endpoint: Endpoint = field(default_factory=Endpoint)
    limits: Limits = field(default_factory=Limits)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    resume: Resume = field(default_factory=Resume)
    stream: bool = False
    dedup: bool = True  # identical requests are sent once and their answer given to every row
    simulator: SimConfig = field(default_factory=SimConfig)
    variants: tuple[Variant, ...] = ()  # none: every row is sent once per model, with params
    row_options: RowOptions = field(default_factory=RowOptions)
    answers: Answers = field(default_factory=Answers)
    scoring: Scoring = field(default_factory=Scoring)
    prices: Prices = field(default_factory=lambda: NO_PRICES)  # of the models asked that have one
    max_cost: float | None = None  # US dollars this run may spend
    limit: int | None = None  # only the first input rows: a trial of a large job
    batch: BatchAPI = field(default_factory=BatchAPI)
    ray: RayCluster = field(default_factory=RayCluster)
    # How a setting is named to whoever made the job: a flag (-o/--output) or a keyword (output=).
    names: Callable[[str], str] = field(default=_flag_or_keyword, compare=False, repr=False)

    @property
    def model(self) -> str:
        """The first model (the only one, unless the job fans out)."""
        return self.models[0]

    @property
    def fanout(self) -> int:
        """Output rows per input row: one per model and variant."""
        return len(self.models) * max(1, len(self.variants))

    def required(self, key: str) -> Path:
        """The ``input`` or ``output`` path, which a file run needs."""
        path = self.input if key == "input" else self.output
        if path is None:
            what = "the table" if key == "input" else "a file"
            raise JobError(f"no {key}: give {what} with {self.names(key)} (or '{key}' in a job file)")
        return path

    @property
    def paid_prices(self) -> Prices:
        """What this job pays per model: the batch price when it runs as provider batches."""
        if not self.batch.enabled:
            return self.prices
        return MappingProxyType({model: price.in_batch(self.batch.discount) for model, price in self.prices.items()})

    @property
    def simulator_config(self) -> SimConfig:
        """The simulator a ``sim`` run starts: a simulated labeler answers from the job's labels."""
        if self.answers.labels and not self.simulator.labels:
            return replace(self.simulator, labels=self.answers.labels)
        return self.simulator


def _positive_int(value: Any) -> str | None:
    return (
        None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1
        else "must be a whole number of at least 1"
    )


def _number_in(low: float, high: float | None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value
        ok = ok and (high is None or value <= high)
        if ok:
            return None
        return f"must be a number of at least {low:g}" if high is None else f"must be a number from {low:g} to {high:g}"

    return check


# The request options whose values batchchat checks itself, wherever they are set (job, variant, row).
OPTION_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "max_tokens": _positive_int,
    "temperature": _number_in(0.0, None),
    "top_p": _number_in(0.0, 1.0),
}


def option_problem(name: str, value: Any) -> str | None:
    """What is wrong with a request option, a job's or a row's (None: nothing): out of its
    bounds, or with no JSON form."""
    check = OPTION_CHECKS.get(name)
    return (check(value) if check is not None else None) or not_json(value)


INVALID_TEXT = ("holds text that is not valid Unicode (a lone surrogate such as \\ud83d, half of a character); "
                "fix it, or write it again from valid text")


def not_json(value: Any) -> str | None:
    """What keeps a request option from being sent as JSON (None: nothing). NaN and infinity
    have no JSON form; a date, bytes or any other object has none either (orjson would write
    some of them, the standard library none: a request and its key would disagree)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else "must be a finite number (NaN and Infinity are not JSON)"
    if isinstance(value, str):
        return INVALID_TEXT if lone_surrogate(value) else None
    if value is None or isinstance(value, int):
        return None
    if isinstance(value, list | tuple):
        return next((problem for v in value if (problem := not_json(v)) is not None), None)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return "must be JSON: an object's names are text"
        if any(lone_surrogate(k) for k in value):
            return INVALID_TEXT
        return next((problem for v in value.values() if (problem := not_json(v)) is not None), None)
    return f"must be JSON: text, a number, true or false, a list or an object (not {type(value).__name__})"


def describe(job: Job) -> dict[str, Any]:
    """The job as a report shows it: what was asked, of which endpoint, under which limits. The
    key's variable is named; the key, and any password in the URL, never appear."""
    from .endpoint import shown_url

    endpoint = job.endpoint
    parts: dict[str, Any] = {
        "models": list(job.models),
        "provider": endpoint.provider,
        "base_url": shown_url(endpoint.base_url) if endpoint.base_url else None,
        "api_key_env": endpoint.api_key_env,
        "prompt": {k: v for k, v in vars(job.prompt).items() if v not in (None, False)},
        "params": dict(job.params),
        "variants": [v.name for v in job.variants],
        "limits": vars(job.limits),
        "retry": vars(job.retry),
        "stream": job.stream,
        "dedup": job.dedup,
        "labels": list(job.answers.labels),
        "json_schema": job.answers.schema is not None,
        "invalid_retries": job.answers.invalid_retries if job.answers.checked else None,
        "scoring": vars(job.scoring) if job.scoring.expected_column else None,
        "max_cost": job.max_cost,
        "batch_api": job.batch.enabled,
        "ray": job.ray.address,
    }
    return {key: value for key, value in parts.items() if value not in (None, [], {}, False)}
