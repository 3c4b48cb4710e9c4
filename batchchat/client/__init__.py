"""HTTP to an endpoint: chat completions (one attempt at a time), and the files and batches of a
provider's Batch API. The only place, with the simulator, that uses aiohttp."""

from .chat import ChatClient, StreamAssembly, parse_completion, status_error

__all__ = ["ChatClient", "StreamAssembly", "parse_completion", "status_error"]
