"""The settings a job has, and how one setting's value is checked.

Each check takes ``at``, the setting's name as its user wrote it (a flag, a job-file key or a
keyword), so an error tells them exactly what to change.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..core.errors import JobError
from ..core.tableformats import SUFFIXES, format_of
from ..providers import PROVIDERS
from .spec import (
    SCORES,
    SIM_POLL_S,
    Answers,
    BatchAPI,
    Limits,
    Prompt,
    Resume,
    RetryPolicy,
    Scoring,
    SimConfig,
    default,
)

# The simulator's settings a job may give: not its key (keys never live in job files), nor the
# rows' expected answers (the job's expected column gives them).
SIM_KEYS = tuple(f.name for f in fields(SimConfig) if f.name not in ("api_key", "expected"))
# Kinds of value a setting takes (``Setting.kind``).
TEXT, INT, FLOAT, FLAG, CHOICE, OTHER = "text", "int", "float", "flag", "choice", "other"


@dataclass(frozen=True)
class Setting:
    """One setting of a job, declared once: the CLI's flags, the job file's keys, the library's
    keywords, ``batchchat run --help``'s groups and the checks' messages are all read from here.

    ``name`` is the job-file key and the keyword. ``flag`` spells its flag: ``""`` for
    ``--name-with-dashes``, ``"-i/--input"`` for a short and a long name, ``"--stream/--no-stream"``
    for a flag that can be turned off, None for none (job files and keywords only). ``default`` is
    what an unset setting means (taken from the part of the job that holds it, ``spec.default``);
    ``shown_default`` says it in the help where the value alone would not. A value outside
    ``low``..``high`` is refused, naming the setting as its user wrote it."""

    name: str
    kind: str
    help: str = ""
    group: str | None = None  # its group in `batchchat run --help` (None: "Other")
    flag: str | None = ""
    metavar: str | None = None
    default: Any = None
    shown_default: str | None = None
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    multiple: bool = False  # the flag may be given again (each adds)
    bare: str | None = None  # the value of the flag given without one (``--ray``)
    chat: bool | str = False  # a flag of `batchchat chat` too; text: its help there
    file: bool = False  # the flag names a file (not a folder)

    @property
    def flags(self) -> tuple[str, ...]:
        """The flag's declarations, as click takes them."""
        if self.flag is None:
            return ()
        spelled = self._spelled
        return (spelled,) if "/--no-" in spelled else tuple(spelled.split("/"))

    @property
    def shown(self) -> str:
        """The flag as a message names it: ``-i/--input``, ``--stream``."""
        return self._spelled.split("/--no-")[0]

    @property
    def _spelled(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def help_text(self) -> str:
        """The help, with the default stated."""
        said = self.shown_default if self.shown_default is not None else _shown(self.default)
        return f"{self.help} [default: {said}]." if said is not None else self.help


def _shown(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _suffixes() -> str:
    return ", ".join(SUFFIXES[:-1]) + " or " + SUFFIXES[-1]


INPUTS, REQUEST, LIMITS, OUTPUT = "Input and prompts", "Model and request", "Limits and retries", "Output and resume"
EVALUATION, BATCHES, CLUSTER = "Evaluation", "Provider batches (half price, within 24 h)", "Past one machine"
TABLE = (
    Setting("input", OTHER, f"Prompt table: {_suffixes()}.", INPUTS, "-i/--input", "PATH"),
    Setting("prompt_column", TEXT, "Column holding each prompt", INPUTS, metavar="NAME",
            default=default(Prompt, "column")),
    Setting("template", TEXT, "Prompt built from columns: 'Classify: {text}'. {{ }} are literal braces.", INPUTS,
            metavar="TEXT"),
    Setting("messages_column", TEXT, "Column holding a JSON list of {role, content} messages (conversation "
            "history).", INPUTS, metavar="NAME"),
    Setting("turns_column", TEXT, "Column holding a JSON list of user turns, sent one by one.", INPUTS,
            metavar="NAME"),
    Setting("system", TEXT, "System message sent first in every request.", INPUTS, metavar="TEXT", chat=True),
    Setting("option_columns", OTHER, "A column whose cells set the request field of the same name (e.g. "
            "max_tokens). Repeatable.", INPUTS, "--option-column", "NAME", multiple=True),
    Setting("options_column", TEXT, "Column holding a JSON object of request fields per row.", INPUTS,
            metavar="NAME"),
    Setting("limit", INT, "Only the first N input rows (a trial of a large job).", INPUTS, metavar="N", low=1),
    Setting("model", OTHER, "Model to ask (required unless the job file sets it; repeat it to compare models).",
            REQUEST, "-m/--model", "NAME", multiple=True, chat="Model to ask (required)."),
    Setting("provider", CHOICE, "The API: " + ", ".join(f"{p.name} ({p.key_env})" for p in PROVIDERS.values()
            if p.key_env) + ", or sim (the built-in simulator, no key)", REQUEST,
            default="together", choices=tuple(PROVIDERS), chat=True),
    Setting("base_url", TEXT, "Any OpenAI-compatible endpoint, e.g. http://localhost:8000/v1.", REQUEST,
            metavar="URL", chat=True),
    Setting("api_key_env", TEXT, "Environment variable holding the API key.", REQUEST, metavar="NAME", chat=True),
    Setting("max_tokens", INT, "Most tokens per answer.", REQUEST, low=1, chat=True),
    Setting("temperature", FLOAT, "Sampling temperature.", REQUEST, low=0.0, chat=True),
    Setting("top_p", FLOAT, "Nucleus sampling probability.", REQUEST, low=0.0, high=1.0, chat=True),
    Setting("params", OTHER, "Any other request field; VALUE is read as JSON when it parses. Repeatable.",
            REQUEST, "--param", "KEY=VALUE", multiple=True, chat=True),
    Setting("variants", OTHER, "Also send every row with these request options (name=... names it). "
            "Repeatable: --variant temperature=0 --variant temperature=0.7.", REQUEST, "--variant",
            "KEY=VALUE,...", multiple=True),
    Setting("stream", FLAG, "Stream answers (SSE) to measure time to first token (ttft_s)", REQUEST,
            "--stream/--no-stream", default=False, chat="Print the answer as it arrives [default: no]."),
    Setting("concurrency", INT, "Requests in flight at once, at most: fewer while a server shows it takes fewer",
            LIMITS, low=1, high=10_000, default=default(Limits, "concurrency")),
    Setting("rpm", INT, "Requests per minute, never exceeded", LIMITS, low=1,
            shown_default="adapt to 429s and rate-limit headers"),
    Setting("tpm", INT, "Tokens per minute (prompt estimate + max_tokens, corrected by usage).", LIMITS, low=1),
    Setting("max_attempts", INT, "Attempts per request, the first included", LIMITS, low=1, high=100,
            default=default(RetryPolicy, "max_attempts"), chat=True),
    Setting("timeout", FLOAT, "Limit for each attempt; when streaming, for each silence", LIMITS,
            metavar="SECONDS", low=0.001, default=default(RetryPolicy, "timeout_s"), chat=True),
    Setting("prices", OTHER, "US dollars per million input and output tokens of MODEL, over the job file's and "
            "the catalogue's. Repeatable.", LIMITS, "--price", "MODEL=IN,OUT", multiple=True),
    Setting("max_cost", FLOAT, "Stop sending before this run would spend more (needs a price for every model, "
            "and --max-tokens).", LIMITS, metavar="USD", low=0.0),
    Setting("output", OTHER, f"Output table: {_suffixes()}", OUTPUT, "-o/--output", "PATH",
            shown_default="INPUT.out.parquet beside the input"),
    Setting("restart", FLAG, "Forget the journal of earlier runs: send every row again.", OUTPUT),
    Setting("reuse", OTHER, "Reuse the answers another output's journal holds (a trial written with -o); "
            "repeatable.", OUTPUT, metavar="OUTPUT", multiple=True, file=True),
    Setting("retry_errors", FLAG, "Send again the rows that ended in error in earlier runs.", OUTPUT),
    Setting("dedup", FLAG, "Send identical requests once and give every row the answer; --no-dedup sends each "
            "(sampling)", OUTPUT, "--dedup/--no-dedup", default=True, shown_default="dedup"),
    Setting("grace", FLOAT, "After Ctrl-C or SIGTERM, how long requests in flight may finish", OUTPUT,
            metavar="SECONDS", low=0.0, high=3600.0, default=default(Resume, "grace_s")),
    Setting("json_schema", OTHER, "Ask for JSON fitting this schema (inline, or a .json file); fields become "
            "out_<field> columns.", EVALUATION, metavar="JSON|FILE"),
    Setting("labels", OTHER, "Answers must be one of these labels; adds a `label` column.", EVALUATION,
            metavar="A,B,..."),
    Setting("invalid_retries", INT, "Asks again for an answer that breaks the schema or labels", EVALUATION,
            low=0, high=100, default=default(Answers, "invalid_retries")),
    Setting("expected_column", TEXT, "Column of expected answers; adds a `score` column.", EVALUATION,
            metavar="NAME"),
    Setting("score", CHOICE, "How answers are compared with the expected column", EVALUATION,
            default=default(Scoring, "method"), choices=SCORES),
    Setting("batch_api", FLAG, "Send the requests as the provider's batches (" + ", ".join(
            p.name.capitalize() for p in PROVIDERS.values() if p.batch_max_lines) + "): about half the price, results "
            "within 24 h, no rate limit. The same output table.", BATCHES),
    Setting("detach", FLAG, "Submit the batches and exit; run the same command again to collect.", BATCHES,
            "--detach/--no-detach"),
    Setting("poll_every", FLOAT, "How often a waiting run asks how its batches stand", BATCHES,
            metavar="SECONDS", low=0.01, high=3600.0, default=default(BatchAPI, "poll_s"),
            shown_default=f"{default(BatchAPI, 'poll_s'):g}; {SIM_POLL_S:g} for a server on this machine"),
    Setting("cancel", FLAG, "Cancel this output's running batches; keep what they finished.", BATCHES),
    Setting("live_retry", FLAG, "With --retry-errors, send the rows that failed live, not batched.", BATCHES),
    Setting("batch_discount", FLOAT, "A batch's price off the live price, where the price has no batch rate.",
            BATCHES, flag=None, low=0.0, high=1.0, default=default(BatchAPI, "discount")),
    Setting("ray", OTHER, "Answer on Ray workers (pip install 'batchchat[ray]'): alone, a Ray started for the "
            "run; or a cluster's address (auto, ray://head:10001). Limits are the cluster's totals.", CLUSTER,
            metavar="[ADDRESS]", bare="local"),
    Setting("ray_workers", INT, "Ray workers", CLUSTER, metavar="N", low=1, high=10_000,
            shown_default="one per CPU of the cluster"),
    Setting("simulator", OTHER, "A simulator setting, with --provider sim (" + ", ".join(SIM_KEYS) + "). "
            "Repeatable.", None, "--sim", "KEY=VALUE,...", multiple=True),
    # Job files and keywords only: another spelling of a setting above.
    Setting("models", OTHER, flag=None),
    Setting("stream_tokens", FLAG, flag=None, default=False),
    Setting("response_format", OTHER, flag=None),
)  # fmt: skip
SETTING = {setting.name: setting for setting in TABLE}
SETTINGS = tuple(SETTING)
# Settings that say one thing two ways; the job file may use one while a flag sets the other.
SAME_SETTING = {
    "stream": ("stream_tokens",),
    "stream_tokens": ("stream",),
    "model": ("models",),
    "models": ("model",),
    "json_schema": ("response_format",),
    "response_format": ("json_schema",),
}


def flag_name(key: str) -> str:
    """A setting as a flag names it; one with no flag, as the flag of its other spelling does."""
    setting = SETTING.get(key)
    if setting is not None and setting.flag is None:
        other = next((SETTING[o] for o in SAME_SETTING.get(key, ()) if SETTING[o].flag is not None), None)
        setting = other or setting
    return setting.shown if setting is not None else "--" + key.replace("_", "-")


def read(s: Mapping[str, Any], at: Callable[[str], str], name: str) -> Any:
    """A setting's value from the settings given, checked as the table says (its kind, bounds and
    choices), or its default when unset."""
    setting = SETTING[name]
    raw, where = s.get(name), at(name)
    if setting.kind == FLAG:
        return flag(raw, where, bool(setting.default))
    if setting.kind == INT:
        value: Any = whole(raw, where, *_bounds(setting))
    elif setting.kind == FLOAT:
        value = number(raw, where, setting.low, setting.high)
    elif setting.kind == TEXT:
        value = text(raw, where)
    elif setting.kind == CHOICE:
        value = choice(raw, where, setting.choices)
    else:
        raise AssertionError(f"{name} is read by its own parser")
    return setting.default if value is None else value


def _bounds(setting: Setting) -> tuple[int | None, int | None]:
    return (None if setting.low is None else int(setting.low)), (None if setting.high is None else int(setting.high))


def choice(value: Any, at: str, choices: tuple[str, ...]) -> str | None:
    chosen = text(value, at)
    if chosen is not None and chosen not in choices:
        raise JobError(f"{at} must be one of {', '.join(choices)}, got {chosen!r}{did_you_mean(chosen, choices)}")
    return chosen


def text(value: Any, at: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise JobError(f"{at} must be non-empty text, got {value!r}")
    return value


def table_path(value: Any, at: str, what: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise JobError(f"{at} must be a file path, got {value!r}")
    path = Path(value)
    if format_of(path) is None:
        raise JobError(
            f"{at}: cannot tell the format of {what} file {path} from its suffix "
            f"'{path.suffix}'; use one of {', '.join(SUFFIXES)}"
        )
    return path


def flag(value: Any, at: str, default: bool) -> bool:
    return default if value is None else boolean(value, at)


def boolean(value: Any, at: str) -> bool:
    if not isinstance(value, bool):
        raise JobError(f"{at} must be true or false, got {value!r}")
    return value


def whole(value: Any, at: str, low: int | None = None, high: int | None = None) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise JobError(f"{at} must be a whole number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobError(f"{at} must be a whole number, got {value!r}")
    check_range(value, at, low, high)
    return value


def number(value: Any, at: str, low: float | None = None, high: float | None = None) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise JobError(f"{at} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JobError(f"{at} must be a number, got {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        raise JobError(f"{at} must be a finite number, got {value!r}")
    check_range(value, at, low, high)
    return float(value)


def check_range(value: float, at: str, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise JobError(f"{at} must be at least {low:g}, got {value!r}")
    if high is not None and value > high:
        raise JobError(f"{at} must be at most {high:g}, got {value!r}")


def table(value: Any, at: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise JobError(f"{at} must be a table of name = value pairs, got {value!r}")
    return dict(value)


def did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""
