"""The FastAPI application: routes, error handlers, and the stores' lifetime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from serve_app.api import routes_health, routes_keys, routes_threads, routes_turns, routes_usage
from serve_app.api.edge import EdgeMiddleware
from serve_app.api.error_handlers import install_error_handlers
from serve_app.services import RouterClient, Services
from serve_app.settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings, router: RouterClient) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.create(settings, router)
        await services.start()
        app.state.services = services
        try:
            yield
        finally:
            await services.aclose()

    app = FastAPI(
        title="threadgate",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.max_body_bytes = settings.max_body_bytes
    install_error_handlers(app)
    api_routers = [
        module.router
        for module in (routes_health, routes_keys, routes_threads, routes_turns, routes_usage)
    ]
    for api_router in api_routers:
        app.include_router(api_router)
    # For the Allow header of a 405.
    app.state.api_routes = [route for api_router in api_routers for route in api_router.routes]
    app.add_middleware(EdgeMiddleware, max_body_bytes=settings.max_body_bytes)
    return app
