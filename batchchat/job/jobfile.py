"""Loading a job: a TOML job file and overrides (CLI flags or keyword arguments) into a ``Job``,
every setting checked before anything runs.

An override wins over the file. Each setting remembers where it came from, so an error can say
``--concurrency`` to a CLI user, ``'concurrency' in jobs/x.toml`` to someone editing a job file,
and ``concurrency=`` to a library caller: every check takes ``at``, the setting's name as its
user wrote it.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlparse

from ..core.errors import JobError, MissingKey
from ..core.reading import lone_surrogate
from ..core.schema import check_schema, schema_of
from ..core.tableformats import format_of
from ..core.template import parse_template
from ..providers import PROVIDERS, dialect, provider_at
from .endpoint import Endpoint, is_loopback, key_state, shown_url
from .money import prices_for
from .settings import (
    BATCHES,
    SAME_SETTING,
    SETTINGS,
    SIM_KEYS,
    TABLE,
    boolean,
    choice,
    did_you_mean,
    flag,
    number,
    read,
    table,
    table_path,
    text,
    whole,
)
from .spec import (
    INVALID_TEXT,
    RESERVED_PARAMS,
    SCORES,
    SIM_POLL_S,
    Answers,
    BatchAPI,
    Job,
    Limits,
    Price,
    Prompt,
    RayCluster,
    Resume,
    RetryPolicy,
    RowOptions,
    Scoring,
    SimConfig,
    Variant,
    default,
    normalize_label,
    option_problem,
)

T = TypeVar("T")


def load_job(path: str | os.PathLike[str] | None = None, /, *, check_key: bool = True, **overrides: Any) -> Job:
    """Load a job file (optional) and apply keyword overrides, which win; ``check_key=False``
    accepts a missing API key (a dry run sends nothing)."""
    return build_job(path, overrides, lambda key: f"{key}=", check_key=check_key)


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
            elif key == "reuse" and isinstance(value, list | str):  # paths in the file are the file's
                settings[key] = [str(base / v) if isinstance(v, str) else v for v in ([value] if isinstance(value, str) else value)]
            else:
                settings[key] = value
            where[key] = f"'{key}' in {job_path}"
    file_output = settings.get("output")
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in SETTINGS:
            raise JobError(f"unknown setting {label(key)}{did_you_mean(key, SETTINGS)}")
        if key == "params":
            params.update(table(value, label(key)))
        elif key == "base_url" and overrides.get("provider") is None and settings.get("provider") == "sim":
            settings[key] = value  # a flag wins: a URL over the file's simulator sends there
            settings.pop("provider")
            if overrides.get("simulator") is None:
                settings.pop("simulator", None)
        elif key == "provider" and value == "sim" and overrides.get("base_url") is None:
            settings[key] = value  # a flag wins: the simulator over the file's URL
            settings.pop("base_url", None)
        elif key in ("simulator", "prices"):  # entry by entry, over the job file's table
            settings[key] = {**table(settings.get(key) or {}, where.get(key, key)), **table(value, label(key))}
        else:
            settings[key] = value
            for other in SAME_SETTING.get(key, ()):  # an override wins over the file's other spelling too
                settings.pop(other, None)
        where[key] = label(key)
    for key, value in [*settings.items(), *(("params", v) for v in params.values())]:
        if key not in ("input", "output") and lone_surrogate(value):  # (paths may hold any bytes)
            raise JobError(f"{where.get(key, label(key))} {INVALID_TEXT}")
    job = replace(_job_from(settings, params, where, check_key, label), names=label)
    if job.input is not None and job.output is not None:  # a trial written elsewhere reuses the usual output's answers
        usual = Path(file_output) if isinstance(file_output, str) else default_output(job.input)
        if usual.resolve() != job.output.resolve():
            job = replace(job, resume=replace(job.resume, usual=usual))
    priced = overrides.get("prices")
    unused = [model for model in (table(priced, label("prices")) if priced else {}) if model not in job.models]
    if unused:  # a price the job's own flags give for a model it does not ask: a typo, most likely
        raise JobError(
            f"{label('prices')} prices {', '.join(map(repr, unused))}, which this job does not ask; its models are "
            f"{', '.join(map(repr, job.models))}{did_you_mean(unused[0], job.models)}"
        )
    return job


def read_job_file(path: Path) -> dict[str, Any]:
    if format_of(path) is not None:
        raise JobError(f"{path} is a table, not a job file: give it as the input (-i {path}, or input='{path}')")
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
    answers = parse_answers(s.get("response_format"), s.get("json_schema"), s.get("labels"),
                            s.get("invalid_retries"), at)  # fmt: skip
    if answers.response_format is not None:
        params["response_format"] = answers.response_format

    for key in ("max_tokens", "temperature", "top_p"):
        value = read(s, at, key)
        if value is not None:
            params[key] = value
    check_params(params, at("params"))

    prompt = _prompt(s, where)
    endpoint = _endpoint(s, at, check_key, name)
    if endpoint.provider != "sim" and s.get("simulator") and "'simulator' in" not in at("simulator"):
        raise JobError(f"{at('simulator')} configures the built-in simulator, which runs only with provider sim: set "
                       f"{name('provider')} to sim, or drop {at('simulator')}")  # fmt: skip
    input_path = table_path(s.get("input"), at("input"), "input")
    output_path = table_path(s.get("output"), at("output"), "output")
    if input_path is not None and not input_path.exists():
        raise JobError(f"input file {input_path} does not exist ({at('input')})")
    if input_path is not None and output_path is None:
        output_path = default_output(input_path)
    if output_path is not None:
        if input_path is not None and output_path.resolve() == input_path.resolve():
            raise JobError(f"the output {output_path} is the input file; choose another {name('output')}")
        parent = output_path.parent
        if not parent.is_dir():
            raise JobError(f"output folder {parent} does not exist; create it or choose another {name('output')}")

    # the simulator plays the models it is asked for, at the prices Together's catalogue gives them
    priced_at = PROVIDERS["together"].base_url if endpoint.provider == "sim" else endpoint.base_url
    prices = prices_for(models, parse_prices(s.get("prices"), at("prices")), priced_at)
    variants = parse_variants(s.get("variants"), at("variants"))
    wire = dialect(endpoint.dialect)
    for options, where_set in [(params, at("params")), *((dict(v.params), at("variants")) for v in variants)]:
        for option in options:
            why = wire.refused(option)
            if why is None:
                continue
            if option == "response_format" and answers.response_format is not None:  # the job's answer checks ask it
                asked = at("json_schema") if s.get("json_schema") is not None else at("response_format")
                raise JobError(f"{asked}: {endpoint.provider} cannot be asked for JSON this way: {why}")
            raise JobError(f"request option '{option}' ({where_set}) cannot go to {endpoint.provider}: {why}")
    max_cost = read(s, at, "max_cost")
    if max_cost is not None:
        unpriced = [m for m in models if m not in prices]
        if unpriced:
            raise JobError(
                f"{at('max_cost')} needs the price of every model, and {', '.join(map(repr, unpriced))} "
                f"{'has' if len(unpriced) == 1 else 'have'} none; give "
                f"{'one' if len(unpriced) == 1 else 'them'} with {name('prices')} (US dollars per million input and "
                "output tokens)"
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
        limits=Limits(concurrency=read(s, at, "concurrency"), rpm=read(s, at, "rpm"), tpm=read(s, at, "tpm")),
        retry=RetryPolicy(max_attempts=read(s, at, "max_attempts"), timeout_s=read(s, at, "timeout")),
        resume=Resume(
            restart=read(s, at, "restart"),
            retry_errors=read(s, at, "retry_errors"),
            grace_s=read(s, at, "grace"),
            reuse=_paths(s.get("reuse"), at("reuse")),
        ),
        stream=_stream(s, at),
        dedup=read(s, at, "dedup"),
        simulator=_simulator(s.get("simulator"), at("simulator")),
        variants=variants,
        row_options=parse_row_options(s.get("option_columns"), s.get("options_column"), at),
        answers=answers,
        scoring=parse_scoring(s.get("expected_column"), s.get("score"), at, name),
        prices=MappingProxyType(prices),
        max_cost=max_cost,
        limit=read(s, at, "limit"),
        batch=_batch(s, at, name, endpoint),
        ray=_ray(s, at, name),
    )


def _ray(s: dict[str, Any], at: Callable[[str], str], name: Callable[[str], str]) -> RayCluster:
    """``ray``: true (a Ray started for the run) or a cluster's address (``auto``, ``ray://head:10001``)."""
    value = s.get("ray")
    if value is None or value is False:
        if s.get("ray_workers") is not None:
            raise JobError(f"{at('ray_workers')} is a setting of Ray runs; add {name('ray')} or drop it")
        return RayCluster()
    address = "local" if value is True else text(value, at("ray"))
    if address is not None and address.lower().endswith(".toml"):
        raise JobError(f"{at('ray')}: '{address}' is a job file, not a Ray address; give the job file first "
                       f"(batchchat run {address} {name('ray')}) or the address after {name('ray')}=")  # fmt: skip
    if read(s, at, "batch_api"):
        raise JobError(f"{at('ray')} and {at('batch_api')} are both set: provider batches need no cluster; keep one")
    return RayCluster(address=address, workers=read(s, at, "ray_workers"))


