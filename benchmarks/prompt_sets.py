"""The prompts of the throughput benchmark, made the same in every process from a seed.

``fixed`` is short prompts of one shape. ``mix`` is what a real table holds: English text of
varied lengths, a tenth of it about 2 KB, some Chinese and Japanese (3 bytes a character in
UTF-8), some emoji (4 bytes, some joined): a client's cost per byte shows on it.
"""

from __future__ import annotations

import random

PROMPT = "Question {i}: what about {i}?"
PROMPT_SETS = ("fixed", "mix")
MIX_SEED = 26
LONG_BYTES = 2048  # a tenth of the mix's prompts are about this long

_TEXT = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no will more can out who about "
         "what some time could into than them other then its only over also after two first new because these "
         "may any most where through even made many before must well back years just being such long market "
         "table answer question summary customer invoice shipment delivery warranty refund account "
         "colour behaviour café naïve résumé")  # fmt: skip
WORDS = _TEXT.split()

# Faces and things, a thumb with a skin tone, a heart with its variation selector, a joined pair.
EMOJI = ("\U0001f600", "\U0001f44d\U0001f3fd", "\U0001f680", "\u2764\ufe0f", "\U0001f468\u200d\U0001f4bb", "\U0001f389")


def mix_prompt(rng: random.Random, i: int) -> str:
    """One prompt of a real table's mix: mostly English of varied lengths, a tenth about
    ``LONG_BYTES`` long, some Chinese and Japanese, some emoji. Each carries its number, so no
    two are the same (batchchat would send a repeat once, the bare loop every time)."""
    kind = rng.random()
    if kind < 0.10:  # a long document to summarise
        words: list[str] = []
        size = 0
        while size < LONG_BYTES - 30:
            words.append(rng.choice(WORDS))
            size += len(words[-1]) + 1
        return f"Summarise document {i}: " + " ".join(words)
    if kind < 0.22:  # CJK: Chinese ideographs with Japanese kana between them, 3 bytes a character
        chars = [chr(rng.randrange(0x4E00, 0x9FA5) if rng.random() < 0.7 else rng.randrange(0x3041, 0x3094))
                 for _ in range(rng.randrange(10, 200))]  # fmt: skip
        return f"第{i}問: " + "".join(chars) + "。"
    text = " ".join(rng.choice(WORDS) for _ in range(int(rng.lognormvariate(3.0, 0.9)) + 3))
    if kind < 0.30:  # emoji, 4 bytes each, some with a joiner or a skin tone
        text += " " + "".join(rng.choice(EMOJI) for _ in range(rng.randrange(1, 6)))
    return f"Question {i}: {text}?"


def prompts_of(kind: str, rows: int, seed: int = MIX_SEED) -> list[str]:
    """The prompts of a set: ``fixed`` (short, one shape) or ``mix`` (a real table's, from ``seed``)."""
    if kind == "fixed":
        return [PROMPT.format(i=i) for i in range(rows)]
    rng = random.Random(seed)
    return [mix_prompt(rng, i) for i in range(rows)]
