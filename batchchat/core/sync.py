"""Coroutines run from synchronous code, including a notebook cell, whose event loop is already
running: what ``run`` and ``run_frame`` (and the CLI) use to drive the async engine.

In a notebook the work runs on a worker thread, where no signal handler can be installed; an
interrupt reaches the notebook's thread instead. Work that can stop gracefully (the live engine:
no new requests, in-flight ones finish, as they are paid for) registers how with
``on_interrupt``, and the interrupt is handed to it; other work is cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from .errors import Interrupted

T = TypeVar("T")
_graceful: dict[asyncio.AbstractEventLoop, Callable[[], None]] = {}


@contextmanager
def on_interrupt(stop: Callable[[], None]) -> Iterator[None]:
    """While the block runs, an interrupt of ``run_sync``'s caller calls ``stop`` in this loop
    (each time: a second interrupt is the second call) instead of cancelling the work."""
    loop = asyncio.get_running_loop()
    _graceful[loop] = stop
    try:
        yield
    finally:
        _graceful.pop(loop, None)


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even where a loop already runs.

    Inside a running loop (Jupyter) the coroutine gets a fresh loop on a worker thread: blocking
    the notebook's own loop would deadlock it, and nesting loops is not allowed. Interrupting the
    notebook then stops that loop's work (gracefully where it can), so no request goes on being
    sent (and paid) unseen.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    loops: list[asyncio.AbstractEventLoop] = []

    def in_thread() -> T:
        with asyncio.Runner() as runner:
            loops.append(runner.get_loop())
            return runner.run(coroutine)

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batchchat") as pool:
        future = pool.submit(in_thread)
        while True:
            try:
                return future.result()
            except Interrupted:  # the work stopped and kept what it had: hand that over
                raise
            except KeyboardInterrupt:
                if not loops:
                    raise
                loop = loops[0]
                stop = _graceful.get(loop)
                if stop is not None:
                    loop.call_soon_threadsafe(stop)
                    continue  # wait for it to stop; another interrupt stops it at once
                loop.call_soon_threadsafe(_cancel_all, loop)
                concurrent.futures.wait([future])
                stopped = future.exception()
                if isinstance(stopped, Interrupted):
                    raise stopped from None
                raise


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()
