"""Serving a fake provider's aiohttp app on 127.0.0.1 at a free port."""

from __future__ import annotations

from aiohttp import web


async def serve_local(app: web.Application) -> tuple[web.AppRunner, int]:
    """Start ``app`` on 127.0.0.1 (a port the OS picks, a deep accept queue for bursts of
    connections); returns the runner to clean up and the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
    port: int = runner.addresses[0][1]
    return runner, port
