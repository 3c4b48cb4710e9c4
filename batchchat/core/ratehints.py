"""What a response says about the provider's limits and when to ask again, in no provider's words.

Each wire format names these differently (``x-ratelimit-*`` and ``retry-after`` for Together and
OpenAI, ``anthropic-ratelimit-*`` with RFC 3339 resets for Anthropic). Its dialect reads its own
headers into one ``RateInfo`` when the response arrives, so the throttle and the retry policy
never read a header and work the same for every provider.
"""

from __future__ import annotations

from dataclasses import dataclass

HINT_CAP_S = 300.0  # a wait asked for beyond this is more likely a bug than a plan; waited this long at most


@dataclass(frozen=True, slots=True)
class RateInfo:
    """Limits per minute; resets and waits in seconds from when the response arrived."""

    request_limit: float | None = None
    requests_remaining: float | None = None
    requests_reset_s: float | None = None
    token_limit: float | None = None
    tokens_remaining: float | None = None
    tokens_reset_s: float | None = None
    wait_s: float | None = None  # the wait the response asks for (retry-after, or a limit's reset)
    should_retry: bool | None = None  # the server's explicit word on retrying, where it gives one

    @property
    def states_limit(self) -> bool:
        """Whether the response speaks of a rate limit (not only of a wait): a 429 that does is a
        limit that is real, only not yet known to be ours."""
        return any(value is not None for value in (self.request_limit, self.requests_remaining, self.requests_reset_s,
                                                   self.token_limit, self.tokens_remaining, self.tokens_reset_s))  # fmt: skip
