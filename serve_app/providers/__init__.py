"""Model providers: one adapter per wire format, sharing one transport with retries."""

from serve_app.providers.anthropic import AnthropicProvider
from serve_app.providers.assembly import StreamAssembler
from serve_app.providers.base import Provider
from serve_app.providers.openai import OpenAIProvider
from serve_app.providers.transport import Endpoint, RetryPolicy, Transport

__all__ = [
    "AnthropicProvider",
    "Endpoint",
    "OpenAIProvider",
    "Provider",
    "RetryPolicy",
    "StreamAssembler",
    "Transport",
]
