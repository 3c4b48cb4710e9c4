"""The provider Batch API engine: a job's requests sent as provider-side batches, at about half
the live price, with results within a day.

A run goes in rounds. It collects the batches that have finished, lets every unfinished request
take its answers from them, submits what is left to ask (first asks, re-asks of answers that
failed the checks, a conversation's next turn) as new batches, and waits for those; until every
request has its outcome, or it detaches, or it is stopped.

The answers are taken by the same unit of work as the live engine's (``unit.Asker``: checks,
re-asks, scripted turns, the journal of each paid answer), only its ``send`` is different: it
finds a request's answer among the collected results, by the id the request was submitted
under, or else puts the request in the next batch and defers it (``Deferred``). So an answer
fits a row by the same rules whatever engine got it.

Never paying twice rests on the journal's steps. Each file uploaded is recorded (with the ids it
holds) before its batch is created, each batch before anything else, and each batch's being
collected after its answers are kept. A run takes up the steps it finds: it waits for the
batches, creates the batch of a file that has none (adopting one the provider already made over
that file, for a run killed between the create and its record), and collects again a batch whose
answers were not all kept. A request waiting in a batch is never submitted again.

What each provider's Batch API looks like is its ``BatchWire``'s: this engine sees files, batches
and result lines in neutral words. Where a batch says which file it holds, one found for a file
is surely that file's, and an extra one is cancelled. Where it does not (Anthropic's), a batch
found for a file is taken on its time and size (``presumed``), proved by its results once it
ends (their ids carry the file's mark; one whose lines carry another's is ``foreign``: set aside
unread), and never cancelled on a guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, cast

from ..client.batches import MAKE_TIMEOUT_S, BatchClient
from ..core import errors as E
from ..core.records import ChatRequest, ChatResult, RowOutcome, Usage
from ..core.words import plural
from ..job.endpoint import Endpoint, is_loopback
from ..job.money import Budget
from ..job.spec import NO_PRICES, Answers, Job, Prices, RetryPolicy, SimConfig
from ..pacing.retry import once, with_retries
from ..providers import BATCH_WIRES
from ..providers.base import BatchInfo
from .base import BatchProgress, Ending, Ledger, Work
from .batchfiles import Chunk, Limits, Steps, dialect_of, request_key_of, split
from .connect import open_client
from .live import LiveExecutor
from .results import Result, rank, read_line, unanswered
from .signals import graceful_stop
from .unit import Asker, Stopped

# After a create that failed in a way that may have acted, its batch is looked for this long before
# another is made (a provider's list may lag behind its creates).
LOOK_S = 10.0
MISSES = 3  # looks in a row finding a recorded batch gone before it is taken as gone for good
# A file with more than one create is looked at this long after its last one, its own batch
# collected or not: a create may act late, and the batch it makes is billed.
WATCH_S = 2 * MAKE_TIMEOUT_S


class Deferred(Stopped):
    """The request's answer is not here yet: it waits in a batch, or goes in the next one."""


@dataclass(frozen=True)
class BatchExecutor:
    """The parts of a job the batch engine needs."""

    endpoint: Endpoint
    dialect: str = "together"
    limits: Limits = field(default_factory=lambda: Limits.of("together"))
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    answers: Answers = field(default_factory=Answers)
    poll_s: float = 30.0
    detach: bool = False
    cancel: bool = False
    max_cost: float | None = None
    prices: Prices = field(default_factory=lambda: NO_PRICES)  # batch prices
    simulator: SimConfig = field(default_factory=SimConfig)
    live_retry: LiveExecutor | None = None  # sends the requests that ended in error before, live
    handle_signals: bool = False

    @classmethod
    def for_job(cls, job: Job, *, handle_signals: bool) -> BatchExecutor:
        settings = job.batch
        dialect = dialect_of(job.endpoint, job.simulator)
        return cls(
            endpoint=job.endpoint,
            dialect=dialect,
            limits=Limits.of(dialect, job.simulator if job.endpoint.provider == "sim" else None),
            retry=job.retry,
            answers=job.answers,
            poll_s=settings.poll_s,
            detach=settings.detach,
            cancel=settings.cancel,
            max_cost=job.max_cost,
            prices=job.paid_prices,
            simulator=job.simulator_config,
            live_retry=LiveExecutor.for_job(job, handle_signals=handle_signals) if settings.live_retry else None,
            handle_signals=handle_signals,
        )

    async def execute(self, work: Work, ledger: Ledger) -> Ending:
        async with open_client(self.endpoint, concurrency=4, retry=self.retry, stream=False,
                               simulator=work.simulator(self.simulator)) as client:  # fmt: skip
            rounds = _Rounds(self, work, ledger, BatchClient(client, BATCH_WIRES[self.dialect]))
            await rounds.confirm_uploads()  # what a killed run uploaded waits in a batch, or is forgotten
            if self.live_retry is not None:  # the errors of earlier runs, live, before the rest
                store = ledger.store
                waiting = {request_key_of(cid) for cid in rounds.steps.waiting()}  # asked already

                def again_live(key: str) -> bool:
                    return store.failed(key) and store.earlier(key) and key not in waiting

                again = Work(_Only(work.requests, again_live), work.turn_key, work.expected)
                ending = await self.live_retry.send(again, ledger, client.complete)
                if ending is not Ending.DONE:
                    return ending
            return await rounds.run()