BATCH_SETTINGS = tuple(setting.name for setting in TABLE if setting.group == BATCHES and setting.name != "batch_api")


def _batch(s: dict[str, Any], at: Callable[[str], str], name: Callable[[str], str], endpoint: Endpoint) -> BatchAPI:
    """Provider batches (``batch_api``), and the settings that only mean something with them."""
    enabled = read(s, at, "batch_api")
    if not enabled:
        for key in BATCH_SETTINGS:
            if s.get(key) is not None and s.get(key) is not False:
                raise JobError(f"{at(key)} is a setting of provider batches; add {name('batch_api')} or drop it")
        return BatchAPI()
    if _stream(s, at):
        raise JobError(f"{at('batch_api')}: a provider batch does not stream; drop {name('stream')}")
    if PROVIDERS[endpoint.provider].batch_max_lines is None and endpoint.provider != "sim":
        raise JobError(f"{at('batch_api')}: batchchat does not send provider {endpoint.provider}'s batches yet; "
                       f"drop {name('batch_api')} to send its requests live")  # fmt: skip
    detach, cancel = read(s, at, "detach"), read(s, at, "cancel")
    if detach and cancel:
        raise JobError(f"{at('detach')} and {at('cancel')} are both set; cancelling waits for the batches, keep one")
    if detach and endpoint.provider == "sim":
        raise JobError(f"{at('detach')}: provider sim starts a simulator that ends with the run, and its batches "
                       "with it; run `batchchat serve` and point the job at it with its --base-url")  # fmt: skip
    live_retry = read(s, at, "live_retry")
    if live_retry and not read(s, at, "retry_errors"):
        raise JobError(f"{at('live_retry')} sends the requests that ended in error again, live: it needs "
                       f"{name('retry_errors')}")  # fmt: skip
    here = endpoint.provider == "sim" or (endpoint.base_url is not None and is_loopback(endpoint.base_url))
    return BatchAPI(
        enabled=True,
        poll_s=SIM_POLL_S if here and s.get("poll_every") is None else read(s, at, "poll_every"),
        detach=detach,
        cancel=cancel,
        live_retry=live_retry,
        discount=read(s, at, "batch_discount"),
    )


