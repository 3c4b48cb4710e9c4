"""HTTP to an endpoint: chat requests (one attempt at a time, in the endpoint's dialect), and the
files and batches of a provider's Batch API. The only place, with the simulator, that uses aiohttp."""

from .chat import ChatClient

__all__ = ["ChatClient"]
