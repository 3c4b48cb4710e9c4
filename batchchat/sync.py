"""Coroutines run from synchronous code, including a notebook cell, whose event loop is already
running: what ``run`` and ``run_frame`` (and the CLI) use to drive the async engine."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

from .errors import Interrupted

T = TypeVar("T")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even where a loop already runs.

    Inside a running loop (Jupyter) the coroutine gets a fresh loop on a worker thread: blocking
    the notebook's own loop would deadlock it, and nesting loops is not allowed. Interrupting the
    notebook then cancels that loop's work, so no request goes on being sent (and paid) unseen.
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
        try:
            return future.result()
        except KeyboardInterrupt:
            if loops:
                loops[0].call_soon_threadsafe(_cancel_all, loops[0])
            concurrent.futures.wait([future])
            stopped = future.exception()
            if isinstance(stopped, Interrupted):  # the run kept what it had: hand that over
                raise stopped from None
            raise


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()
