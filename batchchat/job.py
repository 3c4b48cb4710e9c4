"""A job: everything one run needs, validated before anything runs.

Settings come from a TOML job file and from overrides (CLI flags or keyword arguments); an
override wins. Each setting remembers where it came from, so an error can say
``--concurrency`` to a CLI user, ``'concurrency' in jobs/x.toml`` to someone editing a job
file, and ``concurrency=`` to a library caller.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .errors import JobError
from .jobparts import (
    Answers,
    Price,
    RowOptions,
    Scoring,
    Variant,
    check_params,
    parse_answers,
    parse_models,
    parse_prices,
    parse_row_options,
    parse_scoring,
    parse_variants,
)
from .prices import prices_for
from .records import SimConfig
from .template import parse_template
from .values import boolean, did_you_mean, flag, number, table, table_path, text, whole

PROVIDERS: dict[str, tuple[str | None, str | None]] = {
    "together": ("https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "sim": (None, None),
}
# Read as the providers' SDKs read them: the base URL when neither a flag nor the job file sets one.
URL_VARIABLES = {"together": "TOGETHER_BASE_URL", "openai": "OPENAI_BASE_URL"}


@dataclass(frozen=True)
class Prompt:
    """How each row becomes messages: [system] + [history from messages_column] + [user prompt]."""

    column: str | None = "prompt"
    template: str | None = None
    messages_column: str | None = None
    system: str | None = None
    turns_column: str | None = None  # a JSON list of user turns, sent one after another
    column_optional: bool = False  # the default prompt column beside a messages column: used where it exists


@dataclass(frozen=True)
class Endpoint:
    """Where requests go. Holds the *name* of the key variable, never the key itself."""

    provider: str = "together"
    base_url: str | None = None  # None only for provider "sim", whose URL exists once it starts
    api_key_env: str | None = None
    base_url_env: str | None = None  # the environment variable the base URL came from, if it did

    def api_key(self) -> str | None:
        """The key, without the spaces or line break a file it was read from may leave around it."""
        if not self.api_key_env:
            return None
        return (os.environ.get(self.api_key_env) or "").strip() or None

    @property
    def missing_key(self) -> str | None:
        """The key variable that requests here need and that is not set; a server on this machine
        (and the simulator) needs none."""
        if self.api_key_env is None or self.base_url is None or is_loopback(self.base_url) or self.api_key():
            return None
        return self.api_key_env

    @property
    def identity(self) -> str:
        """Where requests are answered, as part of what identifies a request: an answer from one
        endpoint is never reused for a job sent to another. The URL is normalised (case, default
        port, trailing slash; Together's two host names are one API) and never holds the key or
        URL credentials. The simulator is one endpoint, whatever port it starts on."""
        if self.provider == "sim" or self.base_url is None:
            return "sim"
        return normalized_url(self.base_url)

    @property
    def stream_usage(self) -> bool:
        """Whether streams must ask for usage (OpenAI's ``stream_options``). Together and the
        simulator send usage on the final chunk unasked; vLLM and OpenAI send it only when asked,
        and servers that do not know the option ignore it."""
        if self.provider == "sim" or self.base_url is None:
            return False
        host = urlparse(self.base_url).hostname or ""
        return not (host == "together.xyz" or host.endswith((".together.xyz", ".together.ai")))


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


@dataclass(frozen=True)
class Job:
    models: tuple[str, ...]
    input: Path | None = None
    output: Path | None = None
    prompt: Prompt = field(default_factory=Prompt)
    params: tuple[tuple[str, Any], ...] = ()
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
    prices: tuple[tuple[str, Price], ...] = ()
    max_cost: float | None = None  # US dollars this run may spend
    limit: int | None = None  # only the first input rows: a trial of a large job
    # How a setting is named to whoever made the job: a flag (-o/--output) or a keyword (output=).
    names: Callable[[str], str] = field(default=lambda key: f"{key}=", compare=False, repr=False)

    @property
    def model(self) -> str:
        """The first model (the only one, unless the job fans out)."""
        return self.models[0]

    @property
    def fanout(self) -> int:
        """Output rows per input row: one per model and variant."""
        return len(self.models) * max(1, len(self.variants))

    def price(self, model: str) -> Price | None:
        return dict(self.prices).get(model)


# --- settings -------------------------------------------------------------------------------

SETTINGS = (
    "input", "output", "model", "prompt_column", "template", "messages_column", "system",
    "provider", "base_url", "api_key_env", "max_tokens", "temperature", "top_p", "params",
    "concurrency", "rpm", "tpm", "max_attempts", "timeout", "stream", "stream_tokens", "dedup", "restart",
    "retry_errors", "grace", "simulator", "models", "variants", "option_columns", "options_column",
    "response_format", "json_schema", "labels", "invalid_retries", "expected_column", "score",
    "turns_column", "prices", "max_cost", "limit",
)  # fmt: skip
# Settings that say one thing two ways; the job file may use one while a flag sets the other.
SAME_SETTING = {
    "stream": ("stream_tokens",),
    "model": ("models",),
    "models": ("model",),
    "json_schema": ("response_format",),
    "response_format": ("json_schema",),
}
SIM_SETTINGS = tuple(f.name for f in fields(SimConfig) if f.name != "api_key")  # keys never live in job files


def load_job(path: str | os.PathLike[str] | None = None, /, **overrides: Any) -> Job:
    """Load a job file (optional) and apply keyword overrides, which win."""
    return build_job(path, overrides, lambda key: f"{key}=")


def build_job(
    path: str | os.PathLike[str] | None,
    overrides: Mapping[str, Any],
    label: Callable[[str], str],
    *,
    check_key: bool = True,
) -> Job:
    """Merge a job file with overrides; ``label(key)`` names an override the way its user set it.

    ``check_key=False`` accepts a missing API key, for a dry run, which sends nothing.
    """
    settings: dict[str, Any] = {}
    where: dict[str, str] = {}
    params: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        job_path = Path(path)
        base = job_path.parent
        for key, value in read_job_file(job_path).items():
            if key == "params":
                params.update(table(value, f"'params' in {job_path}"))
            elif key in ("input", "output") and isinstance(value, str):
                settings[key] = str(base / value)
            else:
                settings[key] = value
            where[key] = f"'{key}' in {job_path}"
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in SETTINGS:
            raise JobError(f"unknown setting {label(key)}{did_you_mean(key, SETTINGS)}")
        if key == "params":
            params.update(table(value, label(key)))
        elif key in ("simulator", "prices"):  # entry by entry, over the job file's table
            settings[key] = {**table(settings.get(key) or {}, where.get(key, key)), **table(value, label(key))}
        else:
            settings[key] = value
            for other in SAME_SETTING.get(key, ()):  # an override wins over the file's other spelling too
                settings.pop(other, None)
        where[key] = label(key)
    return replace(_job_from(settings, params, where, check_key, label), names=label)


def read_job_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise JobError(f"job file {path} does not exist") from None
    except IsADirectoryError:
        raise JobError(f"job file {path} is a folder; give the path of a .toml file") from None
    except OSError as e:
        raise JobError(f"cannot read job file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise JobError(f"job file {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise JobError(f"job file {path} is not UTF-8 text; save it as UTF-8") from None
    for key in data:
        if key not in SETTINGS:
            raise JobError(f"job file {path}: unknown key '{key}'{did_you_mean(key, SETTINGS)}")
    return data


def _job_from(s: dict[str, Any], params: dict[str, Any], where: dict[str, str], check_key: bool,
              name: Callable[[str], str]) -> Job:  # fmt: skip
    def at(key: str) -> str:
        return where.get(key, key)

    models = parse_models(s.get("model"), s.get("models"), at, name)
    if "response_format" in params:  # one place decides what a valid answer is
        if s.get("response_format") is not None or s.get("json_schema") is not None:
            raise JobError(f"response_format is set both in {at('params')} and on its own; keep one")
        s["response_format"] = params.pop("response_format")
        where["response_format"] = at("params")
    answers, response_format = parse_answers(
        s.get("response_format"), s.get("json_schema"), s.get("labels"), s.get("invalid_retries"), at
    )
    if response_format is not None:
        params["response_format"] = response_format

    for key, value in (("max_tokens", whole(s.get("max_tokens"), at("max_tokens"), 1)),
                       ("temperature", number(s.get("temperature"), at("temperature"), 0.0)),
                       ("top_p", number(s.get("top_p"), at("top_p"), 0.0, 1.0))):  # fmt: skip
        if value is not None:
            params[key] = value
    check_params(params, at("params"))

    prompt = _prompt(s, where)
    endpoint = _endpoint(s, at, check_key, name)
    if endpoint.provider != "sim" and s.get("simulator") and "'simulator' in" not in at("simulator"):
        raise JobError(f"{at('simulator')} sets the built-in simulator, which only provider sim ({name('provider')}) uses")
    input_path = table_path(s.get("input"), at("input"), "input")
    output_path = table_path(s.get("output"), at("output"), "output")
    if input_path is not None and not input_path.exists():
        raise JobError(f"input file {input_path} does not exist ({at('input')})")
    if input_path is not None and output_path is None:
        output_path = input_path.with_name(input_path.stem + ".out.parquet")
    if output_path is not None:
        if input_path is not None and output_path.resolve() == input_path.resolve():
            raise JobError(f"the output {output_path} is the input file; choose another {name('output')}")
        parent = output_path.parent
        if not parent.is_dir():
            raise JobError(f"output folder {parent} does not exist; create it or choose another {name('output')}")

    prices = tuple(prices_for(models, dict(parse_prices(s.get("prices"), at("prices"))), endpoint.base_url).items())
    variants = parse_variants(s.get("variants"), at("variants"))
    max_cost = number(s.get("max_cost"), at("max_cost"), 0.0)
    if max_cost is not None:
        unpriced = [m for m in models if m not in dict(prices)]
        if unpriced:
            raise JobError(
                f"{at('max_cost')} needs the price of every model, and {', '.join(map(repr, unpriced))} has "
                f"none; give one with {name('prices')} (US dollars per million input and output tokens)"
            )
        if "max_tokens" not in params and not (variants and all("max_tokens" in dict(v.params) for v in variants)):
            raise JobError(
                f"{at('max_cost')} needs {name('max_tokens')} (rows and variants may still set their own): "
                "without it an answer's length has no bound, and the cap could not be kept"
            )
    return Job(
        models=models,
        input=input_path,
        output=output_path,
        prompt=prompt,
        params=tuple(sorted(params.items())),
        endpoint=endpoint,
        limits=Limits(
            concurrency=whole(s.get("concurrency"), at("concurrency"), 1, 10_000) or 16,
            rpm=whole(s.get("rpm"), at("rpm"), 1),
            tpm=whole(s.get("tpm"), at("tpm"), 1),
        ),
        retry=RetryPolicy(
            max_attempts=whole(s.get("max_attempts"), at("max_attempts"), 1, 100) or 6,
            timeout_s=number(s.get("timeout"), at("timeout"), 0.001) or 300.0,
        ),
        resume=Resume(
            restart=flag(s.get("restart"), at("restart"), False),
            retry_errors=flag(s.get("retry_errors"), at("retry_errors"), False),
            grace_s=number(s.get("grace"), at("grace"), 0.0, 3600.0) if s.get("grace") is not None else 10.0,
        ),
        stream=_stream(s, at),
        dedup=flag(s.get("dedup"), at("dedup"), True),
        simulator=_simulator(s.get("simulator"), at("simulator")),
        variants=variants,
        row_options=parse_row_options(s.get("option_columns"), s.get("options_column"), at),
        answers=answers,
        scoring=parse_scoring(s.get("expected_column"), s.get("score"), at, name),
        prices=prices,
        max_cost=max_cost,
        limit=whole(s.get("limit"), at("limit"), 1),
    )


def _prompt(s: dict[str, Any], where: dict[str, str]) -> Prompt:
    def at(key: str) -> str:
        return where.get(key, key)

    column = text(s.get("prompt_column"), at("prompt_column"))
    template = text(s.get("template"), at("template"))
    messages_column = text(s.get("messages_column"), at("messages_column"))
    turns_column = text(s.get("turns_column"), at("turns_column"))
    system = s.get("system")
    if system is not None and not isinstance(system, str):
        raise JobError(f"{at('system')} must be text, got {system!r}")
    if column is not None and template is not None:
        raise JobError(
            f"both a prompt column ({at('prompt_column')}) and a template ({at('template')}) are "
            "set; use one: a template can name any column as {column}"
        )
    if template is not None:
        parse_template(template, at("template"))  # syntax errors surface now, columns later
    if turns_column is not None and (column is not None or template is not None):
        raise JobError(
            f"{at('turns_column')} holds every user turn of a scripted conversation, so "
            f"{at('prompt_column') if column else at('template')} has nothing to add; keep one"
        )
    optional = False
    if column is None and template is None and turns_column is None:
        column = "prompt"  # each row is [system] + [history] + [user prompt]: the prompt by default too
        optional = messages_column is not None  # ... but history alone is a whole request
    return Prompt(
        column=column,
        template=template,
        messages_column=messages_column,
        system=system or None,
        turns_column=turns_column,
        column_optional=optional,
    )


def _endpoint(s: dict[str, Any], at: Callable[[str], str], check_key: bool, name: Callable[[str], str]) -> Endpoint:
    provider = text(s.get("provider"), at("provider")) or "together"
    if provider not in PROVIDERS:
        raise JobError(
            f"{at('provider')}: unknown provider '{provider}'; use one of "
            f"{', '.join(PROVIDERS)}{did_you_mean(provider, PROVIDERS)}"
        )
    default_url, default_env = PROVIDERS[provider]
    base_url = text(s.get("base_url"), at("base_url"))
    url_env = URL_VARIABLES.get(provider)
    if base_url is None and url_env and os.environ.get(url_env, "").strip():
        base_url = os.environ[url_env].strip()
        at = _naming("base_url", f"{url_env} (in the environment)", at)
    else:
        url_env = None
    key_env = text(s.get("api_key_env"), at("api_key_env"))
    if provider == "sim":
        if base_url is not None:
            raise JobError(
                f"{at('base_url')} cannot be combined with provider 'sim', which starts its own "
                "simulator; to use a running `batchchat serve`, drop the provider and pass only "
                "the base URL"
            )
        return Endpoint(provider="sim", base_url=None, api_key_env=key_env)
    if base_url is not None:
        parsed = urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise JobError(
                f"{at('base_url')}: '{shown_url(base_url)}' is not an http(s) URL; "
                "expected something like https://api.together.xyz/v1"
            )
        base_url = base_url.rstrip("/")
    endpoint = Endpoint(provider=provider, base_url=base_url or default_url, api_key_env=key_env or default_env,
                        base_url_env=url_env)  # fmt: skip
    if base_url is not None and urlparse(base_url).username is not None and endpoint.api_key():
        raise JobError(
            f"{at('base_url')} carries credentials (user:password@) and {endpoint.api_key_env} holds an API key: "
            f"both would be the Authorization header; keep one (drop them from the URL, or name an unset "
            f"variable with {name('api_key_env')})"
        )
    key = endpoint.api_key()
    if key is not None and (not key.isprintable() or any(char.isspace() for char in key)):
        raise JobError(f"the API key in {endpoint.api_key_env} holds spaces or control characters (a line break "
                       "copied with it?); set it to the key alone")  # fmt: skip
    missing = endpoint.missing_key
    if check_key and missing:
        raise JobError(
            f"no API key: the variable {missing} is not set. Export it (export {missing}=...), "
            f"name another variable with {name('api_key_env')}, or try batchchat offline with provider sim "
            f"({name('provider')})"
        )
    return endpoint


def _naming(key: str, name: str, at: Callable[[str], str]) -> Callable[[str], str]:
    """``at``, but naming ``key`` as ``name`` (a setting that came from elsewhere)."""
    return lambda other: name if other == key else at(other)


def _stream(s: dict[str, Any], at: Callable[[str], str]) -> bool:
    """``stream``, or Together's legacy name ``stream_tokens``; they must not disagree."""
    values = {key: boolean(s.get(key), at(key)) for key in ("stream", "stream_tokens") if s.get(key) is not None}
    if len(set(values.values())) > 1:
        raise JobError(f"{at('stream')} and {at('stream_tokens')} disagree; keep one of them")
    return any(values.values())


# Host names that serve one and the same API.
SAME_HOST = {"api.together.ai": "api.together.xyz"}
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalized_url(url: str) -> str:
    """``scheme://host[:port]/path``, lower-cased where case does not matter, without credentials,
    query, fragment, a default port or a trailing slash."""
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    host = (parsed.hostname or "").lower()
    host = SAME_HOST.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parsed.port
    except ValueError:
        port = None
    shown_port = f":{port}" if port is not None and port != DEFAULT_PORTS.get(scheme) else ""
    path = re.sub(r"/+", "/", parsed.path).rstrip("/")
    return f"{scheme}://{host}{shown_port}{path}"


def shown_url(url: str) -> str:
    """A URL as it may be printed: a password in it is masked."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    return url.replace(f":{parsed.password}@", ":***@", 1)


def is_loopback(url: str) -> bool:
    """A server on this machine (vLLM, llama.cpp, Ollama, the simulator) needs no key."""
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _simulator(value: Any, at: str) -> SimConfig:
    if value is None:
        return SimConfig()
    entries = table(value, at)
    for key in entries:
        if key not in SIM_SETTINGS:
            raise JobError(f"{at}: unknown simulator setting '{key}'{did_you_mean(key, SIM_SETTINGS)}")
    return SimConfig(
        latency_ms=number(entries.get("latency_ms"), f"{at}.latency_ms", 0.0) or 0.0,
        jitter_ms=number(entries.get("jitter_ms"), f"{at}.jitter_ms", 0.0) or 0.0,
        tokens_per_s=number(entries.get("tokens_per_s"), f"{at}.tokens_per_s", 0.001),
        rpm=whole(entries.get("rpm"), f"{at}.rpm", 1),
        tpm=whole(entries.get("tpm"), f"{at}.tpm", 1),
        fault_rate=number(entries.get("fault_rate"), f"{at}.fault_rate", 0.0, 1.0) or 0.0,
        seed=whole(entries.get("seed"), f"{at}.seed") or 0,
        labels=_sim_labels(entries.get("labels"), f"{at}.labels"),
        invalid_rate=number(entries.get("invalid_rate"), f"{at}.invalid_rate", 0.0, 1.0) or 0.0,
    )


def _sim_labels(value: Any, at: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise JobError(f"{at} must be a list of labels, got {value!r}")
    return tuple(text(label, at) or "" for label in value)
