"""Stopping gracefully: Ctrl-C and SIGTERM (where this thread may handle signals), or an
interrupt handed over by ``sync.run_sync`` (a notebook's stop button), call one function, and a
second call means "now". Every engine stops this way."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..core.sync import on_interrupt


@contextmanager
def graceful_stop(on_signal: Callable[[], None], *, handle_signals: bool) -> Iterator[None]:
    """While the block runs, a signal or an interrupt calls ``on_signal``; afterwards the
    caller's handlers are back."""
    loop = asyncio.get_running_loop()
    installed = _catch_signals(loop, on_signal) if handle_signals else []
    try:
        with on_interrupt(on_signal):
            yield
    finally:
        _restore_signals(loop, installed)


def _catch_signals(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> list[tuple[int, Any]]:
    """Returns each signal with the handler it had, which ``_restore_signals`` puts back."""
    if threading.current_thread() is not threading.main_thread():
        return []
    installed: list[tuple[int, Any]] = []
    for number in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(number)
        try:
            loop.add_signal_handler(number, callback)
        except (NotImplementedError, RuntimeError):  # not on this platform or loop
            continue
        installed.append((number, previous))
    return installed


def _restore_signals(loop: asyncio.AbstractEventLoop, installed: list[tuple[int, Any]]) -> None:
    """asyncio resets a signal to its default on removal; the caller's handler (the CLI's, which
    turns SIGTERM into a clean stop while the output is written) is put back instead."""
    for number, previous in installed:
        loop.remove_signal_handler(number)
        if previous is not None:
            signal.signal(number, previous)
