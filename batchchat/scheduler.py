"""Async orchestration: workers pull requests, send them through the throttle with retries, and
report every outcome as it happens. No files, no tables: the caller decides where outcomes go.

Workers pull from one shared iterator rather than from a pre-filled queue, so requests are built
only as fast as they are sent and a million-row input never sits in memory at once. There are
twice as many workers as concurrency slots: a request waiting out a backoff holds no slot, and
the spare workers keep the slots busy meanwhile.

Stopping: once ``stop`` is set, no worker takes a new request or starts another attempt; requests
in flight run to their end, and the caller decides how long to wait for them. A budget that a
request would overrun stops the taking of new requests; those under way finish.

An answer that fails ``check`` (not the JSON or label asked for) is asked again, up to
``invalid_retries`` times; a scripted conversation (a request with ``turns``) sends its turns in
order, each with the whole history, as one unit of work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from .cost import Budget, estimate
from .errors import RATE_LIMITED, FatalAPIError, RequestError
from .keys import request_key
from .records import ERROR, OK, PENDING, ChatRequest, ChatResult, RowOutcome, Usage
from .retry import is_fatal, with_retries
from .stats import Counters
from .throttle import Throttle

UNREACHABLE_ATTEMPTS = 3  # attempts that cannot connect, with no answer ever, before the run stops
Send = Callable[[ChatRequest], Awaitable[ChatResult]]
Describe = Callable[[RequestError], str]
Check = Callable[[str | None], tuple[str, str] | None]  # an answer -> None if valid, else (error_type, why)


class Stopped(Exception):
    """The run is stopping: the request is left unfinished, to be sent by a later run."""


class OverBudget(Stopped):
    """The next request would pass the cost cap: it is not sent, and its row stays pending."""


@dataclass
class _Asked:
    """One request's end after every retry: the final answer or error, and what it all took."""

    result: ChatResult | None = None
    error: RequestError | None = None
    invalid: tuple[str, str] | None = None  # (error_type, why) when the final answer was invalid
    attempts: int = 0
    prompt_tokens: int | None = None  # summed over every answer received (each was paid for)
    completion_tokens: int | None = None
    answers: int = 0

    @classmethod
    def before(cls, stored: RowOutcome) -> _Asked:
        """Answers a run before this one paid for, taken up again (a resumed turn, or an answer
        the checks reject, to be asked again); its tokens already count every one of them."""
        usage = Usage(stored.prompt_tokens, stored.completion_tokens, stored.total_tokens)
        result = ChatResult(stored.response, stored.finish_reason, usage, stored.request_id, stored.model,
                            stored.latency_s or 0.0, stored.ttft_s)  # fmt: skip
        asked = cls(result=result)
        asked.count(stored.answers or 1, usage.prompt_tokens, usage.completion_tokens)
        return asked

    def add(self, result: ChatResult) -> None:
        self.count(1, result.usage.prompt_tokens, result.usage.completion_tokens)

    def count(self, answers: int, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        self.answers += answers
        if prompt_tokens is not None:
            self.prompt_tokens = (self.prompt_tokens or 0) + prompt_tokens
        if completion_tokens is not None:
            self.completion_tokens = (self.completion_tokens or 0) + completion_tokens


async def run_requests(
    requests: Iterable[ChatRequest],
    send: Send,
    *,
    throttle: Throttle,
    max_attempts: int,
    on_outcome: Callable[[RowOutcome], None],
    counters: Counters | None = None,
    describe_fatal: Describe = lambda error: error.message,
    stop: asyncio.Event | None = None,
    check: Check | None = None,
    invalid_retries: int = 0,
    budget: Budget | None = None,
    recall: Callable[[str], RowOutcome | None] | None = None,
    keep: Callable[[RowOutcome], None] | None = None,
    prior: Callable[[str], RowOutcome | None] | None = None,
    turn_key: Callable[[ChatRequest, tuple[dict[str, Any], ...]], str] | None = None,
) -> None:
    """Send every request; each ends as exactly one ``RowOutcome`` passed to ``on_outcome``,
    unless ``stop`` is set first, in which case the requests not yet finished get none.

    A failed request is an outcome, not an exception. An error that would fail every request (bad
    key, no credit) raises ``FatalAPIError`` (in an ExceptionGroup) after cancelling all in-flight
    requests: sending more would only fail the same way.

    Each answered turn of a scripted conversation goes to ``keep`` under its own key, and
    ``recall`` finds turns answered before, so a conversation cut short resumes at its first
    unanswered turn instead of paying again for the others. ``prior`` gives a stored answer the
    job's checks now reject: it counts as the first answer, and only the re-asks are sent.

    With a ``budget``, every ask (a request, a conversation's turn, a re-ask) is sent only if its
    estimate fits; the first that does not stops the taking of new requests.
    """
    pending = iter(requests)
    count = counters or Counters()
    turn_key = turn_key or (lambda request, messages: request_key(request.model, messages, request.params))
    stopping = stop or asyncio.Event()
    reached = False  # whether the endpoint ever answered, anything at all
    unreachable = 0  # attempts that could not connect, while it never had

    def give_up_unreachable(error: RequestError) -> None:
        """An endpoint that has never answered and cannot be connected to would fail every row:
        stop, as for a bad key, rather than turn rows into errors (they stay pending)."""
        nonlocal unreachable
        if reached or not error.unreachable:
            return
        unreachable += 1
        if unreachable >= UNREACHABLE_ATTEMPTS or not error.retryable:
            raise FatalAPIError(describe_fatal(error), error) from None

    def note_retry() -> None:
        count.retries += 1

    async def backoff(seconds: float) -> None:
        """A retry's wait, cut short when the run stops (the attempt after it then does not happen)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), seconds)

    async def attempt(request: ChatRequest) -> ChatResult:
        nonlocal reached
        if stopping.is_set():
            raise Stopped
        permit = await throttle.acquire(request)
        try:
            if stopping.is_set():  # the stop came while this request waited for the limits
                raise Stopped
            count.requests += 1
            try:
                result = await send(request)
            except RequestError as error:
                reached = reached or error.status is not None
                throttle.failed(permit, error)
                count.rate_limited += error.error_type == RATE_LIMITED
                count.rate = throttle.rate
                count.waiting_until = time.time() + throttle.held_s
                if is_fatal(error):
                    raise FatalAPIError(describe_fatal(error), error) from None
                give_up_unreachable(error)
                raise
            reached = True
            throttle.succeeded(permit, result)
            count.rate = throttle.rate
            if result.headers:  # a limit that says it is used up holds everyone
                count.waiting_until = time.time() + throttle.held_s
            count.add_usage(request.model, result.usage)  # paid for: the budget reads it from here
            usage = result.usage
            if usage.prompt_tokens is None or usage.completion_tokens is None:  # a server that does not say
                count.add_unreported(request.model, usage, estimate(request))
            return result
        finally:
            throttle.release()

    async def ask(request: ChatRequest, checked: bool, before: RowOutcome | None = None) -> _Asked:
        """Send one request; re-ask while the answer is invalid and re-asks are left.

        ``before`` is an answer paid for earlier that failed the checks (an earlier run's, or one
        the job's changed checks reject): it counts among the answers, and only the re-asks left
        are sent. Each invalid answer with re-asks to go is kept (``keep``) as unfinished, so a
        crash or the cost cap resumes from it rather than paying for it again.
        """
        asked = _Asked()
        if before is not None:
            asked = _Asked.before(before)
            asked.attempts = before.attempts
            asked.invalid = check(before.response) if checked and check is not None else None
        allowed = 1 + (invalid_retries if checked else 0)
        while asked.answers < allowed and (asked.answers == 0 or asked.invalid is not None):
            held = budget.reserve(request) if budget is not None else 0.0
            if held is None:
                raise OverBudget  # the row stays pending; an invalid answer paid for is kept
            try:
                done = await with_retries(partial(attempt, request), max_attempts, sleep=backoff, on_retry=note_retry)
            finally:
                if budget is not None:
                    budget.release(held)
            asked.attempts += done.attempts
            if done.error is not None and done.error.unreachable and not reached:  # its last attempt too
                raise FatalAPIError(describe_fatal(done.error), done.error)
            if done.result is None:
                if asked.result is None:  # nothing answered: the row ends with this error
                    asked.error = done.error
                return asked  # a re-ask that failed leaves the invalid answer standing
            asked.result = done.result
            asked.add(done.result)
            asked.invalid = check(done.result.content) if checked and check is not None else None
            if asked.invalid is None:
                return asked
            count.invalid += 1
            if asked.answers < allowed and keep is not None:
                keep(replace(_outcome(request, asked), status=PENDING))
        return asked

    def recalled(step: ChatRequest) -> RowOutcome | None:
        """A turn answered by an earlier run (or its last answer, still to be re-asked)."""
        stored = recall(step.key) if recall is not None else None
        return stored if stored is not None and stored.status in (OK, PENDING) else None

    async def converse(request: ChatRequest) -> RowOutcome:
        """Each user turn in order, each sent with the whole conversation so far."""
        messages = list(request.messages)
        total = _Asked()
        latency = 0.0
        ttft = None
        for n, turn in enumerate(request.turns, 1):
            messages.append({"role": "user", "content": turn})
            sent = tuple(messages)
            step = replace(request, messages=sent, key=turn_key(request, sent), turns=())
            last = n == len(request.turns)
            stored = recalled(step)
            if stored is not None and stored.status == OK and not (last and check is not None and check(stored.response)):
                asked = _Asked.before(stored)  # answered before, and still good: not sent again
            else:  # the last turn's answer that the checks reject is asked again
                asked = await ask(step, checked=last, before=stored)
            if keep is not None and asked.result is not None and asked.invalid is None and asked.attempts:
                keep(RowOutcome.answered(step, asked.result, asked.attempts))
            total.attempts += asked.attempts
            total.count(asked.answers, asked.prompt_tokens, asked.completion_tokens)
            if asked.result is not None:
                latency += asked.result.latency_s
                ttft = ttft if ttft is not None else asked.result.ttft_s
            total.result, total.error, total.invalid = asked.result, asked.error, asked.invalid
            if asked.result is None or asked.invalid is not None:
                break
            messages.append({"role": "assistant", "content": asked.result.content or ""})
        if total.result is not None and total.invalid is not None:
            messages.append({"role": "assistant", "content": total.result.content or ""})
        outcome = _outcome(request, total, transcript=json.dumps(messages, ensure_ascii=False))
        if total.result is not None:
            outcome = replace(outcome, latency_s=latency, ttft_s=ttft)
        if total.error is not None and len(request.turns) > 1:
            outcome = replace(outcome, error=f"turn {n} of {len(request.turns)}: {outcome.error}")
        return outcome

    async def worker() -> None:
        # An exhausted budget stops new work: no request is taken, and a conversation whose next
        # turn does not fit stops there (its answered turns are journaled; its row stays pending).
        while not stopping.is_set() and not (budget is not None and budget.exhausted):
            request = next(pending, None)
            if request is None:
                return
            try:
                if request.turns:
                    on_outcome(await converse(request))
                else:
                    before = prior(request.key) if prior is not None else None
                    on_outcome(_outcome(request, await ask(request, checked=True, before=before)))
            except Stopped:
                return

    async with asyncio.TaskGroup() as group:
        for _ in range(2 * throttle.concurrency):
            group.create_task(worker())


def _outcome(request: ChatRequest, asked: _Asked, transcript: str | None = None) -> RowOutcome:
    result = asked.result
    if result is None:
        error = asked.error
        assert error is not None
        return RowOutcome.failed(
            request.row,
            key=request.key,
            model=request.model,
            error_type=error.error_type,
            error=error.message,
            attempts=asked.attempts,
            transcript=transcript,
        )
    outcome = RowOutcome.answered(request, result, asked.attempts, transcript=transcript)
    if asked.answers > 1:  # re-asks and turns were paid for too: the row's tokens count them all
        outcome = replace(outcome, prompt_tokens=asked.prompt_tokens, completion_tokens=asked.completion_tokens,
                          total_tokens=_sum(asked.prompt_tokens, asked.completion_tokens),
                          answers=asked.answers)  # fmt: skip
    if asked.invalid is not None:  # the raw answer is kept, so the user can see what went wrong
        error_type, why = asked.invalid
        outcome = replace(outcome, status=ERROR, error_type=error_type, error=why)
    return outcome


def _sum(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)