def _prompt(s: dict[str, Any], where: dict[str, str]) -> Prompt:
    def at(key: str) -> str:
        return where.get(key, key)

    column = text(s.get("prompt_column"), at("prompt_column"))
    template = read(s, at, "template")
    messages_column = read(s, at, "messages_column")
    turns_column = read(s, at, "turns_column")
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
    known = PROVIDERS[provider]
    default_url, default_env = known.base_url, known.key_env
    base_url = text(s.get("base_url"), at("base_url"))
    url_env = known.base_url_env
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
        owner = provider_at(base_url)  # a known provider's own API: its wire format and its key
        if owner is not None and owner.name != provider:
            if s.get("provider") is None:
                provider, default_env = owner.name, owner.key_env
            elif key_env is None or owner.dialect != known.dialect:
                raise JobError(
                    f"{at('base_url')} is {owner.name}'s API, and {at('provider')} is {provider}: "
                    f"{provider}'s {'key (' + str(default_env) + ')' if key_env is None else 'wire format'} would "
                    f"be sent there; drop {name('provider')} (the URL says which) or give {provider}'s own URL"
                )  # fmt: skip
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
        raise MissingKey(
            f"no API key: the variable {missing} {key_state(missing)}. Export it (export {missing}=...), "
            f"name another variable with {name('api_key_env')}, or try batchchat offline with provider sim "
            f"({name('provider')})"
        )
    return endpoint


