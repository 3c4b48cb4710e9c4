"""An event loop whose clock jumps instead of waiting, for time-dependent tests that run in milliseconds.

Everything that waits in asyncio (``asyncio.sleep``, ``call_at``, aiolimiter, tenacity's sleep)
reads ``loop.time()`` and blocks in the selector; when nothing is ready, this loop moves its
clock straight to the next timer. Only for tests without real I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
TURN_S = 1e-7


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        real_select = self._selector.select

        def select(timeout: float | None = None) -> list[Any]:
            events = real_select(0)
            if events:
                return events
            if timeout is None:
                return real_select(None)  # nothing scheduled at all: a real deadlock, let pytest-timeout say so
            # Each turn of the loop takes a little time, as on a real clock; without it a timer re-armed
            # for "now" (aiolimiter does this on float rounding) would spin forever.
            self._now += max(timeout, TURN_S)
            return events

        self._selector.select = select  # type: ignore[method-assign]

    def time(self) -> float:
        return self._now


def run_virtual(coroutine: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(coroutine)
