"""The report of an output: one self-contained HTML file, readable offline and small enough to
attach to a ticket, built from the table and its journal (``overview``).

Charts are matplotlib's, rendered to inline SVG with their text kept as text: no script, no
font files, no network, and a few tens of kilobytes a chart. Every figure is an aggregate, and
every table a sample, so a million-row output gives a report of the same size as a small one.
Text from the table (answers, errors, prompts) is escaped: it is shown, never run.
"""

from __future__ import annotations

import html
import io
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.words import dollars, duration, plural, printable
from ..store.stats import percentile
from .survey import Overview, overview, shares
from .text import batch_times_text

COLORS = ("#3b6ea8", "#d9822b", "#5a9a5a", "#b5473f", "#7d5ba6", "#8c6d46", "#c7699b", "#6d6d6d")


def write_report(output: str | Path, to: str | Path | None = None) -> Path:
    """Write the report of ``output`` (a table a run wrote) to ``to``, by default
    ``OUTPUT.report.html`` beside it; returns its path."""
    seen = overview(output)
    path = Path(to) if to is not None else seen.output.with_name(seen.output.name + ".report.html")
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(render(seen), encoding="utf-8")
    temporary.replace(path)  # a reader never sees half a report
    return path


def render(seen: Overview) -> str:
    title = f"batchchat report: {seen.output.name}"
    sections = [_summary(seen), _job(seen), _timing(seen), _groups(seen), _answers(seen), _rows(seen)]
    data = json.dumps(seen.as_dict(), ensure_ascii=False).replace("</", "<\\/")
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width'><title>{_e(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{_e(title)}</h1><p class=meta>{_e(str(seen.output))} &middot; "
        f"made {time.strftime('%Y-%m-%d %H:%M')}</p>{''.join(s for s in sections if s)}"
        f"<script type=application/json id=figures>{data}</script></body></html>\n"
    )


def _summary(seen: Overview) -> str:
    facts = [("rows", f"{seen.rows:,}"), ("ok", f"{seen.ok:,}"), ("errors", f"{seen.errors_count:,}")]
    if seen.pending_count:
        facts.append(("pending", f"{seen.pending_count:,}"))
    tokens = "tokens" if seen.counted_once else "tokens, every row (an older table: shared requests count again)"
    facts.append((tokens, f"{seen.prompt_tokens:,} prompt + {seen.completion_tokens:,} completion"))
    if seen.cost is not None:
        facts.append(("cost", dollars(seen.cost)))
    if seen.batches is not None:
        facts.append(("provider batches", batch_times_text(seen.batches)))
    elif seen.duration_s is not None:
        facts.append(("duration", duration(seen.duration_s)))
        if seen.requests_per_s is not None:
            facts.append(("requests/s", f"{seen.requests_per_s:,.1f}"))
    if seen.timeline.at:
        facts += [("answered 429", f"{seen.rate_limited:,}"), ("retries", f"{seen.retries:,}")]
    cards = "".join(f"<div class=card data-fact='{_e(k)}'><b>{_e(v)}</b><span>{_e(k)}</span></div>" for k, v in facts)
    body = f"<div class=cards>{cards}</div>"
    if seen.error_types:
        body += _table(["error type", "rows"], [[k, f"{v:,}"] for k, v in seen.error_types.most_common()])
    if seen.pending_count:
        body += (f"<p>{plural(seen.pending_count, 'row')} not finished (the run was stopped, or is still going): "
                 "run the same command again to go on.</p>")  # fmt: skip
    return _section("Summary", body)


def _job(seen: Overview) -> str:
    job = seen.job
    if not job:
        return ""
    rows = [[key, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)] for key, value in job.items()]
    return _section("Settings", _table(["setting", "value"], rows) + "<p class=meta>The key is never recorded.</p>")


