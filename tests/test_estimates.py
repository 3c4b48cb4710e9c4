"""Prompt estimates are upper bounds for real tokenizers, and a cost cap is never passed.

The tokenizers are Mistral's own, shipped inside ``mistral-common``: SentencePiece models with
byte fallback (as Llama 2 and Mistral use) and Tekken, a byte-level BPE (as Llama 3 and GPT use),
each with its real chat template.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from batchchat.core.records import ChatRequest, ChatResult, Usage
from batchchat.job.money import Budget, estimate, prompt_bound
from batchchat.job.spec import Price
from batchchat.pacing.throttle import Throttle
from batchchat.store.stats import Counters
from tests.fake_api import run_requests
from tests.virtual_time import run_virtual

mistral_common = pytest.importorskip("mistral_common", reason="the test extra installs mistral-common")
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage  # noqa: E402
from mistral_common.protocol.instruct.request import ChatCompletionRequest  # noqa: E402
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer  # noqa: E402

DATA = Path(mistral_common.__file__).parent / "data"
TOKENIZERS = ("tokenizer.model.v1", "mistral_instruct_tokenizer_240323.model.v3",
              "mistral_instruct_tokenizer_241114.model.v7", "tekken_240911.json")  # fmt: skip
AWKWARD = {
    "cjk": "日本語のテキスト、漢字とかな。中文文本，繁體字與簡體字。한국어 텍스트입니다.",  # noqa: RUF001
    "emoji": "😀🎉👩‍👩‍👧‍👦🏳️‍🌈 🇯🇵🇫🇷 ✨" * 3,
    "code": "def f(x):\n\treturn {k: v**2 for k, v in x.items() if v % 2}  # ¯\\_(ツ)_/¯\n" * 4,
    "numbers": "3.14159265358979 1234567890 0x6f 1e-9 -42 007 " * 5,
    "math": "𝔘 𝔙 𝔚 ∮ E⋅da = Q,  n → ∞, ∑ f(i) = ∏ g(i)",  # noqa: RUF001
    "combining": "e\u0301" * 30 + "\u0301" * 10,
    "whitespace": " \t \n\n   \r\n" * 10,
    "one letter": "x",
    "expanding": "ﷺ ﷺ ﷺ ㍻㍼ ﬃ",
    "rtl": "مرحبا بالعالم שלום עולם",
}


@pytest.fixture(scope="module", params=TOKENIZERS)
def tokenizer(request: pytest.FixtureRequest) -> Any:
    return MistralTokenizer.from_file(str(DATA / request.param))


def tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """What the model really reads: the messages through its chat template, tokenized."""
    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    request = ChatCompletionRequest(messages=[kinds[m["role"]](content=m["content"]) for m in messages])
    return len(tokenizer.encode_chat_completion(request).tokens)


def request(*messages: dict[str, str], max_tokens: int = 16) -> ChatRequest:
    return ChatRequest(row=0, key="k", model="m", messages=tuple(messages), params=(("max_tokens", max_tokens),))


@pytest.mark.parametrize("kind", sorted(AWKWARD))
def test_the_prompt_estimate_bounds_real_tokenizers_on_awkward_text(tokenizer: Any, kind: str) -> None:
    text = AWKWARD[kind]
    alone = [{"role": "user", "content": text}]
    assert tokens(tokenizer, alone) <= prompt_bound(request(*alone))
    conversation = [{"role": "system", "content": text}, {"role": "user", "content": text},
                    {"role": "assistant", "content": text}, {"role": "user", "content": text[:7] or "?"}]  # fmt: skip
    assert tokens(tokenizer, conversation) <= prompt_bound(request(*conversation))


def test_the_old_estimate_was_no_bound() -> None:
    """characters / 4 undercounts everything above: what a cap cannot rely on."""
    tekken = MistralTokenizer.from_file(str(DATA / "tekken_240911.json"))
    messages = [{"role": "user", "content": AWKWARD["numbers"]}]
    assert tokens(tekken, messages) > len(AWKWARD["numbers"]) / 4


class WorstCaseAPI:
    """Answers with usage as a real tokenizer counts the prompt, and always the longest answer
    ``max_tokens`` allows (the most a request can cost); ``report=False`` sends no usage at all."""

    def __init__(self, tokenizer: Any, report: bool = True) -> None:
        self.tokenizer = tokenizer
        self.report = report
        self.usage = [0, 0]

    async def complete(self, req: ChatRequest) -> ChatResult:
        await asyncio.sleep(0.01)
        prompt = tokens(self.tokenizer, list(req.messages))
        completion = dict(req.params)["max_tokens"]
        self.usage[0] += prompt
        self.usage[1] += completion
        usage = Usage(prompt, completion, prompt + completion) if self.report else Usage()
        return ChatResult("answer", "length", usage, "id", req.model, 0.01)


@pytest.mark.parametrize("report", [True, False], ids=["usage reported", "usage never reported"])
def test_a_cost_cap_is_never_passed_whatever_the_text(report: bool) -> None:
    tekken = MistralTokenizer.from_file(str(DATA / "tekken_240911.json"))
    texts = list(AWKWARD.values())
    requests = [request({"role": "user", "content": texts[i % len(texts)] * (1 + i % 3)}, max_tokens=50)
                for i in range(200)]  # fmt: skip
    requests = [ChatRequest(i, f"k{i}", "m", r.messages, r.params) for i, r in enumerate(requests)]
    price = Price(input=2.0, output=6.0)
    cap = 0.05
    api = WorstCaseAPI(tekken, report)

    async def go() -> tuple[list[Any], Budget]:
        counters = Counters()
        budget = Budget(cap, {"m": price}, counters)
        outcomes: list[Any] = []
        await run_requests(requests, api.complete, throttle=Throttle(8), max_attempts=1,
                           on_outcome=outcomes.append, counters=counters, budget=budget)  # fmt: skip
        return outcomes, budget

    outcomes, budget = run_virtual(go())
    spent = price.cost(*api.usage)  # what the provider bills
    assert 0 < len(outcomes) < len(requests)  # the cap stopped the run part-way
    assert spent <= cap
    assert budget.spent >= spent  # what the run believes it spent never undercounts
    assert budget.exhausted


def test_a_conversation_estimate_counts_every_turn_with_its_history() -> None:
    turns = ChatRequest(0, "k", "m", ({"role": "system", "content": "s"},), (("max_tokens", 10),), ("ab", "cd"))
    first = prompt_bound(request({"role": "system", "content": "s"}, {"role": "user", "content": "ab"}))
    assert estimate(turns).prompt_tokens >= first + first + 10
    assert estimate(turns).completion_tokens == 20
