"""One unit of work: a request asked until it has its final answer, or a scripted conversation
asked turn by turn. The live engine's workers run units; ``batchchat chat`` asks its turns with
the same machinery.

An attempt goes through the throttle; a failed one is retried by the retry policy. An answer
that fails the job's checks (not the JSON or labels asked for) is asked again, up to
``invalid_retries`` times. A scripted conversation (a request with ``turns``) sends its turns in
order, each with the whole history, as one unit.

Every answer costs money, so a unit keeps what it paid for before it ends (``Memory.keep``: each
answered turn, each invalid answer with re-asks to go), and starts from what earlier runs paid
for (``Memory.recall``, ``Memory.prior``): a unit cut short is taken up where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol

from ..core.errors import RATE_LIMITED, FatalAPIError, RequestError
from ..core.keys import request_key
from ..core.records import ERROR, OK, PENDING, ChatRequest, ChatResult, RowOutcome, Usage
from ..job.money import Budget, estimate
from ..pacing.retry import is_fatal, with_retries
from ..store.stats import Counters

UNREACHABLE_ATTEMPTS = 3  # attempts that cannot connect, with no answer ever, before the run stops
Send = Callable[[ChatRequest], Awaitable[ChatResult]]
Check = Callable[[str | None], tuple[str, str] | None]  # an answer -> None if valid, else (error_type, why)
Messages = tuple[dict[str, Any], ...]
TurnKey = Callable[[ChatRequest, Messages], str]


class Stopped(Exception):
    """The run is stopping: the request is left unfinished, to be sent by a later run."""


class OverBudget(Stopped):
    """The next request would pass the cost cap: it is not sent, and its row stays pending."""


class Limiter(Protocol):
    """The limits an attempt goes through: this run's ``Throttle``, or a share of a cluster's."""

    @property
    def rate(self) -> float | None: ...

    @property
    def held_s(self) -> float: ...

    @property
    def crowded(self) -> str | None:
        """Why fewer requests go at once than asked, if they do."""
        ...

    @property
    def paced(self) -> str | None:
        """Each cut of the rate, when and why, if there were."""
        ...

    @property
    def last_cut(self) -> str | None:
        """The latest cut of the rate, when and why."""
        ...

    async def acquire(self, request: ChatRequest) -> Any:
        """A permit to depart now, holding a place in flight until ``release``."""
        ...

    def release(self) -> None: ...

    def succeeded(self, permit: Any, result: ChatResult) -> None: ...

    def failed(self, permit: Any, error: RequestError) -> None: ...


class Memory(Protocol):
    """What a unit keeps before it ends, and finds of what earlier runs paid for (the store)."""

    def keep(self, outcome: RowOutcome) -> None:
        """An answer paid for before the unit ends: a conversation's turn, or an invalid answer
        with re-asks to go (status ``pending``)."""
        ...

    def recall(self, key: str) -> RowOutcome | None:
        """What is stored under ``key``."""
        ...

    def prior(self, key: str) -> RowOutcome | None:
        """A stored answer the job's checks reject, with re-asks to go: they start from it."""
        ...


def plain_turn_key(request: ChatRequest, messages: Messages) -> str:
    return request_key(request.model, messages, request.params)


