"""Money: what requests are estimated to cost before they are sent, and the cap on a run's spending.

Estimates count prompt characters / 4 and, for the answer, ``max_tokens`` (or a default when it is
unset): an upper bound for answers that respect ``max_tokens``, which is what a cap needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .jobparts import Price
from .records import ChatRequest, Usage

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


def usage_cost(price: Price | None, usage: Usage) -> float:
    if price is None:
        return 0.0
    return price.cost(usage.prompt_tokens or 0, usage.completion_tokens or 0)


class Budget:
    """A run's spending cap. A request (a whole scripted conversation, or one re-ask of an invalid
    answer) is dispatched only if what was spent, plus the estimates held for what is in flight,
    plus its own estimate stays within the cap. The first that does not fit stops dispatching;
    the run then ends with the rest pending."""

    def __init__(self, cap: float, prices: Mapping[str, Price]) -> None:
        self.cap = cap
        self.prices = prices
        self.spent = 0.0
        self.in_flight = 0.0
        self.exhausted = False

    def reserve(self, request: ChatRequest) -> float | None:
        """The estimate held for ``request`` until ``release``, or None (and the budget is
        exhausted) if it would not fit."""
        price = self.prices.get(request.model)
        tokens = estimate(request)
        held = price.cost(tokens.prompt_tokens, tokens.completion_tokens) if price else 0.0
        if self.spent + self.in_flight + held > self.cap:
            self.exhausted = True
            return None
        self.in_flight += held
        return held

    def charge(self, model: str, usage: Usage) -> None:
        """An answer arrived: it is paid for, whatever happens to its row next."""
        self.spent += usage_cost(self.prices.get(model), usage)

    def release(self, held: float) -> None:
        self.in_flight -= held
