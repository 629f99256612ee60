"""The provider interface: one canonical call in, a canonical answer or Anthropic events out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

from serve_app.canonical import ModelAnswer, ModelCall, StreamEvent
from serve_app.providers.transport import Endpoint, Transport


class Provider(ABC):
    """A configured provider: where its requests go and how its wire format translates.

    `stream` yields Anthropic streaming events whatever the provider's own format is, so the
    gateway reads one event language.
    """

    def __init__(self, endpoint: Endpoint, transport: Transport) -> None:
        self._endpoint = endpoint
        self._transport = transport

    @property
    def name(self) -> str:
        return self._endpoint.provider

    @property
    def label(self) -> str:
        """The upstream that answers: "sandbox" when the local sandbox serves this provider."""
        return self._endpoint.label

    @abstractmethod
    async def complete(self, call: ModelCall) -> ModelAnswer:
        """The whole answer at once."""

    @abstractmethod
    def stream(self, call: ModelCall) -> AsyncIterator[StreamEvent]:
        """The answer as Anthropic streaming events, from message_start to message_stop."""
