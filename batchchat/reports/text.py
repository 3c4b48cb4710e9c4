"""What the CLI shows about a run, as text: the plan, progress lines, the summary, a dry run.

Kept apart from ``cli.py`` so the wording can be tested without a terminal, and light to import:
nothing here loads pyarrow or aiohttp.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..core.words import dollars, duration, plural
from ..execute.base import BatchProgress, Ending
from ..job.endpoint import endpoint_label, key_state
from ..providers import dialect
from ..store.stats import PAID_EARLIER, PAID_RUN, PAID_SHARED, BatchTimes, percentile

if TYPE_CHECKING:
    from ..execute.pipeline import RunResult
    from ..plan.plan import Plan
    from ..runs.dryrun import DryRun
    from ..store.stats import GroupSummary, Stats, Summary
    from .survey import Overview

SHOWN_REQUEST_CHARS = 600


def plan_lines(plan: Plan) -> list[str]:
    """What a run is about to do: rows, fan-out, what earlier runs and dedup spare it."""
    fanout = ""
    if plan.rows != plan.input_rows:  # a fan-out: say what multiplies
        parts = [plural(plan.input_rows, "row"), f"{plan.models} models" if plan.models > 1 else "",
                 plural(plan.variants, "variant") if plan.variants else ""]  # fmt: skip
        fanout = f" ({' x '.join(p for p in parts if p)})"
    lines = [f"{plural(plan.rows, 'row')}{fanout} from {plan.source} -> {plan.endpoint}"]
    if plan.limit is not None and plan.input_rows >= plan.limit:
        first = "the first input row" if plan.limit == 1 else f"the first {plan.limit:,} input rows"
        again = f" by a run to {plan.output}, or to another output given --reuse {plan.output}" if plan.output else ""
        lines.append(f"only {first} (--limit); run without it to go on: what is answered now is not sent again{again}")
    if plan.invalid_rows:
        more = ", ..." if plan.invalid_inputs > len(plan.first_invalid) else ""
        shown = ", ".join(map(str, plan.first_invalid)) + more
        one = plan.invalid_inputs == 1
        lines.append(
            f"{plural(plan.invalid_inputs, 'input row')} {'has' if one else 'have'} nothing to send, an empty "
            f"prompt ({'row' if one else 'rows'} {shown}): "
            + (
                f"{'its' if one else 'their'} {plural(plan.invalid_rows, 'output row')} become error rows"
                if plan.rows != plan.input_rows
                else f"{'it becomes an error row' if one else 'they become error rows'}"
            )
            + " (invalid_input) without a request"
        )
    if plan.assumed_endpoint is not None:
        lines.append(
            f"the journal was written by an earlier batchchat, which did not record where answers came from: "
            f"its {plural(plan.legacy, 'answer')} are taken as answers from {endpoint_label(plan.assumed_endpoint)} "
            "(recorded with this run's first answer; --restart sends everything again)"
        )
    if plan.damaged_records:
        lines.append(
            f"the journal holds {plural(plan.damaged_records, 'damaged record')} (wrong shape or types): "
            "skipped, so their requests are sent again"
        )
    for endpoint, count in plan.elsewhere:
        lines.append(
            f"the journal holds {plural(count, 'answer')} from {endpoint_label(endpoint)}; "
            "they are not reused for this endpoint"
        )
    notes = []
    if plan.done_rows:
        notes.append(f"{plural(plan.done_rows, 'row')} answered by an earlier run (journal)")
    if plan.reasked:
        notes.append(f"{plural(plan.reasked, 'answer')} that failed the job's checks will be asked again (re-asks)")
    if plan.rejudged:
        notes.append(
            f"{plural(plan.rejudged, 'stored answer')} {'fails' if plan.rejudged == 1 else 'fail'} the job's "
            "changed checks: asked again while re-asks are left, else an error"
        )
    if plan.shared_rows:
        notes.append(f"{plural(plan.shared_rows, 'row')} {'shares' if plan.shared_rows == 1 else 'share'} a request "
                     "with an identical row")  # fmt: skip
    if notes:
        lines.append(f"{'; '.join(notes)}; {to_send(plan)}")
    elif plan.waiting:
        lines.append(to_send(plan))
    return lines


def to_send(plan: Plan) -> str:
    """The requests still to answer: those already waiting in provider batches are not sent again."""
    if not plan.waiting:
        return f"{plural(plan.to_send, 'request')} to send"
    return (f"{plural(plan.to_send - plan.waiting, 'request')} to send, "
            f"{plan.waiting:,} waiting in provider batches submitted before")  # fmt: skip


def progress_line(total: int, stats: Stats | None, elapsed_s: float, stopping: bool = False,
                  news: tuple[str | None, str | None] = (None, None)) -> str:  # fmt: skip
    """One plain line of progress, for logs: requests done, rate, trouble, tokens, cost, time left
    (or, once the run is stopping, that it is). ``news``: a change of the rate and of the
    concurrency since the line before, told once."""
    done = stats.done if stats is not None else 0
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    line = f"progress: {done:,} of {plural(total, 'request')} ({done / max(total, 1):.0%}), {rate:,.1f}/s"
    if stats is not None:
        c = stats.counters
        if c.rate is not None:
            line += f" (the throttle allows {c.rate:,.1f}/s)"
        line += (f"; {plural(c.rate_limited, '429')}, {plural(c.retries, 'retry', 'retries')}, "
                 f"{plural(stats.errors, 'error')}; {plural(stats.tokens, 'token')}")  # fmt: skip
        if stats.cost is not None:
            line += f"; cost {dollars(stats.cost)}"
        waiting = c.waiting_until - time.time()
        if waiting >= 1:
            line += f"; waiting {duration(waiting)} for the server's rate limit to reset"
        cut, crowded = news
        if cut:
            line += f"; rate changed {cut}"
        if crowded:
            line += f"; concurrency lowered: {crowded}"
    if stopping:
        line += "; stopping: waiting for the requests in flight"
    elif 0 < done < total and rate > 0:
        line += f"; about {duration((total - done) / rate)} left"
    return line


def summary_text(result: RunResult, finished: bool = True) -> str:
    """The summary of a run; ``finished=False`` for one that was stopped."""
    s = result.summary
    status = f"{s.ok:,} ok, {plural(s.errors, 'error')}"
    if s.error_types:
        status += " (" + ", ".join(f"{name} {count:,}" for name, count in s.error_types) + ")"
    if s.pending:
        status += f", {s.pending:,} pending"
    if s.rows == 0 and not finished:  # stopped at once: nothing was assembled
        lines = [f"stopped at once: the output was not written; the journal keeps what this run finished "
                 f"({plural(s.answered, 'request')})"]  # fmt: skip
    else:
        lines = [f"{'done' if finished else 'stopped'}: {plural(s.rows, 'row')}: {status}"]
    invalid = f", {plural(s.invalid_answers, 'invalid answer')} (JSON or label)" if s.invalid_answers else ""
    if s.batches is not None and s.batches.any:
        lines += [f"this run: provider batches: {batch_times_text(s.batches)}; {plural(s.answered, 'request')} finished{invalid}",
                  tokens_line(s)]  # fmt: skip
    elif s.requests == 0 and s.answered == 0 and not s.budget_stopped:
        lines.append("this run: nothing to send (every row was answered before, or had nothing to send)")
    else:
        lines += [
            f"this run: {plural(s.answered, 'request')} finished in {s.wall_s:.1f} s ({s.requests_per_s:,.1f}/s); "
            f"{s.requests:,} sent, {s.rate_limited:,} answered 429{f', {s.busy:,} answered {s.busy_as}' if s.busy else ''}, "
            f"{plural(s.retries, 'retry', 'retries')}{invalid}",
            tokens_line(s),
        ]
    if s.latency_p50_s is not None and s.latency_p95_s is not None:
        latency = f"latency: p50 {s.latency_p50_s:.2f} s, p95 {s.latency_p95_s:.2f} s"
        if s.ttft_p50_s is not None and s.ttft_p95_s is not None:
            latency += f"; first token: p50 {s.ttft_p50_s:.2f} s, p95 {s.ttft_p95_s:.2f} s"
        lines.append(latency)
    if s.crowded:
        lines.append(f"concurrency lowered: {s.crowded}")
    if s.paced:
        lines.append(f"rate: {s.paced}")
    if s.notes:
        lines.append("answers with odd values, read as well as they could be: "
                     + "; ".join(f"{count:,} with {note}" for note, count in s.notes))  # fmt: skip
    if s.extra_batches:
        lines.append(f"the provider made {plural(s.extra_batches, 'extra batch', 'extra batches')} of files submitted "
                     "once (a create that failed, then acted): collected, and cancelled where the provider's batches "
                     "say which file they hold; what they finished is counted as paid")  # fmt: skip
    if s.cancelled:
        lines.append(f"cancelled: {plural(s.cancelled, 'batch', 'batches')}; what they finished before is kept, and "
                     "the rest are 'batch_cancelled' rows (--retry-errors asks them again)")  # fmt: skip
    if s.uncancelled:
        lines.append(f"not cancelled: {plural(s.uncancelled, 'batch', 'batches')} found after a create whose answer was "
                     "lost, taken for this output's by time and size alone (the provider's batches do not say what "
                     "they hold), so perhaps someone else's: collected once ended, their results telling whose")  # fmt: skip
    for batch, count in s.repeated:
        lines.append(f"batch {batch} gave {plural(count, 'result line')} for requests answered already (by another "
                     "of its lines, or another batch of the same file): one answer stands, an answer over an error, and every line "
                     "that carried usage was counted as paid")  # fmt: skip
    if s.labels:
        lines.append("labels: " + ", ".join(f"{label} {count:,}" for label, count in s.labels))
    if s.ok == 0 and dict(s.error_types).get("invalid_label", 0) == s.errors > 0:
        lines.append("no answer named a label: does the prompt list them? (a `batchchat serve` simulator answers "
                     "labels only when started with --labels)")  # fmt: skip
    if any(payer != PAID_RUN for payer, _ in s.paid):
        lines.append(output_tokens_line(s.output_prompt_tokens, s.output_completion_tokens, s.output_cost, s.paid))
    if s.earlier_without_ttft:
        lines.append(
            f"{plural(s.earlier_without_ttft, 'row')} answered by earlier runs without streaming: "
            f"{'its' if s.earlier_without_ttft == 1 else 'their'} ttft_s is empty"
        )
    if len(s.groups) > 1 or any(g.scored for g in s.groups):
        lines += group_table(s.groups)
    if s.budget_stopped:
        lines.append(cap_line(s))
    if result.ending is Ending.DETACHED:
        lines.append(
            f"the {plural(s.pending, 'row')} still pending {'runs' if s.pending == 1 else 'run'} as provider batches: "
            "run the same command again to collect what they finished (they finish within 24 h); --cancel cancels them"
        )
    if result.output is not None:
        lines.append(f"output: {result.output}")
    return "\n".join(lines)


def cap_line(s: Summary) -> str:
    """What the cost cap stopped, how close the run came to it, and what to do. A provider batch
    run's cap counts what it submitted, not the answers it collected of earlier runs' batches."""
    cap = s.cost_cap or 0.0
    spent, bound = s.cap_stop if s.cap_stop is not None else (s.cost or 0.0, None)
    if bound is not None and s.requests == 0 and spent == 0:
        return (f"stopped at the cost cap: nothing was sent, since the first request may cost up to {dollars(bound)} "
                f"(an upper bound), more than the cap of {dollars(cap)}; raise the cap to send it")  # fmt: skip
    close = ""
    if bound is not None:
        left, most = _apart(max(0.0, cap - spent), bound)
        close = f", {left} left, once every answer in flight had come: the next request may cost up to {most}"
    return (f"stopped at the cost cap: spent {dollars(spent)}{_unreported(s)} of {dollars(cap)} this run{close}; "
            f"the {plural(s.pending, 'row')} not sent {'is' if s.pending == 1 else 'are'} 'pending'; run again to "
            "continue (each run may spend up to the cap)")  # fmt: skip


def _apart(smaller: float, larger: float) -> tuple[str, str]:
    """Two amounts as dollars, with digits enough to tell them apart."""
    for digits in (None, 4, 6, 8):
        shown = [dollars(v) if digits is None else f"${v:,.{digits}f}" for v in (smaller, larger)]
        if shown[0] != shown[1]:
            break
    return shown[0], shown[1]


def quiet_line(result: RunResult, finished: bool = True) -> str:
    """The one line a quiet run ends with, for a cron job's log: when, rows and how they ended,
    what this run sent and spent, and where the output is."""
    s = result.summary
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    line = f"{when} {'done' if finished else 'stopped'}: {plural(s.rows, 'row')}, {s.ok:,} ok, {plural(s.errors, 'error')}"
    if s.error_types:
        line += " (" + ", ".join(f"{name} {count:,}" for name, count in s.error_types) + ")"
    line += f", {s.pending:,} pending; this run "
    if s.batches is not None and s.batches.any:
        line += f"provider batches: {batch_times_text(s.batches)}; {plural(s.answered, 'request')} finished"
    else:
        line += f"{plural(s.answered, 'request')} in {duration(s.wall_s)}"
    if s.cost is not None:
        line += f", cost {dollars(s.cost)}"
    if s.budget_stopped:
        nothing = s.requests == 0 and s.cap_stop is not None and s.cap_stop[0] == 0
        line += " (stopped at the cost cap: the first request may cost more; raise it)" if nothing else " (stopped at the cost cap)"
    return line + (f"; output: {result.output}" if result.output is not None else "")


def batch_times_text(b: BatchTimes) -> str:
    """Provider batches, after "provider batches: ": submitted, collected and how long they took,
    still waiting."""
    parts = []
    if b.submitted:
        parts.append(f"{plural(b.submitted, 'batch', 'batches')} submitted ({plural(b.submitted_requests, 'request')})")
    if b.collected:
        took = ""
        if len(b.waits) == 1:
            took = f"; {duration(b.waits[0])} from submission to collection"
        elif b.waits:
            took = (f"; from submission to collection: median {duration(percentile(b.waits, 50) or 0)}, "
                    f"longest {duration(b.waits[-1])}")  # fmt: skip
        parts.append(f"{b.collected:,} collected ({plural(b.collected_requests, 'request')}{took})")
    if b.waiting:
        parts.append(f"{b.waiting:,} still waiting at the provider ({plural(b.waiting_requests, 'request')})")
    return ", ".join(parts) if parts else "none"


def _unreported(s: Summary) -> str:
    """What the answers that reported no usage may have cost, which the cap counts at its bound."""
    if not s.unreported_cost:
        return ""
    return f" (and up to {dollars(s.unreported_cost)} for {plural(s.unreported, 'answer')} that reported no usage)"


def batches_line(progress: BatchProgress) -> str:
    """How the provider's batches stand."""
    line = (f"batches: {progress.finished:,} of {plural(progress.batches, 'batch', 'batches')} finished; "
            f"{progress.done:,} of {plural(progress.requests, 'request')} done at the provider")  # fmt: skip
    return line + (f" ({progress.failed:,} failed)" if progress.failed else "")


