"""Money: what requests are estimated to cost before they are sent, what models cost, and the cap
on a run's spending.

A prompt's estimate is an upper bound for the tokenizers chat models use: a byte-level BPE
(Llama 3, GPT, Mistral's Tekken) or a SentencePiece with byte fallback (Llama 2, Mistral) never
makes more tokens of a text than it has UTF-8 bytes, give or take one word marker; the chat
template adds a few tokens per message (role headers, end markers) and some per request (begin
of text, the assistant's header, default system text such as Llama 3.1's date lines or Qwen's
introduction). Request fields that servers render into the prompt (tools, a JSON schema) count
by their bytes too. An answer's estimate is ``max_tokens``, or a default that is no bound when
it is unset (a cost cap therefore needs ``max_tokens``).

Typical text uses far fewer tokens than bytes (about four bytes a token in English), so the
bound is loose; ``likely`` gives the usual characters / 4, for pacing a tokens/min limit and for
a dry run to show beside the bound.

Prices are the job's own first, then a maintained catalogue, ``genai-prices`` (Pydantic's, kept
up to date with the providers' price pages), used offline from the snapshot in its package:
batchchat never lets it fetch updates, so a run's estimate does not change under it. It is
consulted only for the providers it knows (Together, OpenAI) and only for models the job does
not price itself, so a local server's model that happens to share a name with a hosted one is
never given the hosted price.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..core.records import ChatRequest, Usage
from ..providers import provider_at
from .spec import Price, Prices

DEFAULT_COMPLETION_TOKENS = 256  # an answer's estimate when max_tokens is unset
PER_REQUEST_TOKENS = 64  # the chat template's own: begin of text, the answer's header, default system text
PER_MESSAGE_TOKENS = 8  # a message's role header and end marker, and a word marker for its first word
IMAGE_TOKENS = 2048  # an image part: providers charge by its size, which is not known here
# Request fields a server may render into the prompt, counted by the bytes of their JSON.
PROMPT_PARAMS = ("tools", "functions", "tool_choice", "response_format")


def _bytes(message: Mapping[str, Any]) -> int:
    """The UTF-8 bytes of what a message puts in the prompt (its text, tool calls, name)."""
    total = 0
    for field, value in message.items():
        if field == "role":
            continue
        if isinstance(value, str):
            total += len(value.encode("utf-8"))
        elif field == "content" and isinstance(value, list):
            for part in value:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    total += len(part["text"].encode("utf-8"))
                else:
                    total += IMAGE_TOKENS
        elif value is not None:
            total += len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    return total


def _chars(message: Mapping[str, Any]) -> int:
    content = message.get("content")
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(str(part.get("text", ""))) for part in content if isinstance(part, Mapping))
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


def prompt_bound(request: ChatRequest) -> int:
    """At most this many prompt tokens for the request as it stands (without scripted turns)."""
    params = dict(request.params)
    extra = sum(len(json.dumps(params[name], ensure_ascii=False).encode("utf-8")) for name in PROMPT_PARAMS
                if name in params)  # fmt: skip
    messages = request.messages
    return PER_REQUEST_TOKENS + extra + sum(_bytes(m) + PER_MESSAGE_TOKENS for m in messages)


def estimate(request: ChatRequest, default_completion: int = DEFAULT_COMPLETION_TOKENS) -> Estimate:
    """Upper bounds for one request. For a scripted conversation, every turn resends the history,
    earlier answers included, whose text is not known yet: each counts twice ``max_tokens``
    (the cap is kept turn by turn, on each turn's real text)."""
    answer = completion_budget(request, default_completion)
    prompt = prompt_bound(request)
    if not request.turns:
        return Estimate(prompt, answer)
    total = 0
    for n, turn in enumerate(request.turns):
        prompt += len(turn.encode("utf-8")) + PER_MESSAGE_TOKENS
        total += prompt + n * (2 * answer + PER_MESSAGE_TOKENS)
    return Estimate(total, answer * len(request.turns))


def likely(request: ChatRequest, default_completion: int = DEFAULT_COMPLETION_TOKENS) -> Estimate:
    """What a request most likely takes for typical text, prompt characters / 4 (no bound): how
    providers count tokens against a tokens/min limit before answering, and what a dry run shows
    beside the bound."""
    answer = completion_budget(request, default_completion)
    chars = sum(_chars(m) for m in request.messages)
    if not request.turns:
        return Estimate(math.ceil(chars / 4), answer)
    prompt = 0
    for n, turn in enumerate(request.turns):
        chars += len(turn)
        prompt += math.ceil(chars / 4) + n * answer
    return Estimate(prompt, answer * len(request.turns))


def spending(prices: Prices, usage: Mapping[str, Sequence[int]]) -> float | None:
    """US dollars for tokens by model (``[prompt, completion]``); None when a model has no price."""
    if any(model not in prices for model in usage):
        return None
    return sum(prices[model].cost(prompt, completion) for model, (prompt, completion) in usage.items())


class Paid(Protocol):
    """Tokens of every answer received, by model (``[prompt, completion]``), and upper bounds of
    those the server did not report: what a run has paid for (the run's counters)."""

    @property
    def usage(self) -> Mapping[str, Sequence[int]]: ...

    @property
    def unreported_bound(self) -> Mapping[str, Sequence[int]]: ...


def paid(prices: Prices, counters: Paid) -> float:
    """What the answers received cost; where a server did not report usage, at most this."""
    spent = spending(prices, counters.usage) or 0.0
    if counters.unreported_bound:
        spent += spending(prices, counters.unreported_bound) or 0.0
    return spent


class Budget:
    """A run's spending cap. A request (a row's, a conversation's turn, or one re-ask of an
    invalid answer) is dispatched only if what was spent, plus the estimates held for what is in
    flight, plus its own estimate stays within the cap. Estimates are upper bounds, so the cap is
    never passed. A request that does not fit waits while others are in flight (their answers
    cost less than their bounds, and leave room as they arrive); one that does not fit with
    nothing in flight stops dispatching, and the run ends with the rest pending.

    What was spent is read from the run's counters of every answer received, the same figures the
    summary reports, so the two cannot disagree; a provider batch run's, from what it submitted
    (``settle``).
    """

    @classmethod
    def of(cls, cap: float | None, prices: Prices, counters: Paid | None) -> Budget | None:
        """A run's budget: None without a cap (every engine builds it this way)."""
        return cls(cap, prices, counters) if cap is not None else None

    def __init__(self, cap: float, prices: Prices, counters: Paid | None) -> None:
        """``counters`` None: what was spent is what ``settle`` is told (provider batches, whose
        answers collected from earlier runs' batches are not this run's to count)."""
        self.cap = cap
        self.prices = prices
        self.counters = counters
        self.settled = 0.0
        self.in_flight = 0.0
        self.held = 0  # reservations held
        self.exhausted = False
        self.refused: float | None = None  # the bound of the request that found the budget spent
        self._released: asyncio.Event | None = None  # made in the running loop, on the first wait

    @property
    def spent(self) -> float:
        return paid(self.prices, self.counters) if self.counters is not None else self.settled

    def settle(self, held: float, model: str, usage: Usage | None) -> None:
        """A request this run submitted is answered (``usage``; None for no answer): its bound
        is released and what it cost is spent (its bound, where the usage is not known)."""
        self.release(held)
        if usage is not None:
            self.spend(model, usage, held)

    def spend(self, model: str, usage: Usage, bound: float) -> None:
        """An answer to a request this run submitted, billed (``bound`` where its usage is not known)."""
        price = self.prices.get(model)
        if price is None:
            return
        known = usage.prompt_tokens is not None and usage.completion_tokens is not None
        self.settled += price.cost(usage.prompt_tokens or 0, usage.completion_tokens or 0) if known else bound

    def _fits(self, cost: float) -> bool:
        """Within the cap, give or take float rounding (0.1 + 0.05 is a hair over 0.15)."""
        return self.spent + self.in_flight + cost <= self.cap * (1 + 1e-9) + 1e-12

    def _bound(self, request: ChatRequest) -> float:
        price = self.prices.get(request.model)
        tokens = estimate(request)
        return price.cost(tokens.prompt_tokens, tokens.completion_tokens) if price else 0.0

    def _hold(self, cost: float) -> float:
        self.in_flight += cost
        self.held += 1
        return cost

    def reserve(self, request: ChatRequest) -> float | None:
        """The estimate held for ``request`` until ``release``, without waiting; None if it does
        not fit beside what is spent and held. With nothing held, no room will come: the budget
        is then exhausted. (A provider batch holds its requests' estimates until it is collected,
        and submits the rest in a later round.)"""
        cost = self._bound(request)
        if not self.exhausted and self._fits(cost):
            return self._hold(cost)
        if not self.held:
            self.exhausted = True
            self.refused = cost if self.refused is None else self.refused
        return None

    async def admit(self, request: ChatRequest) -> float | None:
        """``reserve``, waiting while requests in flight may leave room for this one."""
        while (held := self.reserve(request)) is None and not self.exhausted:
            if self._released is None:
                self._released = asyncio.Event()
            self._released.clear()
            await self._released.wait()
        return held

    @property
    def stop(self) -> tuple[float, float] | None:
        """When spent: what it counts as spent, and the bound of the request it refused."""
        return (self.spent, self.refused) if self.exhausted and self.refused is not None else None

    def release(self, held: float) -> None:
        self.in_flight -= held
        self.held -= 1
        if not self.held:
            self.in_flight = 0.0  # no float dust left when nothing is held
        if self._released is not None:
            self._released.set()


def catalogue_provider(base_url: str | None) -> str | None:
    """The catalogue's name for the provider at ``base_url``, if it knows it."""
    known = provider_at(base_url)
    return known.catalogue if known is not None else None


def catalogue_prices(models: Iterable[str], provider: str) -> dict[str, Price]:
    """The catalogue's price of each model it knows at ``provider``, in US dollars per million tokens."""
    from genai_prices import Usage, calc_price  # loaded only when a price is looked up

    # Priced on a thousand tokens each way, then scaled: a million in one request would be priced
    # at the long-prompt tier where a model has one (Anthropic's past 200,000 input tokens).
    thousand = Usage(input_tokens=1000, output_tokens=1000)
    found = {}
    for model in models:
        try:
            price = calc_price(thousand, model, provider_id=provider)
        except LookupError:
            continue
        found[model] = Price(float(price.input_price * 1000), float(price.output_price * 1000), source="catalogue")
    return found


def prices_for(models: Iterable[str], own: dict[str, Price], base_url: str | None) -> dict[str, Price]:
    """``own`` prices, completed from the catalogue for the models it lacks."""
    missing = [model for model in models if model not in own]
    provider = catalogue_provider(base_url)
    if not missing or provider is None:
        return dict(own)
    return {**catalogue_prices(missing, provider), **own}


@dataclass(frozen=True)
class GroupEstimate:
    """The requests one model and variant would send, and their estimated tokens and cost."""

    model: str
    variant: str | None
    requests: int
    prompt_tokens: int  # upper bounds
    completion_tokens: int  # max_tokens per answer (or the default estimate)
    cost: float | None  # US dollars; None when the model has no price


@dataclass(frozen=True)
class Estimates:
    """What a set of requests would take: per model and variant, upper bounds and typical text."""

    groups: tuple[GroupEstimate, ...]
    likely_prompt_tokens: int  # characters / 4: what typical text takes
    completion_bounded: bool  # every request sets max_tokens, so completion figures are bounds

    @property
    def prompt_tokens(self) -> int:
        return sum(g.prompt_tokens for g in self.groups)

    @property
    def completion_tokens(self) -> int:
        return sum(g.completion_tokens for g in self.groups)

    @property
    def cost(self) -> float | None:
        """The whole estimate, when every model sending something has a price."""
        costs = [g.cost for g in self.groups if g.requests]
        return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)

    def cost_at(self, prices: Prices) -> float | None:
        """The whole estimate at other prices (a provider batch's), when every model has one."""
        groups = [g for g in self.groups if g.requests]
        if any(g.model not in prices for g in groups):
            return None
        return sum(prices[g.model].cost(g.prompt_tokens, g.completion_tokens) for g in groups)


