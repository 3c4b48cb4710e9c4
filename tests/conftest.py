"""Shared fixtures: a real simulator over loopback, and no real API keys anywhere."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from batchchat.job.spec import SimConfig
from batchchat.simulator import BackgroundSimulator
from tests.helpers import KEY_VARIABLES


@pytest.fixture(autouse=True)
def no_real_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a real provider with a real key."""
    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sim() -> Iterator[BackgroundSimulator]:
    with BackgroundSimulator(SimConfig()) as server:
        yield server


@pytest.fixture
def sim_factory() -> Iterator[Any]:
    """Start simulators with a given config; all are stopped after the test."""
    started: list[BackgroundSimulator] = []

    def start(**config: Any) -> BackgroundSimulator:
        server = BackgroundSimulator(SimConfig(**config)).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)