def default_output(input_path: Path) -> Path:
    """The output of an input when none is named: beside it."""
    return input_path.with_name(input_path.stem + ".out.parquet")


def _paths(value: Any, at: str) -> tuple[Path, ...]:
    """A path, or a list of them."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str | os.PathLike) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str | os.PathLike) and str(v) for v in items):
        raise JobError(f"{at} must be a path or a list of paths (outputs, or their journals), got {value!r}")
    return tuple(Path(v) for v in items)


def _default(value: T | None, default: T) -> T:
    """A setting's value, or its default where it is not set (0 is a value, not unset)."""
    return default if value is None else value


def _naming(key: str, name: str, at: Callable[[str], str]) -> Callable[[str], str]:
    """``at``, but naming ``key`` as ``name`` (a setting that came from elsewhere)."""
    return lambda other: name if other == key else at(other)


def _stream(s: dict[str, Any], at: Callable[[str], str]) -> bool:
    """``stream``, or Together's legacy name ``stream_tokens``; they must not disagree."""
    values = {key: boolean(s.get(key), at(key)) for key in ("stream", "stream_tokens") if s.get(key) is not None}
    if len(set(values.values())) > 1:
        raise JobError(f"{at('stream')} and {at('stream_tokens')} disagree; keep one of them")
    return any(values.values())


def _simulator(value: Any, at: str) -> SimConfig:
    if value is None:
        return SimConfig()
    entries = table(value, at)
    for key in entries:
        if key not in SIM_KEYS:
            raise JobError(f"{at}: unknown simulator setting '{key}'{did_you_mean(key, SIM_KEYS)}")

    def of(key: str) -> str:
        return f"the simulator's {key} ({at})"

    return SimConfig(
        latency_ms=number(entries.get("latency_ms"), of("latency_ms"), 0.0) or 0.0,
        jitter_ms=number(entries.get("jitter_ms"), of("jitter_ms"), 0.0) or 0.0,
        tokens_per_s=number(entries.get("tokens_per_s"), of("tokens_per_s"), 0.001),
        rpm=whole(entries.get("rpm"), of("rpm"), 1),
        tpm=whole(entries.get("tpm"), of("tpm"), 1),
        fault_rate=number(entries.get("fault_rate"), of("fault_rate"), 0.0, 1.0) or 0.0,
        seed=whole(entries.get("seed"), of("seed")) or 0,
        labels=_sim_labels(entries.get("labels"), of("labels")),
        invalid_rate=number(entries.get("invalid_rate"), of("invalid_rate"), 0.0, 1.0) or 0.0,
        batch_dialect=choice(entries.get("batch_dialect"), of("batch_dialect"), ("together", "openai")) or "together",
        batch_seconds=_default(number(entries.get("batch_seconds"), of("batch_seconds"), 0.0), 1.0),
        batch_error_rate=number(entries.get("batch_error_rate"), of("batch_error_rate"), 0.0, 1.0) or 0.0,
        batch_expire_at=number(entries.get("batch_expire_at"), of("batch_expire_at"), 0.0, 1.0),
        batch_fail_at=number(entries.get("batch_fail_at"), of("batch_fail_at"), 0.0, 1.0),
        batch_delay_ms=number(entries.get("batch_delay_ms"), of("batch_delay_ms"), 0.0) or 0.0,
        batch_upload_delay_ms=number(entries.get("batch_upload_delay_ms"), of("batch_upload_delay_ms"), 0.0) or 0.0,
        batch_create_delay_ms=number(entries.get("batch_create_delay_ms"), of("batch_create_delay_ms"), 0.0) or 0.0,
        batch_upload_fails=whole(entries.get("batch_upload_fails"), of("batch_upload_fails"), 0) or 0,
        batch_create_fails=whole(entries.get("batch_create_fails"), of("batch_create_fails"), 0) or 0,
        batch_max_lines=whole(entries.get("batch_max_lines"), of("batch_max_lines"), 1),
        one_at_a_time=flag(entries.get("one_at_a_time"), of("one_at_a_time"), False),
        slots=whole(entries.get("slots"), of("slots"), 0) or 0,
        share_429=number(entries.get("share_429"), of("share_429"), 0.0, 1.0) or 0.0,
        share_503=number(entries.get("share_503"), of("share_503"), 0.0, 1.0) or 0.0,
        rpm_later=whole(entries.get("rpm_later"), of("rpm_later"), 1),
        rpm_change_s=number(entries.get("rpm_change_s"), of("rpm_change_s"), 0.0) or 0.0,
    )


