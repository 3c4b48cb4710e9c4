"""Money: what requests are estimated to cost before they are sent, and the cap on a run's spending.

Estimates count prompt characters / 4 and, for the answer, ``max_tokens`` (or a default when it is
unset): an upper bound for answers that respect ``max_tokens``, which is what a cap needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .jobparts import Price
from .records import ChatRequest

if TYPE_CHECKING:
    from .stats import Counters

DEFAULT_COMPLETION_TOKENS = 256  # an answer's estimate when max_tokens is unset


def _chars(message: Mapping[str, object]) -> int:
    content = message.get("content")
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
    return 0


def completion_budget(request: ChatRequest, default: int = DEFAULT_COMPLETION_TOKENS) -> int:
    value = dict(request.params).get("max_tokens")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return default


@dataclass(frozen=True, slots=True)
class Estimate:
    """Tokens one request (every turn of a scripted conversation) is expected to take."""

    prompt_tokens: int
    completion_tokens: int


def estimate(request: ChatRequest, default_completion: int = DEFAULT_COMPLETION_TOKENS) -> Estimate:
    """For a scripted conversation, every turn resends the history, answers included."""
    answer = completion_budget(request, default_completion)
    chars = sum(_chars(m) for m in request.messages)
    if not request.turns:
        return Estimate(math.ceil(chars / 4), answer)
    prompt = 0
    for n, turn in enumerate(request.turns):
        chars += len(turn)
        prompt += math.ceil(chars / 4) + n * answer
    return Estimate(prompt, answer * len(request.turns))


def spending(prices: Mapping[str, Price], usage: Mapping[str, Sequence[int]]) -> float | None:
    """US dollars for tokens by model (``[prompt, completion]``); None when a model has no price."""
    if any(model not in prices for model in usage):
        return None
    return sum(prices[model].cost(prompt, completion) for model, (prompt, completion) in usage.items())


class Budget:
    """A run's spending cap. A request (a whole scripted conversation, or one re-ask of an invalid
    answer) is dispatched only if what was spent, plus the estimates held for what is in flight,
    plus its own estimate stays within the cap. The first that does not fit stops dispatching;
    the run then ends with the rest pending.

    What was spent is read from the run's counters of every answer received, the same figures the
    summary reports, so the two cannot disagree.
    """

    def __init__(self, cap: float, prices: Mapping[str, Price], counters: Counters) -> None:
        self.cap = cap
        self.prices = prices
        self.counters = counters
        self.in_flight = 0.0
        self.exhausted = False

    @property
    def spent(self) -> float:
        return spending(self.prices, self.counters.usage) or 0.0  # a capped job prices every model

    def fits(self, request: ChatRequest) -> float | None:
        """``request``'s estimated cost if it fits beside what is spent and held, else None (and
        the budget is exhausted)."""
        price = self.prices.get(request.model)
        tokens = estimate(request)
        cost = price.cost(tokens.prompt_tokens, tokens.completion_tokens) if price else 0.0
        if self.spent + self.in_flight + cost > self.cap:
            self.exhausted = True
            return None
        return cost

    def reserve(self, request: ChatRequest) -> float | None:
        """The estimate held for ``request`` until ``release``, or None if it would not fit."""
        held = self.fits(request)
        if held is not None:
            self.in_flight += held
        return held

    def release(self, held: float) -> None:
        self.in_flight -= held
