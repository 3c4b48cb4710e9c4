"""The client for an endpoint, ready to send: for provider ``sim``, the built-in simulator is
started first, in the same event loop, and stopped after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..client import ChatClient
from ..job.endpoint import Endpoint
from ..job.spec import RetryPolicy, SimConfig
from ..providers import dialect


@asynccontextmanager
async def open_client(endpoint: Endpoint, *, concurrency: int, retry: RetryPolicy, stream: bool,
                      simulator: SimConfig) -> AsyncIterator[ChatClient]:  # fmt: skip
    base_url = endpoint.base_url
    server = None
    if endpoint.provider == "sim":
        from ..simulator import Simulator  # the web server is imported only when it is used

        server = Simulator(simulator)
        base_url = await server.start()
    assert base_url is not None
    try:
        async with ChatClient(
            base_url,
            endpoint.api_key(),
            concurrency=concurrency,
            timeout_s=retry.timeout_s,
            stream=stream,
            stream_usage=endpoint.stream_usage,
            wire=dialect(endpoint.dialect),
        ) as client:
            yield client
    finally:
        if server is not None:
            await server.close()