def _sim_labels(value: Any, at: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise JobError(f"{at} must be a list of labels, got {value!r}")
    return tuple(text(label, at) or "" for label in value)


# --- the parts of a job ----------------------------------------------------------------------


def check_fields(fields: Iterable[str], at: str) -> None:
    """None of the request fields batchchat sets itself."""
    for key in fields:
        if key in RESERVED_PARAMS:
            raise JobError(f"request option '{key}' cannot be set ({at}): {RESERVED_PARAMS[key]}")


def check_params(params: Mapping[str, Any], at: str) -> None:
    """Request options set for the whole job (``--param``, ``[params]``, a variant): not the
    fields batchchat sets itself, and the common ones within their bounds (a cost cap relies on a
    whole ``max_tokens``)."""
    check_fields(params, at)
    if params.get("n", 1) != 1:
        raise JobError(f"request option n={params['n']!r} ({at}): batchchat keeps one answer per row, so n must be 1")
    for key, value in params.items():
        problem = option_problem(key, value)
        if problem:
            raise JobError(f"request option '{key}' ({at}) {problem}, got {value!r}")


def parse_models(model: Any, models: Any, at: Callable[[str], str],
                 name: Callable[[str], str] = lambda key: f"{key}=") -> tuple[str, ...]:  # fmt: skip
    """``model`` (a name or a list) or ``models`` (a list); not both."""
    if model is not None and models is not None:
        raise JobError(f"both {at('model')} and {at('models')} are set; keep one (either may be a list)")
    key = "model" if model is not None else "models"
    value = model if model is not None else models
    if value is None:
        raise JobError(f"no model: give one with {name('model')} (or 'model' in a job file)")
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names:
        raise JobError(f"{at(key)} must be a model name or a list of them, got {value!r}")
    checked = tuple(text(name, at(key)) or "" for name in names)
    repeated = sorted({name for name in checked if checked.count(name) > 1})
    if repeated:
        raise JobError(f"{at(key)} names {', '.join(map(repr, repeated))} more than once")
    return checked


def parse_variants(value: Any, at: str) -> tuple[Variant, ...]:
    """``[[variants]]``: each an optional ``name`` and request options."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise JobError(f"{at} must be a list of tables ([[variants]] in TOML), got {value!r}")
    variants = []
    for n, entry in enumerate(value, 1):
        where = f"{at}, variant {n}"
        options = table(entry, where)
        name = text(options.pop("name", None), f"{where}: 'name'")
        check_params(options, where)
        if name is None:
            name = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(options.items())) or "default"
        variants.append(Variant(name, tuple(sorted(options.items()))))
    names = [v.name for v in variants]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise JobError(f"{at}: variant name(s) {', '.join(map(repr, repeated))} used twice; give each a unique 'name'")
    return tuple(variants)


def parse_row_options(columns: Any, json_column: Any, at: Callable[[str], str]) -> RowOptions:
    """``option_columns``: a list of columns named like request fields, or a table field -> column."""
    pairs: list[tuple[str, str]] = []
    if columns is not None:
        where = at("option_columns")
        if isinstance(columns, str):
            columns = [c.strip() for c in columns.split(",")]
        if isinstance(columns, list):
            pairs = [(text(c, where) or "", c) for c in columns]
        elif isinstance(columns, Mapping):
            pairs = [(field, text(column, f"{where}.{field}") or "") for field, column in table(columns, where).items()]
        else:
            raise JobError(f"{where} must be a list of column names or a table of field = column, got {columns!r}")
        check_fields((field for field, _ in pairs), where)
    return RowOptions(tuple(pairs), text(json_column, at("options_column")))


def parse_answers(response_format: Any, json_schema: Any, labels: Any, retries: Any,
                  at: Callable[[str], str]) -> Answers:  # fmt: skip
    """What a valid answer is, with the ``response_format`` request field that asks for it."""
    if response_format is not None and json_schema is not None:
        raise JobError(
            f"both {at('response_format')} and {at('json_schema')} are set; json_schema is a short "
            "way to write response_format, keep one"
        )
    schema: Mapping[str, Any] | None = None
    where = at("response_format")
    if json_schema is not None:
        where = at("json_schema")
        schema = table(json_schema, where)
        response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    elif response_format is not None:
        response_format = table(response_format, where)
        kind = response_format.get("type")
        if kind not in ("json_object", "json_schema", "text"):
            raise JobError(f"{where}: 'type' must be json_object, json_schema or text, got {kind!r}")
        schema = schema_of(response_format)
        if kind == "json_schema" and schema is None:
            raise JobError(f"{where}: a json_schema response_format needs its schema under json_schema.schema")
    if schema is not None:
        check_schema(schema, where)
    label_list = _labels(labels, at("labels"))
    json_required = response_format is not None and response_format.get("type") != "text"
    if label_list and json_required:
        raise JobError(
            f"both {at('labels')} and {where} are set; use one (for a label inside a JSON answer, give "
            "its field an enum in the schema)"
        )
    return Answers(
        schema=schema,
        json_required=json_required,
        labels=label_list,
        invalid_retries=read({"invalid_retries": retries}, at, "invalid_retries"),
        response_format=response_format,
    )


def _labels(value: Any, at: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, list) or not value:
        raise JobError(f'{at} must be a list of labels, e.g. ["positive", "negative"], got {value!r}')
    labels = tuple(text(label, at) or "" for label in value)
    seen: dict[str, str] = {}
    for label in labels:
        key = normalize_label(label)
        if not key:
            raise JobError(f"{at}: label {label!r} has no letters or digits, so no answer could match it")
        if key in seen:
            raise JobError(
                f"{at}: labels {seen[key]!r} and {label!r} are the same once case and punctuation are ignored"
            )
        seen[key] = label
    return labels


def parse_scoring(expected: Any, method: Any, at: Callable[[str], str],
                  name: Callable[[str], str] = lambda key: f"{key}=") -> Scoring:  # fmt: skip
    column = text(expected, at("expected_column"))
    score = text(method, at("score"))
    if score is not None and score not in SCORES:
        raise JobError(
            f"{at('score')}: unknown score '{score}'; use one of {', '.join(SCORES)}{did_you_mean(score, SCORES)}"
        )
    if score is not None and column is None:
        raise JobError(f"{at('score')} needs the column of expected answers: set {name('expected_column')}")
    return Scoring(column, score or default(Scoring, "method"))


def parse_prices(value: Any, at: str) -> dict[str, Price]:
    """``[prices]``: ``"model" = { input = 0.88, output = 0.88 }``, dollars per million tokens."""
    prices: dict[str, Price] = {}
    for model, entry in table(value, at).items() if value is not None else ():
        where = f"the price of {model!r} ({at})"
        pair = table(entry, where)
        if set(pair) not in ({"input", "output"}, {"input", "output", "batch_input", "batch_output"}):
            raise JobError(f"{where} must be {{ input = USD, output = USD }} per million tokens (and, for provider "
                           f"batches, batch_input and batch_output), got {entry!r}")  # fmt: skip

        usd = {key: number(value, f"the {key} price of {model!r} ({at})", 0.0) for key, value in pair.items()}
        prices[model] = Price(input=usd["input"] or 0.0, output=usd["output"] or 0.0,
                              batch_input=usd.get("batch_input"), batch_output=usd.get("batch_output"))  # fmt: skip
    return prices