def tokens_line(s: Summary) -> str:
    """This run's tokens and cost; answers whose server reported no usage are said, not counted
    as zero."""
    reported = s.total_tokens > 0 or not s.unreported
    line = "tokens this run: "
    if reported:
        line += f"{s.prompt_tokens:,} prompt + {s.completion_tokens:,} completion = {s.total_tokens:,}"
    if s.rows_beyond_run:
        line += (f" (the rows it answered count {abs(s.rows_beyond_run):,} "
                 f"{'more' if s.rows_beyond_run > 0 else 'fewer'}: they count answers earlier runs paid for, asked "
                 "again now or a conversation's earlier turns, and leave out answers this run paid for that no row "
                 "counts yet, such as answers to be asked again, unfinished conversations, repeated batch result "
                 "lines and answers that reported no usage)")  # fmt: skip
    if s.unreported:
        line += ("; " if reported else "") + f"usage not reported for {plural(s.unreported, 'answer')}"
    if s.cost is not None and not reported:
        line += "; cost unknown: no answer said how many tokens it took"
    elif s.cost is not None:
        line += f"; cost {dollars(s.cost)}" + (" for the answers that reported usage" if s.unreported else "")
    return line


def output_tokens_line(prompt: int, completion: int, cost: float | None, paid: Sequence[tuple[str, int]], *,
                       run: str = "this run", counted_once: bool = True) -> str:  # fmt: skip
    """The tokens and cost of an output's requests, each counted once, and who paid for its rows'
    (its ``paid`` column): how the table's columns sum to these figures. A table from before that
    column cannot tell shared rows apart: its rows are summed, and it says so."""
    if counted_once:
        line = f"the output's requests, each counted once: {prompt:,} prompt + {completion:,} completion tokens"
    else:
        line = (f"the output's rows, each counted (a table without the paid column, from an older batchchat: rows "
                f"sharing a request count it again; run the job again to rewrite it): {prompt:,} prompt + "
                f"{completion:,} completion tokens")  # fmt: skip
    line += f"; cost {dollars(cost)}" if cost is not None else ""
    if paid:
        words = {**PAID_WORDS, PAID_RUN: run}
        line += "; rows paid by " + ", ".join(f"{words[payer]} {count:,}" for payer, count in paid)
    return line


