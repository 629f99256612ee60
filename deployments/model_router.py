"""ModelRouter deployment: provider calls, translation and streaming, scaled on its own."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ray import serve

from serve_app.canonical import ModelAnswer, ModelCall, StreamEvent
from serve_app.logs import configure_replica_logging
from serve_app.router import ModelRouter
from serve_app.settings import Settings

PROVIDERS = ("anthropic", "openai", "openai_compatible")


@serve.deployment(name="ModelRouter")
class ModelRouterDeployment:
    def __init__(self) -> None:
        settings = Settings()
        configure_replica_logging(settings.log_level)
        self._router = ModelRouter(settings)

    async def complete(self, call: ModelCall) -> ModelAnswer:
        return await self._router.complete(call)

    async def stream(self, call: ModelCall) -> AsyncIterator[list[StreamEvent]]:
        async for batch in self._router.stream_batches(call):
            yield batch

    def upstream_labels(self) -> dict[str, str]:
        return {provider: self._router.upstream_label(provider) for provider in PROVIDERS}

    def ping(self) -> bool:
        return True