def estimate_all(requests: Iterable[ChatRequest], group: Callable[[ChatRequest], tuple[str, str | None]],
                 groups: Iterable[tuple[str, str | None]], prices: Prices,
                 sent_max_tokens: int | None = None) -> Estimates:  # fmt: skip
    """Estimates of ``requests``, by the (model, variant) ``group`` gives each; every group of
    ``groups`` is listed, even one with nothing to send. ``sent_max_tokens``: what the wire sends
    for a request that sets none (Anthropic's requires one), a real bound."""
    totals: dict[tuple[str, str | None], list[int]] = {g: [0, 0, 0] for g in groups}
    likely_tokens = 0
    bounded = True
    for request in requests:
        tokens = estimate(request, sent_max_tokens or DEFAULT_COMPLETION_TOKENS)
        likely_tokens += likely(request).prompt_tokens
        bounded = bounded and (sent_max_tokens is not None or "max_tokens" in dict(request.params))
        total = totals.setdefault(group(request), [0, 0, 0])
        total[0] += 1
        total[1] += tokens.prompt_tokens
        total[2] += tokens.completion_tokens
    estimates = []
    for (model, variant), (count, prompt, completion) in totals.items():
        price = prices.get(model)
        cost = price.cost(prompt, completion) if price is not None else None
        estimates.append(GroupEstimate(model, variant, count, prompt, completion, cost))
    return Estimates(tuple(estimates), likely_tokens, bounded)