# How each ``paid`` value reads: the rows of a shared request are counted where it was paid.
PAID_WORDS = {PAID_RUN: "this run", PAID_EARLIER: "an earlier run", PAID_SHARED: "another row (shared)"}


def group_table(groups: Sequence[GroupSummary]) -> list[str]:
    """Per model and variant, over every row of the output."""
    header = ("model", "variant", "rows", "ok", "errors", "accuracy", "p50 s", "p95 s", "tokens", "cost")
    rows = [header]
    for g in groups:
        accuracy = f"{g.accuracy:.1%} of {g.scored:,}" if g.accuracy is not None else "-"
        rows.append((g.model, g.variant or "-", f"{g.rows:,}", f"{g.ok:,}", f"{g.errors:,}", accuracy,
                     _seconds(g.latency_p50_s), _seconds(g.latency_p95_s), f"{g.tokens:,}", dollars(g.cost)))  # fmt: skip
    return _columns(rows)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned text columns, right-aligned numbers."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def dry_run_text(dry: DryRun) -> str:
    plan = dry.plan
    lines = ["dry run: nothing was sent", *plan_lines(plan)]
    if not plan.done_rows and not plan.shared_rows and not plan.waiting:  # else plan_lines said it
        lines.append(f"{plural(plan.to_send, 'request')} to send")
    rows = [("model", "variant", "requests", "prompt tokens", "completion tokens", "cost")]
    for g in dry.groups:
        rows.append((g.model, g.variant or "-", f"{g.requests:,}", f"{g.prompt_tokens:,}",
                     f"{g.completion_tokens:,}", dollars(g.cost)))  # fmt: skip
    rows.append(("total", "", f"{plan.to_send:,}", f"{dry.prompt_tokens:,}", f"{dry.completion_tokens:,}",
                 dollars(dry.cost)))  # fmt: skip
    completion = (
        "max_tokens per answer"
        if dry.completion_bounded
        else ("max_tokens per answer, or 256 where it is unset, which bounds nothing")
    )
    lines.append(
        f"estimate, upper bounds (prompt: UTF-8 bytes + the chat template's tokens; completion: {completion}):"
    )
    lines += _columns(rows)
    if plan.to_send:
        lines.append(
            f"typical text takes far fewer prompt tokens than that bound: about {dry.likely_prompt_tokens:,} "
            "(characters / 4)"
        )
    if dry.batch is not None:
        b = dry.batch
        cost = (f"; at batch prices {dollars(b.cost)} (the table's costs are live prices)" if b.cost is not None
                else "")  # fmt: skip
        most = f"at most {b.limits.lines:,} requests and {b.limits.bytes // 2**20} MB"
        if b.inline:
            lines.append(f"as provider batches: {plural(b.requests, 'request')} in {plural(b.files, 'batch', 'batches')}, sent "
                         f"inline (one model a batch, {most}){cost}")  # fmt: skip
        else:
            lines.append(f"as provider batches: {plural(b.requests, 'request')} in {plural(b.files, 'file')}, one "
                         f"batch each (one model a file, {most}){cost}")  # fmt: skip
    if dry.cost is None and plan.to_send:
        lines.append(
            "no price for some models: pass --price MODEL=IN,OUT, or add [prices] to the job file, "
            '"MODEL" = { input = USD, output = USD } per million tokens'
        )
    for model, price in dry.prices.items():
        if price.source != "job":
            lines.append(f"price of {model}: {dollars(price.input)} input, {dollars(price.output)} output per million tokens "
                         f"(from the {price.source}; --price or [prices] overrides it)")  # fmt: skip
    if dry.messages_from:
        lines.append(f"each row sends: {dry.messages_from}")
    if dry.first_request is not None:
        request = dry.first_request
        body = dialect(dry.dialect).body(request, False, False)  # as it is sent
        if request.turns:
            body["turns"] = list(request.turns)
        text = json.dumps(body, ensure_ascii=False)
        if len(text) > SHOWN_REQUEST_CHARS:
            text = text[: SHOWN_REQUEST_CHARS - 3] + "..."
        lines.append(f"first request: {text}")
    if dry.missing_key:
        lines.append(f"note: {dry.missing_key} {key_state(dry.missing_key)}; a real run needs it "
                     f"(export {dry.missing_key}=...)")  # fmt: skip
    if plan.output is not None:
        lines.append(f"output would be: {plan.output}")
    return "\n".join(lines)


