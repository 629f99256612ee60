"""Gateway deployment: the FastAPI ingress (auth, validation, engine, persistence)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from fastapi import FastAPI
from ray import serve
from ray.serve import context as serve_context
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
        with _detached_from_request():
            answer = self._handle.complete.remote(call)
        return await answer

    async def stream(self, call: ModelCall) -> AsyncIterator[StreamEvent]:
        with _detached_from_request():
            events = self._stream_handle.stream.remote(call)
        exhausted = False
        try:
            # The router sends events in lists of those that arrived together.
            async for batch in events:
                for event in batch:
                    yield event
            exhausted = True
        finally:
            if not exhausted:
                # The reader stopped early (the client left and the turn is cancelled):
                # stop the router too, which closes the upstream connection.
                events.cancel()

    def upstream_label(self, provider: str) -> str:
        return self._labels.get(provider, provider)

    async def ping(self) -> None:
        await self._handle.ping.remote()


@contextmanager
def _detached_from_request() -> Iterator[None]:
    """Make the next handle call outlive the HTTP request that started it.

    Ray Serve cancels the calls an ingress request made when its client disconnects
    (they inherit the request's internal id and `cancel_on_parent_request_cancel`). A
    model call must not be cut off that way: the turn goes on without the client, stored
    and billed (invariant 4), and with `stream_disconnect="cancel"` the gateway stops the
    call itself. The call keeps the request id, so logs still tie it to the request.
    """
    current = serve_context._get_serve_request_context()
    detached = serve_context._RequestContext(
        route=current.route, request_id=current.request_id, app_name=current.app_name
    )
    token = serve_context._serve_request_context.set(detached)
    try:
        yield
    finally:
        serve_context._serve_request_context.reset(token)


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