class _Only:
    """The requests of ``requests`` whose key ``wanted`` picks, pass after pass."""

    def __init__(self, requests: Iterable[ChatRequest], wanted: Callable[[str], bool]) -> None:
        self.requests = requests
        self.wanted = wanted

    def __iter__(self) -> Iterator[ChatRequest]:
        return (request for request in self.requests if self.wanted(request.key))


class _Rounds:
    """One run's rounds of batches, from the steps the journal keeps."""

    def __init__(self, engine: BatchExecutor, work: Work, ledger: Ledger, batches: BatchClient) -> None:
        self.engine = engine
        self.work = work
        self.ledger = ledger
        self.batches = batches
        self.steps = Steps.read(ledger.steps)
        self.results: dict[str, Result] = {}
        self.to_submit: list[ChatRequest] = []
        self.queued: set[str] = set()  # ids in to_submit
        # The cap is on what this run submits: answers collected from earlier runs' batches are not counted
        self.budget = Budget.of(engine.max_cost, engine.prices, None)
        self.held: dict[str, float] = {}  # id -> the budget held for it until its answer comes
        self.waiting: set[str] = set()  # ids in batches whose answers are not yet kept
        self.consumed: set[str] = set()  # ids of collected answers some request took
        self.origin: dict[str, str] = {}  # id -> the batch whose result line stands for it
        self.unread: Counter[str] = Counter()  # batch -> result lines that could not be tied to a request
        self.fresh: set[str] = set()  # files uploaded by this run
        self.created: set[str] = set()  # batches this run's creates answered with
        self.stop = asyncio.Event()
        self.signalled = 0
        answers = engine.answers
        self.asker = Asker(self._send, max_attempts=1, counters=ledger.counters,
                           check=ledger.check if answers.checked else None, invalid_retries=answers.invalid_retries,
                           memory=ledger, turn_key=work.turn_key, count_requests=False,
                           stop_fatal=False)  # a batch's error line is one row's, never every row's  # fmt: skip

    # --- the steps ---

    def _record(self, step: dict[str, Any]) -> None:
        self.ledger.step(step)
        self.steps.take(step)

    def _take(self, file: str, batch: str, proven: bool = False) -> None:
        """``batch`` recorded as ``file``'s. One that a create of this run did not answer with is
        only presumed the file's on a wire whose batches do not say what they hold: it is never
        cancelled (it may be someone else's) until its results prove it (``proven``)."""
        step: dict[str, Any] = {"step": "batch", "batch": batch, "file": file, "at": time.time()}
        if not (proven or self.batches.wire.names_its_file or batch in self.created):
            step["presumed"] = True
        self._record(step)

    def _open_files(self) -> list[str]:
        return self.steps.open_files()

    def _waiting(self) -> set[str]:
        return self.steps.waiting()

    # --- the rounds ---

    async def run(self) -> Ending:
        def on_signal() -> None:  # the batches run on at the provider: stop waiting, submit no more
            self.signalled += 1
            self.stop.set()
            if self.signalled > 1 and task is not None:
                task.cancel()

        task = asyncio.current_task()
        try:
            with graceful_stop(on_signal, handle_signals=self.engine.handle_signals):
                return await self._rounds()
        except asyncio.CancelledError:
            if self.signalled < 2:
                raise
            return Ending.AT_ONCE

    async def _rounds(self) -> Ending:
        if self.engine.cancel:
            await self._cancel_all()
        wait = False  # the first round collects what has finished and submits what is new at once
        while True:
            await self._create_missing()
            finished = await self._follow(wait)
            if finished is None:  # stopped while waiting
                return Ending.STOPPED
            for batch, info in finished:
                await self._download(batch, info)
            self._unanswered(finished)
            await self._replay(self._waiting())
            self._keep_unclaimed()
            for batch, _ in finished:
                self._record({"step": "collected", "batch": batch, "at": time.time()})
            self.results.clear()
            self.origin.clear()
            if self.to_submit and not self.engine.cancel and not self.stop.is_set():
                await self._submit()
            self.to_submit.clear()
            self.queued.clear()
            if self.stop.is_set():
                return Ending.STOPPED
            if not self.steps.running() and not self.steps.watched(time.time(), WATCH_S):
                if self.budget is not None and self.budget.exhausted:
                    self.ledger.counters.cap_stop = self.budget.stop
                    return Ending.BUDGET
                return Ending.DONE
            if self.engine.detach:
                return Ending.DETACHED
            wait = True

    async def _cancel_all(self) -> None:
        """Every batch of this output cancelled (one a killed run's create may have made included);
        files that never got one are forgotten. Cancelled batches are still collected."""
        for file in self._open_files():
            batch = self.steps.batch_of.get(file)
            if batch is None:
                info = await self._find_batch(file)
                if info is None:
                    if self.stop.is_set():  # stopped while looking: it may still come; the next run looks on
                        return
                    self._record({"step": "dropped", "file": file, "why": "cancelled before it had a batch"})
                    continue
                self._take(file, info.id)
                batch = info.id
            elif self.steps.suspect(file):  # an extra batch the provider made of it: found, and cancelled
                await self._call(partial(self._look, file, True))
            if batch in self.steps.presumed:  # perhaps someone else's: collected when it ends, not cancelled
                await self._leave_running(batch)
                continue
            await self._cancel(batch)
        for extra in self.steps.open_extras():
            if self.batches.wire.names_its_file:
                await self._cancel(extra)
            else:
                await self._leave_running(extra)

    async def _leave_running(self, batch: str) -> None:
        """A batch --cancel does not cancel, as perhaps someone else's: counted when it runs still."""
        info = await self._known(batch)
        if info is not None and not info.finished:
            self.ledger.counters.uncancelled += 1

    async def _cancel(self, batch: str) -> None:
        """``batch`` cancelled; one that has finished already (a provider may refuse to cancel it)
        has nothing left to stop."""
        done = await with_retries(partial(self.batches.cancel, batch), self.engine.retry.max_attempts)
        if done.error is None:
            if done.result is not None and done.result.status in ("cancelling", "cancelled"):
                self.ledger.counters.cancelled += 1
            return
        info = await self._known(batch)
        if info is not None and not info.finished:
            raise E.FatalAPIError(done.error.message, done.error)

    async def confirm_uploads(self) -> None:
        """Uploads a run recorded but did not see through (it was killed, or the provider failed
        after keeping the file): the file is taken when the provider has it, else forgotten (its
        requests are asked again in a new file; a file without a batch costs nothing)."""
        for name in list(self.steps.uploads):
            file = await self._call(partial(self.batches.find_file, name))
            if file is not None:
                self._record({"step": "file", "file": file, "name": name, "at": time.time()})
            else:
                self._record({"step": "upload_lost", "name": name})

    async def _create_missing(self) -> None:
        """Every uploaded file gets its batch: one the provider already made over it (a run killed
        during the create, a create that failed after acting), or a new one, made once. Not while
        stopping or cancelling, and not over requests answered since the file was uploaded (a
        live run, or ``--live-retry``, may have answered them): that file is forgotten instead."""
        for file in self._open_files():
            if file in self.steps.batch_of:
                continue
            info = await self._find_batch(file)
            if info is None:
                if self.stop.is_set():
                    return
                answered = self._answered(file)
                if self.engine.cancel or answered:
                    why = f"{plural(answered, 'request')} in it answered since" if answered else "cancelled"
                    self._record({"step": "dropped", "file": file, "why": why})
                    continue
                done = await once(partial(self._create, file), partial(self._find_batch, file, LOOK_S, fresh=True),
                                  self.engine.retry.max_attempts)  # fmt: skip
                if done.error is not None:
                    if not self.stop.is_set():
                        self._refused(file, done.error)
                    continue
                assert done.result is not None
                info = done.result
            self._take(file, info.id)

    async def _create(self, file: str) -> BatchInfo:
        """One create call, recorded before it is made: a run killed during it looks for its batch."""
        if self.stop.is_set():
            raise E.RequestError("stopped", "the run is stopping", retryable=False)
        self._record({"step": "create", "file": file, "at": time.time()})
        info = await self.batches.create(file)
        self.created.add(info.id)
        return info

    def _answered(self, file: str) -> int:
        """Requests in ``file`` whose answer the store holds already."""
        store = self.ledger.store
        keys = {request_key_of(cid) for cid in self.steps.files[file]}
        return sum(1 for key in keys if key in store and not store.failed(key) and not store.unfinished(key))

    async def _find_batch(self, file: str, window: float | None = None, *, fresh: bool = False) -> BatchInfo | None:
        """The batch made over ``file``, looked for at the provider. After a create that may still
        act, it is looked for until ``window`` seconds after that create was sent (one a killed
        run sent: the time a create may take), or after now (``fresh``: one that just failed, and
        may act still, as a provider's list may lag), rather than made again."""
        window = self.batches.make_timeout_s if window is None else window
        info = await self._call(partial(self._look, file))
        since = time.time() if fresh else self.steps.creating.get(file)
        if info is not None or since is None:
            return cast(BatchInfo | None, info)
        deadline = since + window
        while time.time() < deadline and not self.stop.is_set():
            await self._pause(min(max(self.engine.poll_s, 0.25), 2.0, deadline - time.time()))
            info = await self._call(partial(self._look, file))
            if info is not None:
                return cast(BatchInfo, info)
        return None

    async def _look(self, file: str, alive: bool = False) -> BatchInfo | None:
        """The batch the provider made over ``file``, if any: the recorded one, else (none is
        recorded) the first listed. Any other is an extra (creates that all acted), collected
        since what it finishes is billed, and cancelled while the file's own batch is there
        (listed, or ``alive``: the provider answered for it, its list lagging behind)."""
        steps = self.steps
        began, ended = steps.first_create.get(file), steps.creating.get(file)
        acting = self.batches.make_timeout_s  # how long after it was sent a create may still act
        sent = None if began is None or ended is None else (began, ended + acting)
        found = await self.batches.find_all(file, len(steps.files[file]), sent)
        mine = steps.batch_of.get(file)
        others = ({b for f, b in steps.batch_of.items() if f != file} | {b for b, f in steps.extras.items() if f != file}
                  | steps.foreign)  # fmt: skip
        found = [info for info in found if info.id not in others]  # another file's, or known not to be this one's
        first = next((info for info in found if info.id == mine), None) if mine else (found[0] if found else None)
        for info in found:
            if first is not None and info.id == first.id:
                continue
            if info.id not in steps.extras:
                self._record({"step": "extra", "batch": info.id, "file": file, "at": time.time()})
                if self.batches.wire.names_its_file:  # else counted once its results prove it the file's
                    self.ledger.counters.extra_batches += 1
            # Cancelled only when surely this file's: a batch that does not say what it holds may be
            # someone else's; it is collected, and its results tell.
            sure = self.batches.wire.names_its_file
            if sure and (first is not None or alive) and not info.finished and info.status != "cancelling":
                await self._cancel(info.id)
        return first

    def _refused(self, file: str, error: E.RequestError) -> None:
        """A file the provider will not make a batch of: forgotten, so its requests are asked
        again in new files; refused for a file of this run, the run stops and says why."""
        permanent = error.status is not None and 400 <= error.status < 500 and error.status not in (401, 402, 429)
        if not permanent:
            raise E.FatalAPIError(error.message, error)
        self._record({"step": "dropped", "file": file, "why": f"no batch could be made of it: {error.message}"})
        if file in self.fresh:
            raise E.FatalAPIError(f"the provider would not make a batch of the requests ({error.message})", error)

    async def _follow(self, wait: bool) -> list[tuple[str, BatchInfo]] | None:
        """The open batches that have finished; with ``wait``, waiting until one has (while any
        is open). None when stopped while waiting."""
        while True:
            open_batches = [(file, self.steps.batch_of[file]) for file in self._open_files() if file in self.steps.batch_of]
            open_batches += [(self.steps.extras[extra], extra) for extra in self.steps.open_extras()]
            watched = self.steps.watched(time.time(), WATCH_S)
            if not open_batches and not watched:
                return []
            infos = []
            for file, batch in open_batches:
                info = await self._known(batch)
                if info is None:
                    info = await self._missing(file, batch)
                    batch = info.id if info is not None else batch
                elif self.steps.missing[batch]:
                    self._record({"step": "seen", "batch": batch})  # it was gone only for a while
                if info is not None:
                    infos.append((batch, info))
            self._report(infos)
            answered = {self.steps.file_of(batch) for batch, _ in infos if batch not in self.steps.extras}
            for file in watched:  # a create that failed, or was cut, may act late: a second batch?
                own = self.steps.batch_of.get(file)
                if own is not None:
                    await self._call(partial(self._look, file, file in answered or own in self.steps.collected))
            finished = [(batch, info) for batch, info in infos if info.finished]
            if finished or not wait:
                return finished
            await self._pause(self.engine.poll_s)
            if self.stop.is_set():
                return None

    def _report(self, infos: list[tuple[str, BatchInfo]]) -> None:
        requests = done = failed = 0
        infos = [(batch, info) for batch, info in infos if batch not in self.steps.extras]
        for batch, info in infos:
            file = self.steps.file_of(batch)
            count = len(self.steps.files.get(file, ()))
            requests += count
            if info.status == "completed":
                done += count
            elif info.done is not None:
                done += info.done
            elif info.progress is not None:
                done += round(count * info.progress / 100)
            failed += info.failed or 0
        finished = sum(info.finished for _, info in infos)
        self.ledger.batches(BatchProgress(len(infos), finished, requests, done, failed))

    async def _download(self, batch: str, info: BatchInfo) -> None:
        """The result lines of a finished batch, by id. For one id, an answer wins over an error
        line, and a readable answer over one that is not: every line after the first for an id
        is counted as a repeat, and its tokens as paid when it is an answer. A batch taken for
        the file's without proof whose lines carry another file's mark is someone else's:
        ``foreign``, not read, and the file's own batch is looked for again."""
        file = self.steps.file_of(batch)
        model = self.steps.models.get(file, "")
        latency = max(0.0, time.time() - self.steps.uploaded_at.get(file, time.time()))
        wire, chat = self.batches.wire, self.batches.chat
        read = []
        for where in wire.results(info):
            read += [read_line(raw, batch, latency, chat, wire) for raw in await self._call(partial(self._read, where))]
        if not wire.names_its_file:  # the file's mark on its lines' ids tells whose the batch is
            tag = self.steps.tags.get(file)
            marked = any(line.tag for line in read)
            read = [line for line in read if line.tag in (tag, None)]  # another file's lines are not this one's
            presumed = batch in self.steps.presumed or batch in self.steps.extras
            if presumed and marked and not any(line.tag for line in read):
                self._record({"step": "foreign", "batch": batch, "file": file, "at": time.time()})
                return
            if presumed:
                self._proven(file, batch)
        for custom_id, _, result, used in read:
            if used is not None:  # an error line that says what it used: billed
                self.ledger.counters.add_usage(model, used)
                self._spent(custom_id, model, used)
            if custom_id is None:  # an answer all the same, paid: its tokens count
                self.unread[batch] += 1
                if isinstance(result, ChatResult):
                    self.ledger.counters.add_usage(model, result.usage)
                continue
            prior = self.results.get(custom_id)
            if prior is not None:  # a repeat: named after the extra batch, when one of the two is
                before = self.origin.get(custom_id, batch)
                self.ledger.counters.repeated[before if before in self.steps.extras else batch] += 1
                if rank(result) <= rank(prior):
                    self._paid(model, result, custom_id)
                    continue
                self._paid(model, prior, custom_id)
            self.results[custom_id] = result
            self.origin[custom_id] = batch

    def _proven(self, file: str, batch: str) -> None:
        """``batch``'s results proved it ``file``'s. Its own batch if it was presumed so, or if the
        file's own is not proved (that one then stands as an extra, to be proved in turn); an
        extra batch of the file, paid twice, only beside an own one that is proved."""
        own = self.steps.batch_of.get(file)
        if own == batch or own is None or own in self.steps.foreign or own in self.steps.presumed:
            self._take(file, batch, proven=True)
            if own is not None and own != batch and own not in self.steps.foreign:
                self._record({"step": "extra", "batch": own, "file": file, "at": time.time()})
        else:
            self.ledger.counters.extra_batches += 1

    def _paid(self, model: str, result: Result, custom_id: str) -> None:
        """A result line that is not kept: what it answered is billed all the same."""
        if isinstance(result, ChatResult):
            self.ledger.counters.add_usage(model, result.usage)
            self._spent(custom_id, model, result.usage)

    def _spent(self, custom_id: str | None, model: str, usage: Usage) -> None:
        """A line billed beside the answer kept, for a request this run submitted: in its cap."""
        held = self.held.get(custom_id or "")
        if held is not None and self.budget is not None:
            self.budget.spend(model, usage, held)

    def _unanswered(self, finished: list[tuple[str, BatchInfo]]) -> None:
        """A request a finished batch holds and no result line answered (it expired, failed or
        was cancelled first, or its line could not be read) gets an error that says so."""
        for batch, info in finished:
            if batch in self.steps.extras or batch in self.steps.foreign:
                continue
            for custom_id in self.steps.files[self.steps.file_of(batch)]:
                if custom_id not in self.results:
                    self.results[custom_id] = unanswered(batch, info.status, self.unread[batch])
                amount = self.held.pop(custom_id, None)
                if amount is not None and self.budget is not None:
                    result = self.results[custom_id]
                    usage = result.usage if isinstance(result, ChatResult) else None
                    self.budget.settle(amount, self.steps.models.get(self.steps.file_of(batch), ""), usage)

    async def _read(self, where: str) -> list[bytes]:
        return [line async for line in self.batches.lines(where)]

    async def _replay(self, waiting: set[str]) -> None:
        """Every request not finished takes its answers from the results; what is left to ask
        goes in ``to_submit`` (each id once)."""
        self.waiting = waiting
        for request in self.work.requests:
            if self.ledger.finished_now(request.key):
                continue
            try:
                outcome = await self.asker.unit(request)
            except Deferred:
                continue
            self.ledger.finished(outcome)

    def _keep_unclaimed(self) -> None:
        """Collected answers no request of this run took (its input or job changed since they
        were submitted): kept all the same, judged by the checks, so a later run that asks them
        pays nothing. One for a request already answered (by another batch over the same file)
        is a repeat: paid, counted, not kept over the answer."""
        models = {cid: self.steps.models.get(file, "") for file in self.steps.files for cid in self.steps.files[file]}
        store = self.ledger.store
        for custom_id, found in self.results.items():
            if custom_id in self.consumed:
                continue
            key, model = request_key_of(custom_id), models.get(custom_id, "")
            if key in store and not (store.failed(key) or store.unfinished(key) or store.stale(key)):
                if custom_id in self.origin:  # a line, not an error made for a line that never came
                    self.ledger.counters.repeated[self.origin[custom_id]] += 1
                    self._paid(model, found, custom_id)
                continue
            if isinstance(found, E.RequestError):
                self.ledger.keep(RowOutcome.failed(-1, key=key, model=model, error_type=found.error_type,
                                                   error=found.message, attempts=1))  # fmt: skip
                continue
            self.ledger.counters.add_usage(model, found.usage)
            request = ChatRequest(-1, key, model, ())
            outcome = RowOutcome.answered(request, found, 1)
            verdict = self.ledger.check(found.content) if self.engine.answers.checked and found.problem is None else None
            if verdict is not None:
                outcome = replace(outcome, status="error", error_type=verdict[0], error=verdict[1])
            self.ledger.keep(outcome)
        self.consumed.clear()

    async def _send(self, request: ChatRequest) -> ChatResult:
        found = self.results.get(request.key)
        if found is not None:
            self.consumed.add(request.key)
        if isinstance(found, E.RequestError):
            raise found
        if found is not None:
            return found
        if request.key not in self.waiting and request.key not in self.queued:
            self.queued.add(request.key)
            self.to_submit.append(request)
        raise Deferred

    async def _submit(self) -> None:
        """The requests to ask, as files and batches, each step recorded before the next; within
        the cost cap, if there is one."""
        chosen: list[ChatRequest] = []
        for request in self.to_submit:
            if self.budget is not None:
                # Room the batches out now free as they are collected (their estimates are upper
                # bounds): the rest waits for a later round; with none out, the cap is reached.
                held = self.budget.reserve(request)
                if held is None:
                    break
                self.held[request.key] = held
            chosen.append(request)
        for chunk in split(chosen, self.engine.limits, self.batches.wire):
            if self.stop.is_set():
                break
            await self._submit_file(chunk)
            self.ledger.counters.requests += len(chunk.ids)

    async def _submit_file(self, chunk: Chunk) -> None:
        """One file uploaded and its batch made, each call recorded before it is made: a failed
        upload is looked for by its unique name before the file is uploaded again."""
        name = f"batchchat-{uuid.uuid4().hex[:12]}.jsonl"
        self._record({"step": "upload", "name": name, "model": chunk.model, "ids": " ".join(chunk.ids),
                      "tag": chunk.tag, "at": time.time()})  # fmt: skip
        done = await once(partial(self.batches.upload, name, chunk.data), partial(self.batches.find_file, name),
                          self.engine.retry.max_attempts)  # fmt: skip
        if done.error is not None:
            raise E.FatalAPIError(done.error.message, done.error)
        assert done.result is not None
        self.fresh.add(done.result)
        self._record({"step": "file", "file": done.result, "name": name, "at": time.time()})
        await self._create_missing()

    async def _missing(self, file: str, batch: str) -> BatchInfo | None:
        """A batch the provider says it does not have. Listed all the same: it is taken as it is
        listed. Gone from a server on this machine (a simulator started again), or when asked to
        cancel: forgotten, and its requests asked again. Gone from a provider: the run stops,
        since another key or account than the one that made it is the likelier cause, and
        asking again would pay twice. An extra batch gone is forgotten."""
        extra = batch in self.steps.extras
        listed = None if extra else await self._call(partial(self._look, file))
        if listed is not None:
            if listed.id != batch:
                self._take(file, listed.id)
            return cast(BatchInfo, listed)
        self._record({"step": "missing", "batch": batch})  # kept, so that runs apart (--detach) count too
        if self.steps.missing[batch] < MISSES:  # gone now, maybe only for a moment: asked again at the next look
            return None
        if extra:  # an extra gone for good: nothing more to collect of it
            self._record({"step": "collected", "batch": batch, "why": "the provider no longer has it"})
            return None
        others = [b for b, f in self.steps.extras.items() if f == file and b not in self.steps.collected]
        if others:  # its own batch gone, an extra made of the same file answers it instead
            self._take(file, others[0])
            return None
        endpoint = self.engine.endpoint
        local = endpoint.provider == "sim" or (endpoint.base_url is not None and is_loopback(endpoint.base_url))
        if local or self.engine.cancel:
            self._record({"step": "dropped", "file": file, "why": f"the provider has no batch {batch}"})
            return None
        error = E.RequestError(E.NOT_FOUND, f"HTTP 404: no batch {batch}", status=404)
        raise E.FatalAPIError(
            f"the provider has no batch {batch}, which this output's journal recorded: is this the key and account "
            "that made it? If it is gone for good, --cancel forgets it (its requests are then asked again)", error)

    async def _known(self, batch: str) -> BatchInfo | None:
        """The batch as the provider reports it, or None if it says there is no such batch."""
        done = await with_retries(partial(self.batches.get, batch), self.engine.retry.max_attempts)
        if done.error is not None and done.error.error_type == E.NOT_FOUND:
            return None
        if done.error is not None:
            raise E.FatalAPIError(done.error.message, done.error)
        assert done.result is not None
        return done.result

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or until the run is stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), max(seconds, 0.0))

    async def _call(self, call: Any) -> Any:
        """One call to the files or batches endpoints, retried as a chat request is; one that
        fails for good stops the run (its steps so far are kept, and the next run goes on)."""
        done = await with_retries(call, self.engine.retry.max_attempts)
        if done.error is not None:
            raise E.FatalAPIError(done.error.message, done.error)
        return done.result