@dataclass
class Asked:
    """One request's end after every retry and re-ask: the final answer or error, and what it all
    took. Its tokens are summed over every answer received, since each was paid for."""

    result: ChatResult | None = None
    error: RequestError | None = None
    invalid: tuple[str, str] | None = None  # (error_type, why) when the final answer was invalid
    attempts: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    answers: int = 0
    limited: int = 0  # attempts answered 429

    @classmethod
    def before(cls, stored: RowOutcome) -> Asked:
        """Answers a run before this one paid for, taken up again (a resumed turn, or an answer
        the checks reject, to be asked again); its tokens already count every one of them."""
        usage = Usage(stored.prompt_tokens, stored.completion_tokens, stored.total_tokens)
        result = ChatResult(stored.response, stored.finish_reason, usage, stored.request_id, stored.model,
                            stored.latency_s or 0.0, stored.ttft_s, answer=stored.answer)  # fmt: skip
        asked = cls(result=result)
        asked.count(stored.answers or 1, usage.prompt_tokens, usage.completion_tokens)
        return asked

    def add(self, result: ChatResult) -> None:
        self.count(1, result.usage.prompt_tokens, result.usage.completion_tokens)

    def count(self, answers: int, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        """Add answers paid for. A sum with an unknown part (an answer whose server did not
        say, or said what is not a count) is unknown: not the sum of the parts that are known."""
        first = self.answers == 0
        self.answers += answers
        self.prompt_tokens = prompt_tokens if first else _plus(self.prompt_tokens, prompt_tokens)
        self.completion_tokens = completion_tokens if first else _plus(self.completion_tokens, completion_tokens)

    def outcome(self, request: ChatRequest, transcript: str | None = None) -> RowOutcome:
        """The row's outcome: the final answer (an invalid one kept as an error row, so its text
        can be seen), or the error that ended the request."""
        result = self.result
        if result is None:
            error = self.error
            assert error is not None
            failed = RowOutcome.failed(request.row, key=request.key, model=request.model, error_type=error.error_type,
                                       error=error.message, attempts=self.attempts, transcript=transcript)  # fmt: skip
            return replace(failed, rate_limited=self.limited) if self.limited else failed
        outcome = RowOutcome.answered(request, result, self.attempts, transcript=transcript)
        if self.limited:
            outcome = replace(outcome, rate_limited=self.limited)
        if self.answers > 1:  # re-asks and turns were paid for too: the row's tokens count them all
            outcome = replace(outcome, prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                              total_tokens=_sum(self.prompt_tokens, self.completion_tokens),
                              answers=self.answers)  # fmt: skip
        if self.invalid is not None:
            error_type, why = self.invalid
            outcome = replace(outcome, status=ERROR, error_type=error_type, error=why)
        return outcome


@dataclass
class Dialogue:
    """A conversation so far: each user turn is sent with every message before it."""

    messages: list[dict[str, Any]] = field(default_factory=list)

    def asking(self, text: str) -> Messages:
        """The messages that ask ``text`` next; the dialogue itself is unchanged until ``answered``."""
        return (*self.messages, {"role": "user", "content": text})

    def answered(self, text: str, answer: str | None) -> None:
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": answer or ""}]


class Resting:
    """How many units wait out a retry's backoff now: each holds no slot, and the pool of workers
    (``executors.pool.drain``) lends a worker for each meanwhile."""

    def __init__(self) -> None:
        self.count = 0
        self.lend: Callable[[], None] = lambda: None  # set by ``drain`` while it runs

    def begins(self) -> None:
        self.count += 1
        self.lend()

    def ends(self) -> None:
        self.count -= 1


class Asker:
    """Asks the requests of one run (or one chat) of an endpoint. Every unit shares its state:
    the throttle, the counters, the budget, the stop, and whether the endpoint ever answered.

    A failed request is an outcome, not an exception. An error that would fail every request
    (bad key, no credit, an endpoint that cannot be reached and never answered) raises
    ``FatalAPIError``: sending more would only fail the same way. Once ``stop`` is set, no
    attempt starts (a unit raises ``Stopped``), and a retry's wait is cut short. With a
    ``budget``, every ask (a request, a turn, a re-ask) is sent only if its estimate fits; the
    first that does not raises ``OverBudget``.
    """

    def __init__(
        self,
        send: Send,
        *,
        max_attempts: int,
        throttle: Limiter | None = None,
        counters: Counters | None = None,
        check: Check | None = None,
        invalid_retries: int = 0,
        budget: Budget | None = None,
        stop: asyncio.Event | None = None,
        memory: Memory | None = None,
        turn_key: TurnKey = plain_turn_key,
        on_retry: Callable[[RequestError], None] | None = None,
        count_requests: bool = True,
        stop_unreachable: bool = True,
        stop_fatal: bool = True,
        resting: Resting | None = None,
    ) -> None:
        self.send = send
        self.resting = resting
        self.max_attempts = max_attempts
        self.throttle = throttle
        self.counters = counters or Counters()
        self.check = check
        self.invalid_retries = invalid_retries
        self.budget = budget
        self.stop = stop or asyncio.Event()
        self.memory = memory
        self.turn_key = turn_key
        self.on_retry = on_retry
        self.count_requests = count_requests  # an engine that sends otherwise counts them itself
        # A run stops when the endpoint cannot be reached and never answered (every row would
        # fail); a chat turn takes its attempts and says why it failed.
        self.stop_unreachable = stop_unreachable
        self.stop_fatal = stop_fatal  # an error that would fail every request stops the run
        self.reached = False  # whether the endpoint ever answered, anything at all
        self.unreachable = 0  # attempts that could not connect, while it never had

    async def unit(self, request: ChatRequest) -> RowOutcome:
        """The outcome of one request, or of one scripted conversation, from start to end."""
        if request.turns:
            return await self.converse(request)
        before = self.memory.prior(request.key) if self.memory is not None else None
        return (await self.ask(request, checked=True, before=before)).outcome(request)

    async def ask(self, request: ChatRequest, checked: bool, before: RowOutcome | None = None) -> Asked:
        """Send one request; re-ask while the answer is invalid and re-asks are left.

        ``before`` is an answer paid for earlier that failed the checks (an earlier run's, or one
        the job's changed checks reject): it counts among the answers, and only the re-asks left
        are sent. Each invalid answer with re-asks to go is kept as unfinished, so a crash or the
        cost cap resumes from it rather than paying for it again.
        """
        check = self.check if checked else None
        asked = Asked()
        if before is not None:
            asked = Asked.before(before)
            asked.attempts = before.attempts
            asked.invalid = check(before.response) if check is not None else None
        allowed = 1 + (self.invalid_retries if check is not None else 0)
        while asked.answers < allowed and (asked.answers == 0 or asked.invalid is not None):
            held = await self.budget.admit(request) if self.budget is not None else 0.0
            if held is None:
                raise OverBudget  # the row stays pending; an invalid answer paid for is kept
            # Each answer is asked under its own id: the request's key, then key.2, key.3 for the
            # re-asks, so an engine that answers by id (a provider batch) tells them apart.
            sent = request if asked.answers == 0 else replace(request, key=f"{request.key}.{asked.answers + 1}")
            limited = 0

            def retrying(error: RequestError) -> None:
                nonlocal limited
                limited += error.error_type == RATE_LIMITED
                self._retrying(error)

            try:
                done = await with_retries(partial(self._attempt, sent), self.max_attempts, sleep=self._backoff,
                                          on_retry=retrying)  # fmt: skip
            finally:
                if self.budget is not None:
                    self.budget.release(held)
            asked.attempts += done.attempts
            asked.limited += limited + (done.error is not None and done.error.error_type == RATE_LIMITED)
            unreachable = done.error is not None and done.error.unreachable and not self.reached
            if unreachable and self.stop_unreachable and done.error is not None:  # its last attempt too
                raise FatalAPIError(done.error.message, done.error)
            if done.result is None:
                if asked.result is None:  # nothing answered: the row ends with this error
                    asked.error = done.error
                return asked  # a re-ask that failed leaves the invalid answer standing
            asked.result = done.result
            asked.add(done.result)
            if done.result.problem is not None:  # paid, and unreadable: the row's error, never asked again
                asked.invalid = None
                return asked
            asked.invalid = check(done.result.content) if check is not None else None
            if asked.invalid is None:
                return asked
            self.counters.invalid += 1
            if asked.answers < allowed and self.memory is not None:
                self.memory.keep(replace(asked.outcome(request), status=PENDING))
        return asked

    async def converse(self, request: ChatRequest) -> RowOutcome:
        """Each user turn in order, each sent with the whole conversation so far. A turn answered
        by an earlier run (and still good) is not sent again."""
        dialogue = Dialogue(list(request.messages))
        total = Asked()
        latency = 0.0
        ttft = None
        asking: Messages = ()
        for n, turn in enumerate(request.turns, 1):
            asking = dialogue.asking(turn)
            last = n == len(request.turns)
            # A turn judged by the checks is not the same request as that turn unjudged (another
            # row's opening turn): kept apart, neither's answer stands in for the other's.
            key = self.turn_key(request, asking) + (".checked" if last and self.check is not None else "")
            step = replace(request, messages=asking, key=key, turns=())
            stored = self._recalled(step)
            recalled = stored is not None and stored.status == OK and not (last and self._invalid(stored.response))
            if stored is not None and recalled:  # answered before, and still good: not sent again
                asked = Asked.before(stored)
                asked.attempts = stored.attempts  # the row's attempts count every turn's, as its tokens do
            else:  # the last turn's answer that the checks reject is asked again
                asked = await self.ask(step, checked=last, before=stored)
            if (self.memory is not None and not recalled and asked.result is not None and asked.invalid is None
                    and asked.result.problem is None):  # fmt: skip
                self.memory.keep(RowOutcome.answered(step, asked.result, asked.attempts))
            total.attempts += asked.attempts
            total.limited += asked.limited
            total.count(asked.answers, asked.prompt_tokens, asked.completion_tokens)
            if asked.result is not None:
                latency += asked.result.latency_s
                ttft = ttft if ttft is not None else asked.result.ttft_s
            total.result, total.error, total.invalid = asked.result, asked.error, asked.invalid
            if asked.result is None or asked.invalid is not None or asked.result.problem is not None:
                break
            dialogue.answered(turn, asked.result.content)
        else:
            asking = tuple(dialogue.messages)
        transcript = list(asking)
        if total.result is not None and total.invalid is not None:
            transcript.append({"role": "assistant", "content": total.result.content or ""})
        outcome = total.outcome(request, transcript=json.dumps(transcript, ensure_ascii=False))
        if total.result is not None:
            outcome = replace(outcome, latency_s=latency, ttft_s=ttft)
        if total.error is not None and len(request.turns) > 1:
            outcome = replace(outcome, error=f"turn {n} of {len(request.turns)}: {outcome.error}")
        return outcome

    def _invalid(self, answer: str | None) -> bool:
        return self.check is not None and self.check(answer) is not None

    def _recalled(self, step: ChatRequest) -> RowOutcome | None:
        """A turn answered by an earlier run (or its last answer, still to be re-asked)."""
        stored = self.memory.recall(step.key) if self.memory is not None else None
        return stored if stored is not None and stored.status in (OK, PENDING) else None

    async def _attempt(self, request: ChatRequest) -> ChatResult:
        if self.stop.is_set():
            raise Stopped
        throttle = self.throttle
        permit = await throttle.acquire(request) if throttle is not None else None
        count = self.counters
        try:
            if self.stop.is_set():  # the stop came while this request waited for the limits
                raise Stopped
            count.requests += self.count_requests
            try:
                result = await self.send(request)
            except RequestError as error:
                self.reached = self.reached or error.status is not None
                count.rate_limited += error.error_type == RATE_LIMITED
                if error.busy:
                    count.busy += 1
                    count.busy_statuses.add(error.overload)
                if throttle is not None and permit is not None:
                    throttle.failed(permit, error)
                    count.crowded = throttle.crowded
                    count.rate = throttle.rate
                    count.paced, count.last_cut = throttle.paced, throttle.last_cut
                    count.waiting_until = time.time() + throttle.held_s
                if self.stop_fatal and is_fatal(error):
                    raise FatalAPIError(error.message, error) from None
                self._give_up_unreachable(error)
                raise
            self.reached = True
            if throttle is not None and permit is not None:
                throttle.succeeded(permit, result)
                if count.rate != throttle.rate:  # raised, or a cut undone
                    count.rate = throttle.rate
                    count.paced, count.last_cut = throttle.paced, throttle.last_cut
                count.crowded = throttle.crowded  # a slot may have opened again
                if result.rate is not None:  # a limit that says it is used up holds everyone
                    count.waiting_until = time.time() + throttle.held_s
            count.add_usage(request.model, result.usage)  # paid for: the budget reads it from here
            if result.notes:
                count.notes.update(result.notes)
            usage = result.usage
            if usage.prompt_tokens is None or usage.completion_tokens is None:  # a server that does not say
                count.add_unreported(request.model, usage, estimate(request))
            return result
        finally:
            if throttle is not None:
                throttle.release()

    def _give_up_unreachable(self, error: RequestError) -> None:
        """An endpoint that has never answered and cannot be connected to would fail every row:
        stop, as for a bad key, rather than turn rows into errors (they stay pending)."""
        if self.reached or not error.unreachable or not self.stop_unreachable:
            return
        self.unreachable += 1
        if self.unreachable >= UNREACHABLE_ATTEMPTS or not error.retryable:
            raise FatalAPIError(error.message, error) from None

    def _retrying(self, error: RequestError) -> None:
        self.counters.retries += 1
        if self.on_retry is not None:
            self.on_retry(error)

    async def _backoff(self, seconds: float) -> None:
        """A retry's wait, cut short when the run stops (the attempt after it then does not happen).
        It holds no slot: ``resting`` hears of it, so the pool can lend a worker meanwhile."""
        resting = self.resting
        if resting is not None:
            resting.begins()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), seconds)
        finally:
            if resting is not None:
                resting.ends()


def _sum(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


def _plus(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b
