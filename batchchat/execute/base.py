"""The seam between planning and assembly: what an executor is given, where it puts what it
finishes, and how it says the run ended.

An executor takes the ``Work`` the plan left to do and turns each request into exactly one
outcome, which goes to the ``Ledger``, which keeps it in the store (the journal) and counts it.
The store is the only place outcomes go, whatever the executor; assembly reads them back from
there, so the output table is the same whichever engine answered the rows.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from ..core.records import ERROR, OK, PENDING, ChatRequest, RowOutcome
from ..job.spec import SimConfig
from ..plan.answers import AnswerCheck
from ..store.journal import Store
from ..store.stats import BatchTimes, Counters, Stats
from .batchfiles import Steps, request_key_of

if TYPE_CHECKING:
    from ..output.progress import Observer


class Ending(enum.Enum):
    """How an executor's part of a run ended (a problem that fails every request raises instead)."""

    DONE = "done"  # every request has its outcome
    BUDGET = "budget"  # the cost cap stopped the dispatching; requests under way finished
    STOPPED = "stopped"  # Ctrl-C or SIGTERM: in-flight requests had their grace period
    AT_ONCE = "at once"  # a second signal: in-flight requests were abandoned
    DETACHED = "detached"  # work submitted to run elsewhere (provider batches), to be collected later


@dataclass(frozen=True)
class BatchProgress:
    """Provider batches as the provider reports them."""

    batches: int  # this output's batches not yet collected
    finished: int  # of which the provider has finished
    requests: int  # in them
    done: int  # requests the provider has answered or failed so far
    failed: int


@dataclass(frozen=True)
class Elsewhere:
    """Work an engine submitted to run elsewhere (provider batches), as the store's records leave
    it: what may still run there (billed: to be collected, never sent again) and the keys of the
    requests waiting in it. Only the batch engine knows the shape of its records
    (``batchfiles.Steps``); the stages and runs read them through this."""

    running: tuple[str, ...] = ()  # files and batches that may still run at the provider
    waiting: frozenset[str] = frozenset()  # request keys in them

    @classmethod
    def of(cls, store: Store) -> Elsewhere:
        steps = Steps.read(store.steps)
        return cls(tuple(steps.running()), frozenset(request_key_of(cid) for cid in steps.waiting()))

    @staticmethod
    def times(store: Store, since: float) -> BatchTimes:
        """The batches submitted and collected since ``since`` (epoch), and those still waiting."""
        return Elsewhere.times_of(store.steps, since)

    @staticmethod
    def times_of(steps: list[dict[str, Any]], since: float = 0.0) -> BatchTimes:
        """The same, of the steps a journal holds (an output looked at after its run)."""
        return Steps.read(steps).times(since)


@dataclass(frozen=True)
class Work:
    """What the plan left to do: the requests to send (the plan's own when it kept them, else
    built lazily from the input, again on each pass over them; a pass raises ``InputChanged`` if
    the input is no longer what was planned), the key of one turn of a scripted conversation,
    and, for the simulator of an offline evaluation, each request's expected answer by its
    conversation (``plan.Rows.expected``), which an engine tells the simulator it starts."""

    requests: Iterable[ChatRequest]
    turn_key: Callable[[ChatRequest, tuple[dict[str, Any], ...]], str]
    expected: Mapping[str, str] | None = None

    def simulator(self, config: SimConfig) -> SimConfig:
        """``config``, told the expected answers, if there are any."""
        return config if self.expected is None else replace(config, expected=self.expected)


class Ledger:
    """Where an executor puts outcomes: the store, and the run's statistics and observer.

    ``finished`` is a request's final outcome; ``keep`` is an answer paid for before its request
    ends (a conversation's turn, an invalid answer with re-asks to go), stored so that no later
    run pays for it again, but not counted as finished.
    """

    def __init__(self, store: Store, stats: Stats, observer: Observer, check: AnswerCheck) -> None:
        self.store = store
        self.stats = stats
        self.observer = observer
        self.check = check

    @property
    def counters(self) -> Counters:
        """Live counters that executors update as things happen: the usage of every answer
        received (``add_usage``: each is paid for, re-asks and turns included; the summary's
        tokens and cost and the budget read it), requests sent, 429s, retries."""
        return self.stats.counters

    def finished(self, outcome: RowOutcome) -> None:
        """A request's final outcome. An answer that fails the job's checks is not kept as
        ``ok``, whatever engine got it (``unit.Asker`` re-asks before it gets here)."""
        if outcome.status == OK and self.check.answers.checked:
            verdict = self.check(outcome.response)
            if verdict is not None:
                outcome = replace(outcome, status=ERROR, error_type=verdict[0], error=verdict[1])
        self.store.add(outcome)
        self.stats.add(outcome)
        self.observer.row_done(outcome, self.stats)

    def finished_elsewhere(self, outcome: RowOutcome) -> None:
        """A request's final outcome that another process (a Ray worker) kept in its part of the
        store: counted and shown here, not stored again."""
        self.stats.add(outcome)
        self.observer.row_done(outcome, self.stats)

    def keep(self, outcome: RowOutcome) -> None:
        self.store.add(outcome)

    def recall(self, key: str) -> RowOutcome | None:
        return self.store.get_many((key,), answers=True).get(key)

    def prior(self, key: str) -> RowOutcome | None:
        """A stored answer the checks reject, with re-asks to go: they start from it."""
        store = self.store
        if not (store.stale(key) or store.unfinished(key)):
            return None
        stored = self.recall(key)
        return stored if stored is not None and self.check.rejudge(stored).status == PENDING else None

    def finished_now(self, key: str) -> bool:
        """Whether this run has finished ``key``'s request (a request of an earlier run's error,
        sent again, is not finished until its new outcome is in)."""
        store = self.store
        return key in store and not store.earlier(key) and not store.unfinished(key)

    @property
    def steps(self) -> list[dict[str, Any]]:
        """The provider batch steps the store keeps (an engine that submits work to run elsewhere
        records each step before the next, so a crash resumes it)."""
        return self.store.steps

    def step(self, step: dict[str, Any]) -> None:
        self.store.add_step(step)

    def stopping(self, grace_s: float) -> None:
        """The run is stopping: requests in flight have ``grace_s`` seconds to finish."""
        self.observer.stopping(grace_s)

    def batches(self, progress: BatchProgress) -> None:
        """How the provider's batches stand (an observer that shows it has a ``batches`` method)."""
        show = getattr(self.observer, "batches", None)
        if show is not None:
            show(progress)


class Executor(Protocol):
    """Turns work into outcomes in the ledger. Raises ``FatalAPIError`` for a problem that would
    fail every request, ``StorageError`` when the store cannot keep an outcome, and
    ``InputChanged`` when the input changed under the run (after the requests under way ended)."""

    async def execute(self, work: Work, ledger: Ledger) -> Ending: ...
