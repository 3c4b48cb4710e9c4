"""The settings a job has, and how one setting's value is checked.

Each check takes ``at``, the setting's name as its user wrote it (a flag, a job-file key or a
keyword), so an error tells them exactly what to change.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.errors import JobError
from ..core.tableformats import SUFFIXES, format_of

SETTINGS = (
    "input", "output", "model", "prompt_column", "template", "messages_column", "system",
    "provider", "base_url", "api_key_env", "max_tokens", "temperature", "top_p", "params",
    "concurrency", "rpm", "tpm", "max_attempts", "timeout", "stream", "stream_tokens", "dedup", "restart",
    "retry_errors", "grace", "simulator", "models", "variants", "option_columns", "options_column",
    "response_format", "json_schema", "labels", "invalid_retries", "expected_column", "score",
    "turns_column", "prices", "max_cost", "limit", "batch_api", "poll_every", "detach", "cancel", "live_retry",
    "batch_discount", "ray", "ray_workers", "reuse",
)  # fmt: skip
# Settings that say one thing two ways; the job file may use one while a flag sets the other.
SAME_SETTING = {
    "stream": ("stream_tokens",),
    "model": ("models",),
    "models": ("model",),
    "json_schema": ("response_format",),
    "response_format": ("json_schema",),
}




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
