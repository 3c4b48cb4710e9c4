"""The seam between planning and assembly: what an executor is given, where it puts what it
finishes, and how it says the run ended.

An executor takes the ``Work`` the plan left to do and turns each request into exactly one
outcome, which goes to the ``Ledger``, which keeps it in the store (the journal) and counts it.
The store is the only place outcomes go, whatever the executor; assembly reads them back from
there, so the output table is the same whichever engine answered the rows.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..answers import AnswerCheck
from ..journal import Store
from ..records import PENDING, ChatRequest, RowOutcome
from ..stats import Counters, Stats

if TYPE_CHECKING:
    from ..progress import Observer


class Ending(enum.Enum):
    """How an executor's part of a run ended (a problem that fails every request raises instead)."""

    DONE = "done"  # every request has its outcome
    BUDGET = "budget"  # the cost cap stopped the dispatching; requests under way finished
    STOPPED = "stopped"  # Ctrl-C or SIGTERM: in-flight requests had their grace period
    AT_ONCE = "at once"  # a second signal: in-flight requests were abandoned


@dataclass(frozen=True)
class Work:
    """What the plan left to do: the requests to send, built lazily from the input (the iterator
    raises ``InputChanged`` if the input is no longer what was planned), and the key of one turn
    of a scripted conversation."""

    requests: Iterable[ChatRequest]
    count: int
    turn_key: Callable[[ChatRequest, tuple[dict[str, Any], ...]], str]


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
        self.store.add(outcome)
        self.stats.add(outcome)
        self.observer.row_done(outcome, self.stats)

    def keep(self, outcome: RowOutcome) -> None:
        self.store.add(outcome)

    def recall(self, key: str) -> RowOutcome | None:
        return self.store.get_many((key,)).get(key)

    def prior(self, key: str) -> RowOutcome | None:
        """A stored answer the checks reject, with re-asks to go: they start from it."""
        store = self.store
        if not (store.stale(key) or store.unfinished(key)):
            return None
        stored = self.recall(key)
        return stored if stored is not None and self.check.rejudge(stored).status == PENDING else None

    def stopping(self, grace_s: float) -> None:
        """The run is stopping: requests in flight have ``grace_s`` seconds to finish."""
        self.observer.stopping(grace_s)


class Executor(Protocol):
    """Turns work into outcomes in the ledger. Raises ``FatalAPIError`` for a problem that would
    fail every request, ``StorageError`` when the store cannot keep an outcome, and
    ``InputChanged`` when the input changed under the run (after the requests under way ended)."""

    async def execute(self, work: Work, ledger: Ledger) -> Ending: ...
