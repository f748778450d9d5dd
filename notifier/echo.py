"""``notifier echo-webhooks``: a tiny receiver that verifies Standard Webhooks signatures and
prints each notice it gets. For trying the service out and for integrators' smoke tests."""

from __future__ import annotations

import asyncio
import hmac
import json

from aiohttp import web

from notifier.channels.webhook import decode_secret, sign


def make_app(secret: str) -> web.Application:
    key = decode_secret(secret)

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        msg_id = request.headers.get("webhook-id", "")
        try:
            ts = int(request.headers.get("webhook-timestamp", ""))
        except ValueError:
            return web.Response(status=400, text="missing webhook-timestamp")
        expected = sign(key, msg_id, ts, body)
        offered = request.headers.get("webhook-signature", "").split(" ")
        if not any(hmac.compare_digest(o, expected) for o in offered):
            print(f"REJECTED {msg_id}: bad signature", flush=True)
            return web.Response(status=401)
        payload = json.loads(body)
        print(f"{msg_id} -> {payload['member_id']}: [{payload['kind']}] {payload['title']}", flush=True)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    return app


async def serve(secret: str, host: str, port: int) -> None:
    runner = web.AppRunner(make_app(secret), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"echoing verified webhooks on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
