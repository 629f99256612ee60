"""The model router: sends a canonical call to its provider, or to the sandbox standing in.

Each provider is resolved once, at construction: its own endpoint when its credentials are
configured, else the local sandbox when one runs (said once in the log, and in the
`x-threadgate-upstream` header through `upstream_label`), else nothing, and calls to it fail
with a message that names the setting to fill in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing, suppress
from typing import TypeVar

from pydantic import SecretStr

from serve_app.canonical import ModelAnswer, ModelCall, StreamEvent
from serve_app.errors import UpstreamError
from serve_app.providers import AnthropicProvider, OpenAIProvider, Provider
from serve_app.providers.transport import RetryPolicy, Transport
from serve_app.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

SANDBOX_LABEL = "sandbox"
SANDBOX_API_KEY = "sandbox"  # the sandbox checks no key, but the wire format wants one

# Compatible servers (vLLM, Ollama, LM Studio) all read max_tokens; the newer
# max_completion_tokens that OpenAI itself requires is not understood everywhere.
COMPATIBLE_MAX_TOKENS_FIELD = "max_tokens"


class ModelRouter:
    def __init__(self, settings: Settings, *, retry_policy: RetryPolicy | None = None) -> None:
        self._transport = Transport(
            timeout_s=settings.upstream_timeout_s,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            retry_policy=retry_policy or RetryPolicy.from_settings(settings),
        )
        self._providers: dict[str, Provider] = {}
        self._unconfigured: dict[str, str] = {}  # provider -> client-safe message

        self._add_anthropic(settings)
        self._add_openai(settings)
        self._add_openai_compatible(settings)

    async def complete(self, call: ModelCall) -> ModelAnswer:
        return await self._provider(call.provider).complete(call)

    async def stream(self, call: ModelCall) -> AsyncIterator[StreamEvent]:
        """Anthropic streaming events, message_start first, message_stop (or error) last."""
        provider = self._provider(call.provider)
        async with aclosing(provider.stream(call)) as events:
            async for event in events:
                yield event

    async def stream_batches(self, call: ModelCall) -> AsyncIterator[list[StreamEvent]]:
        """The events of `stream`, in lists of those that arrived while the previous list was
        being sent on. Nothing waits for company: an event that arrives alone goes alone.

        Across a Ray Serve streaming handle every item costs a message and a serialization;
        a provider often delivers several events in one network read, and these then cross
        as one item.
        """
        async with aclosing(self.stream(call)) as events:
            async for batch in ready_batches(events):
                yield batch

    def upstream_label(self, provider: str) -> str:
        """The `x-threadgate-upstream` value: "sandbox" when the sandbox serves `provider`."""
        configured = self._providers.get(provider)
        return configured.label if configured is not None else provider

    async def ping(self) -> None:
        """In process there is no hop to check: the router answers if the caller runs."""

    async def aclose(self) -> None:
        await self._transport.aclose()

    def _provider(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is not None:
            return provider
        if name in self._unconfigured:
            raise UpstreamError(self._unconfigured[name])
        raise UpstreamError(
            f"provider must be one of {sorted(self._unconfigured | self._providers)}, got {name!r}"
        )

    def _add_anthropic(self, settings: Settings) -> None:
        api_key = _secret(settings.anthropic_api_key)
        if api_key:
            base_url, label = settings.anthropic_base_url, "anthropic"
        elif settings.sandbox_url:
            base_url, label, api_key = settings.sandbox_url, SANDBOX_LABEL, SANDBOX_API_KEY
        else:
            self._mark_unconfigured("anthropic", "has no API key configured: set ANTHROPIC_API_KEY")
            return

        self._add(
            AnthropicProvider(
                base_url=base_url, api_key=api_key, label=label, transport=self._transport
            ),
            settings,
        )

    def _add_openai(self, settings: Settings) -> None:
        api_key = _secret(settings.openai_api_key)
        if api_key:
            base_url, label = settings.openai_base_url, "openai"
        elif settings.sandbox_url:
            base_url, label = _sandbox_openai_base_url(settings.sandbox_url), SANDBOX_LABEL
            api_key = SANDBOX_API_KEY
        else:
            self._mark_unconfigured("openai", "has no API key configured: set OPENAI_API_KEY")
            return

        self._add(
            OpenAIProvider(
                name="openai",
                base_url=base_url,
                api_key=api_key,
                label=label,
                transport=self._transport,
                credential_hint="OPENAI_API_KEY",
            ),
            settings,
        )

    def _add_openai_compatible(self, settings: Settings) -> None:
        # A compatible server often needs no key (a local vLLM), so its base URL is what
        # says whether it is configured.
        api_key = _secret(settings.openai_compatible_api_key)
        if settings.openai_compatible_base_url:
            base_url, label = settings.openai_compatible_base_url, "openai_compatible"
        elif settings.sandbox_url:
            base_url, label = _sandbox_openai_base_url(settings.sandbox_url), SANDBOX_LABEL
            api_key = SANDBOX_API_KEY
        else:
            self._mark_unconfigured(
                "openai_compatible",
                "has no base URL configured: set OPENAI_COMPATIBLE_BASE_URL",
            )
            return

        self._add(
            OpenAIProvider(
                name="openai_compatible",
                base_url=base_url,
                api_key=api_key,
                label=label,
                transport=self._transport,
                credential_hint="OPENAI_COMPATIBLE_API_KEY",
                max_tokens_field=COMPATIBLE_MAX_TOKENS_FIELD,
            ),
            settings,
        )

    def _add(self, provider: Provider, settings: Settings) -> None:
        self._providers[provider.name] = provider
        if provider.label == SANDBOX_LABEL:
            logger.info(
                "provider %s is not configured: the sandbox at %s serves it",
                provider.name,
                settings.sandbox_url,
            )

    def _mark_unconfigured(self, name: str, problem: str) -> None:
        self._unconfigured[name] = f"provider {name} {problem}"
        logger.info("provider %s %s; calls to it will fail", name, problem)


async def ready_batches(items: AsyncIterator[T]) -> AsyncIterator[list[T]]:
    """`items` regrouped: each list holds what arrived since the previous one was taken."""
    arrived: list[T] = []
    wake = asyncio.Event()
    failure: BaseException | None = None
    finished = False

    async def pump() -> None:
        nonlocal failure, finished
        try:
            async for item in items:
                arrived.append(item)
                wake.set()
        except Exception as exc:  # handed to the consumer, in order after the items
            failure = exc
        finally:
            finished = True
            wake.set()

    pumping = asyncio.create_task(pump())
    try:
        while True:
            if not arrived and not finished:
                wake.clear()
                await wake.wait()
            if arrived:
                batch = arrived[:]
                arrived.clear()
                yield batch
            elif failure is not None:
                raise failure
            else:
                return
    finally:
        # The consumer stopped early (cancelled, or the client left): stop reading too.
        pumping.cancel()
        with suppress(asyncio.CancelledError):
            await pumping


def _secret(value: SecretStr | None) -> str | None:
    # An empty variable (ANTHROPIC_API_KEY=) means unset, not a key of "".
    return value.get_secret_value() if value is not None and value.get_secret_value() else None


def _sandbox_openai_base_url(sandbox_url: str) -> str:
    return f"{sandbox_url.rstrip('/')}/v1"
