"""Gateway deployment: the FastAPI ingress (auth, validation, engine, persistence)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.api.app import create_app
from serve_app.canonical import ModelAnswer, ModelCall, StreamEvent
from serve_app.logs import configure_replica_logging
from serve_app.settings import Settings


class ServeRouterClient:
    """The RouterClient the engine uses, over a Ray Serve handle to ModelRouter."""

    def __init__(self, handle: DeploymentHandle, labels: dict[str, str]) -> None:
        self._handle = handle
        self._stream_handle = handle.options(stream=True)
        self._labels = labels

    async def complete(self, call: ModelCall) -> ModelAnswer:
        return await self._handle.complete.remote(call)

    async def stream(self, call: ModelCall) -> AsyncIterator[StreamEvent]:
        async for event in self._stream_handle.stream.remote(call):
            yield event

    def upstream_label(self, provider: str) -> str:
        return self._labels.get(provider, provider)

    async def ping(self) -> None:
        await self._handle.ping.remote()


@serve.deployment(name="Gateway")
@serve.ingress()
class GatewayDeployment:
    def __init__(self, model_router: DeploymentHandle) -> None:
        self._settings = Settings()
        configure_replica_logging(self._settings.log_level)
        self._model_router = model_router

    async def __serve_build_asgi_app__(self) -> FastAPI:
        labels = await self._model_router.upstream_labels.remote()
        return create_app(self._settings, ServeRouterClient(self._model_router, labels))