def overview_text(seen: Overview) -> str:
    """An output summed up (``batchchat show``): rows by status and error type, tokens, cost,
    the run's pace from the journal, labels, and the table per model and variant."""
    status = f"{seen.ok:,} ok, {plural(seen.errors_count, 'error')}"
    if seen.error_types:
        status += " (" + ", ".join(f"{name} {count:,}" for name, count in seen.error_types.most_common()) + ")"
    if seen.pending_count:
        status += f", {seen.pending_count:,} pending"
    lines = [f"{seen.output}: {plural(seen.rows, 'row')}: {status}"]
    tally = seen.tally
    lines.append(output_tokens_line(tally.prompt_tokens, tally.completion_tokens, tally.cost, tally.payers,
                                    run="the run that wrote it", counted_once=seen.counted_once))  # fmt: skip
    batches = seen.batches
    if batches is not None:
        lines.append(f"provider batches: {batch_times_text(batches)}")
    elif seen.duration_s is not None:
        rate = seen.requests_per_s
        pace = f"over {duration(seen.duration_s)} ({rate:,.1f}/s)" if rate is not None else "within a second"
        lines.append(f"requests: {len(seen.timeline.at):,} finished {pace}; {seen.rate_limited:,} answered 429, "
                     f"{plural(seen.retries, 'retry', 'retries')}")  # fmt: skip
    if seen.latencies:
        ordered = sorted(seen.latencies)
        lines.append(f"latency: p50 {percentile(ordered, 50) or 0:.2f} s, p95 {percentile(ordered, 95) or 0:.2f} s")
    if seen.labels:
        lines.append("labels: " + ", ".join(f"{label} {count:,}" for label, count in seen.labels.most_common()))
    if len(seen.groups) > 1 or any(g.scored for g in seen.groups):
        lines += group_table(seen.groups)
    if seen.pending_count:
        lines.append(f"{plural(seen.pending_count, 'row')} not finished: run the job again to go on")
    return "\n".join(lines)