def _timing(seen: Overview) -> str:
    charts = []
    if seen.latencies:
        charts.append(_histogram(seen.latencies, "latency, s", "rows"))
    if seen.ttfts:
        charts.append(_histogram(seen.ttfts, "time to first token, s", "rows"))
    if seen.duration_s is not None and seen.duration_s >= 3 and seen.batches is None:  # else no "over time" to see
        charts.append(_over_time(seen))
    if seen.tokens_per_row:
        charts.append(_histogram(seen.tokens_per_row, "tokens per row", "rows"))
    if len(seen.cost_by_model) > 0 and any(seen.cost_by_model.values()):
        models = list(seen.cost_by_model)
        charts.append(_bars(models, [seen.cost_by_model[m] for m in models], "cost, US dollars"))
    if not charts:
        return ""
    latency = ""
    if seen.latencies:
        ordered = sorted(seen.latencies)
        latency = (f"<p>latency p50 {percentile(ordered, 50):.2f} s, p95 {percentile(ordered, 95):.2f} s"
                   f" over {plural(len(ordered), 'answered row')}</p>")  # fmt: skip
    return _section("Time, tokens and cost", latency + "".join(charts))


def _groups(seen: Overview) -> str:
    groups = seen.groups
    if len(groups) < 2 and not any(g.scored for g in groups):
        return ""
    rows = [[g.model, g.variant or "-", f"{g.rows:,}", f"{g.ok:,}", f"{g.errors:,}",
             f"{g.accuracy:.1%} of {g.scored:,}" if g.accuracy is not None else "-",
             _seconds(g.latency_p50_s), _seconds(g.latency_p95_s), f"{g.tokens:,}", dollars(g.cost)]
            for g in groups]  # fmt: skip
    body = _table(["model", "variant", "rows", "ok", "errors", "accuracy", "p50 s", "p95 s", "tokens", "cost"], rows)
    names = [f"{g.model}" + (f" / {g.variant}" if g.variant else "") for g in groups]
    if any(g.accuracy is not None for g in groups):
        body += _bars(names, [(g.accuracy or 0.0) * 100 for g in groups], "accuracy, %", limit=100)
    else:
        body += _bars(names, [g.ok for g in groups], "ok rows")
    if seen.disagreements:
        rows = [[str(d["row"]), d["input"] or "", "; ".join(f"{a['model']}{' / ' + a['variant'] if a['variant'] else ''}:"
                                                             f" {a['said']}" for a in d["answers"])]
                for d in seen.disagreements]  # fmt: skip
        body += f"<h3>Where they disagree (by {_e(seen.disagreements[0]['by'])})</h3>"
        body += _table(["input row", "input", "answers"], rows)
    return _section("Models and variants", body)


def _answers(seen: Overview) -> str:
    parts = []
    if seen.labels:
        top = shares(seen.labels.items())
        parts.append("<h3>Labels</h3>" + _bars([k for k, _ in top], [v for _, v in top], "rows"))
    for name, distribution in seen.fields.items():
        if distribution.numbers:
            parts.append(f"<h3>{_e(name)}</h3>" + _histogram(distribution.numbers, name, "rows"))
        if distribution.counts:
            top = shares(distribution.counts.items())
            parts.append(f"<h3>{_e(name)}</h3>" + _bars([k for k, _ in top], [v for _, v in top], "rows"))
    return _section("What the answers say", "".join(parts)) if parts else ""


def _rows(seen: Overview) -> str:
    parts = []
    if seen.errors:
        parts.append(f"<h3>Errors (the first {len(seen.errors)})</h3>" + _table(
            ["row", "model", "error type", "error", "input"],
            [[str(r["row"]), r["model"], r["error_type"] or "", r["error"] or "", r["input"] or ""] for r in seen.errors]))
    if seen.slowest:
        parts.append(f"<h3>The slowest {len(seen.slowest)}</h3>" + _table(
            ["row", "model", "latency s", "input", "answer"],
            [[str(r["row"]), r["model"], f"{r['latency_s']:.2f}", r["input"] or "", r["response"] or ""]
             for r in seen.slowest]))
    if seen.samples:
        parts.append(f"<h3>A sample of answers (the first {len(seen.samples)})</h3>" + _table(
            ["row", "model", "input", "answer"],
            [[str(r["row"]), r["model"] + (f" / {r['variant']}" if r["variant"] else ""), r["input"] or "",
              r["response"] or ""] for r in seen.samples]))
    if seen.pending:
        parts.append(f"<h3>Pending (the first {len(seen.pending)})</h3>" + _table(
            ["row", "model", "input"], [[str(r["row"]), r["model"], r["input"] or ""] for r in seen.pending]))
    return _section("Rows", "".join(parts)) if parts else ""  # fmt: skip


