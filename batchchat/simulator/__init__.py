"""The built-in OpenAI-compatible endpoint with synthetic answers: ``batchchat serve``,
``--provider sim``, and the server every test and benchmark runs against."""

from .answers import request_digest, synthetic_reply
from .server import MODELS, BackgroundSimulator, Simulator, serve

__all__ = ["MODELS", "BackgroundSimulator", "Simulator", "request_digest", "serve", "synthetic_reply"]
