"""Prompt templates: ``{column}`` placeholders, ``{{`` and ``}}`` for literal braces.

A small parser of our own rather than ``str.format``: format fields read ``{a.b}``, ``{a[0]}``
and ``{a:>10}`` as attribute, index and format syntax, so a column named ``score:raw`` or
``q.text`` could not be used and a stray brace would raise deep inside a run. Here a
placeholder is whatever lies between the braces, and every mistake is found when the
template is parsed, before any row is read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import JobError


@dataclass(frozen=True, slots=True)
class Template:
    text: str
    parts: tuple[tuple[bool, str], ...]  # (is_placeholder, literal text or column name)

    @property
    def columns(self) -> tuple[str, ...]:
        """Placeholders in first-use order, each once."""
        return tuple(dict.fromkeys(name for is_field, name in self.parts if is_field))

    def render(self, values: Mapping[str, Any]) -> str:
        out = []
        for is_field, text in self.parts:
            out.append(cell_text(values[text]) if is_field else text)
        return "".join(out)


def cell_text(value: Any) -> str:
    """How a cell reads inside a template: text as is, a missing value as nothing, a list or an
    object (from Parquet) as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 2**53 else str(value)
    return str(value)


def parse_template(text: str, setting: str = "template") -> Template:
    parts: list[tuple[bool, str]] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "{":
            if text.startswith("{{", i):
                literal.append("{")
                i += 2
                continue
            end = text.find("}", i + 1)
            inner = text[i + 1 : end] if end != -1 else ""
            if end == -1 or "{" in inner:
                raise JobError(
                    f"{setting}: the '{{' at character {i + 1} is never closed; "
                    "write {column} for a value, or {{ for a literal brace"
                )
            if not inner.strip():
                raise JobError(
                    f"{setting}: empty placeholder '{{}}' at character {i + 1}; "
                    "put a column name inside, or write {{}} for literal braces"
                )
            if literal:
                parts.append((False, "".join(literal)))
                literal = []
            parts.append((True, inner))
            i = end + 1
        elif ch == "}":
            if text.startswith("}}", i):
                literal.append("}")
                i += 2
                continue
            raise JobError(f"{setting}: the '}}' at character {i + 1} closes nothing; write }}}} for a literal brace")
        else:
            literal.append(ch)
            i += 1
    if literal:
        parts.append((False, "".join(literal)))
    if not any(is_field for is_field, _ in parts):
        raise JobError(
            f"{setting}: the template has no {{column}} placeholder, so every row would send "
            "the same prompt; name at least one input column in braces"
        )
    return Template(text, tuple(parts))