# --- charts ------------------------------------------------------------------------------------


def _figure(width: float = 6.4, height: float = 2.4) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Text is text: a label, a model's name or an answer holding "$" ("$$", "$5") is never TeX.
    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "batchchat", "font.size": 9,
                         "axes.spines.top": False, "axes.spines.right": False,
                         "text.parse_math": False, "text.usetex": False})  # fmt: skip
    figure, axes = plt.subplots(figsize=(width, height))
    return figure, axes


def _svg(figure: Any) -> str:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    plt.close(figure)
    svg = buffer.getvalue()
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg[svg.index("<svg") :], flags=re.S)  # RDF about the image
    return "<figure>" + svg + "</figure>"


def _histogram(values: Sequence[float], xlabel: str, ylabel: str) -> str:
    figure, axes = _figure()
    axes.hist(list(values), bins=min(40, max(5, len(values) // 5)), color=COLORS[0])
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    return _svg(figure)


def _bars(names: Sequence[str], values: Sequence[float], ylabel: str, limit: float | None = None) -> str:
    figure, axes = _figure(height=2.4 + 0.12 * max(0, len(names) - 6))
    if limit is not None:
        axes.set_xlim(0, limit)
    # what rows hold is shown as text: no control character (NUL, ESC) reaches the SVG, where XML has none
    shown = [name if len(name) <= 28 else name[:27] + "\u2026" for name in (" ".join(printable(n).split()) for n in names)]
    axes.barh(range(len(values)), values, color=[COLORS[i % len(COLORS)] for i in range(len(values))])
    axes.set_yticks(range(len(values)), shown)
    axes.invert_yaxis()
    axes.set_xlabel(ylabel)
    return _svg(figure)


def _over_time(seen: Overview) -> str:
    """Answers a second, and 429s and retries, over the run's time (a bucket of several seconds
    for a long run)."""
    timeline = seen.timeline
    start = timeline.at[0]
    span = max(timeline.at[-1] - start, 1e-9)
    buckets = min(60, max(3, int(span)))
    width = span / buckets
    done = [0] * (buckets + 1)
    trouble = [0] * (buckets + 1)
    for at, retries in zip(timeline.at, timeline.retries, strict=True):
        slot = min(buckets, int((at - start) / width))
        done[slot] += 1
        trouble[slot] += retries  # a 429 is retried: it counts among them
    xs = [i * width for i in range(buckets + 1)]
    figure, axes = _figure()
    axes.plot(xs, [d / width for d in done], color=COLORS[0], label="answered per second")
    axes.plot(xs, [t / width for t in trouble], color=COLORS[3], label="retries per second (429s among them)")
    axes.set_xlabel("seconds into the run")
    axes.legend(frameon=False)
    return _svg(figure)


# --- html ----------------------------------------------------------------------------------------


def _e(text: str) -> str:
    """Text from the table as text: escaped, and without control characters (NUL, ESC)."""
    return html.escape(printable(text), quote=True)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{body}</section>"


def _cell(text: str) -> str:
    if len(text) <= 120:
        return _e(text)
    return f"<details><summary>{_e(text[:117])}\u2026</summary>{_e(text)}</details>"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;
padding:0 16px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#777;font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:110px}
.card b{display:block;font-size:17px}.card span{color:#666;font-size:12px}
table{border-collapse:collapse;margin:8px 0;font-size:13px;width:100%}
th,td{border-bottom:1px solid #eee;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f6f6}td{max-width:420px;overflow-wrap:anywhere}
figure{margin:8px 0;display:inline-block;max-width:100%}figure svg{max-width:100%;height:auto}
details summary{cursor:pointer}
"""
