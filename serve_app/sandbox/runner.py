"""Starting and stopping the sandbox server, in-process or as `python -m serve_app.sandbox`."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from aiohttp import web

from serve_app.sandbox.server import create_app

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 5.0


@dataclass(slots=True)
class RunningSandbox:
    """A bound sandbox server; `port` is the real one even when 0 was asked for."""

    host: str
    port: int
    _runner: web.AppRunner

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def aclose(self) -> None:
        await self._runner.cleanup()


async def start_sandbox(host: str = "127.0.0.1", port: int = 0) -> RunningSandbox:
    """Bind the sandbox on `host:port` (0 picks a free port) and start serving."""
    # No access log: the sandbox is a load-test baseline, and a line per request would
    # cost more than answering it.
    runner = web.AppRunner(
        create_app(), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()

    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise

    bound_port = runner.addresses[0][1]
    return RunningSandbox(host=host, port=bound_port, _runner=runner)


async def serve_until_signalled(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly."""
    sandbox = await start_sandbox(host, port)
    logger.info("sandbox listening on %s", sandbox.url)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    try:
        await stopping.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await sandbox.aclose()
