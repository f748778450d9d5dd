"""Command line: ``notifier dev | serve | worker | migrate | openapi``.

``dev`` is the all-in-one used by ``make run``: embedded PostgreSQL and Redis (unless
NOTIFIER_DATABASE_URL / NOTIFIER_REDIS_URL are set), migrations, the API in this process and
``--processes`` worker processes (default: one per CPU; notifier/workers/processes.py) with
their scheduler (the reconciler cron). Ctrl-C stops everything, servers included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import signal
import sys
from pathlib import Path

from aiohttp import web
from pydantic import SecretStr

from notifier.settings import Settings
from notifier.workers.processes import default_processes

log = logging.getLogger("notifier")


def _stop_on_signals() -> asyncio.Future[None]:
    """A future that SIGINT or SIGTERM resolves."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _resolve, stop)
    return stop


def _resolve(stop: asyncio.Future[None]) -> None:
    if not stop.done():
        stop.set_result(None)


async def run_api(settings: Settings, stop: asyncio.Future[None] | None = None) -> None:
    from notifier.app import create_app, server_options

    runner = web.AppRunner(create_app(settings), access_log=None, **server_options(settings))
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    try:
        await (stop if stop is not None else _stop_on_signals())
    finally:
        await runner.cleanup()


async def run_worker(settings: Settings, stop: asyncio.Future[None] | None = None) -> None:
    """The worker, supervised: a Redis outage pauses it, never ends it (only ``stop`` does)."""
    from notifier.workers.settings import run_supervised

    await run_supervised(settings, stop if stop is not None else _stop_on_signals())


async def run_workers(settings: Settings, processes: int) -> None:
    """``notifier worker``: one worker in this process, or ``processes`` of them as children."""
    from notifier.workers.processes import run_worker_processes

    if processes == 1:
        await run_worker(settings)
    else:
        await run_worker_processes(settings, processes, _stop_on_signals())


async def run_dev(settings: Settings, processes: int) -> None:
    from notifier.db.migrations import migrate
    from notifier.workers.processes import run_worker_processes

    await migrate(settings.database_url)
    stop = _stop_on_signals()
    parts = [
        asyncio.ensure_future(run_api(settings, stop)),
        asyncio.ensure_future(run_worker_processes(settings, processes, stop)),
    ]
    for part in parts:
        # Whichever part ends first (Ctrl-C, or a failure) stops the other in order, so the process
        # never lingers half shut down.
        part.add_done_callback(lambda _: _resolve(stop))
    for outcome in await asyncio.gather(*parts, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


def _dev(settings: Settings, processes: int) -> None:
    from notifier.embedded import AlreadyRunning, EmbeddedServers

    token = settings.admin_token.get_secret_value() if settings.admin_token else secrets.token_urlsafe(24)
    updates: dict[str, object] = {"admin_token": SecretStr(token), "allow_private_targets": True}
    servers = None
    if not settings.database_url or not settings.redis_url:
        base = Path(settings.data_dir).resolve()
        base.mkdir(parents=True, exist_ok=True)
        try:
            servers = EmbeddedServers(base).start()
        except AlreadyRunning as exc:
            sys.exit(f"notifier dev: {exc}")
        updates.setdefault("database_url", settings.database_url or servers.postgres.url)
        updates.setdefault("redis_url", settings.redis_url or servers.redis.url)
    settings = settings.model_copy(update=updates)
    url = f"http://{settings.host}:{settings.port}"
    print(
        f"\nnotifier is serving on {url}\n"
        f"  admin token: {token}\n"
        f"  try: curl -H 'Authorization: Bearer {token}' {url}/v1/units\n"
        f"  OpenAPI: {url}/openapi.json   Ctrl-C stops everything.\n",
        flush=True,
    )
    try:
        asyncio.run(run_dev(settings, processes))
    finally:
        if servers is not None:
            servers.stop()
        print("notifier stopped", flush=True)


def _require_servers(settings: Settings) -> None:
    if not settings.database_url or not settings.redis_url:
        sys.exit("set NOTIFIER_DATABASE_URL and NOTIFIER_REDIS_URL (or use 'notifier dev')")


def _require_production(settings: Settings) -> None:
    """`serve` and `worker` run for real: no public development secrets, a public URL."""
    _require_servers(settings)
    problems = settings.production_problems()
    if problems:
        sys.exit("refusing to start: " + "; ".join(problems) + " (use 'notifier dev' for development)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="notifier", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="embedded servers + migrate + API + worker processes + scheduler")
    sub.add_parser("serve", help="the HTTP API")
    worker = sub.add_parser("worker", help="the arq worker (fan-out, delivery, reconciler cron)")
    for cmd in (dev, worker):
        cmd.add_argument("--processes", type=int, default=None, help="worker processes (default: CPU count)")
    mig = sub.add_parser(
        "migrate", help="apply SQL migrations from schemas/ (each file in its own transaction)"
    )
    mig.add_argument("--dir", type=Path, default=None, help="the migrations directory (default: schemas/)")
    sub.add_parser("openapi", help="print the OpenAPI document")
    sub.add_parser("vapid-keys", help="print a new VAPID key pair for web push")
    echo = sub.add_parser("echo-webhooks", help="a local receiver that verifies and prints webhooks")
    echo.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("arq").setLevel(logging.WARNING)
    settings = Settings()

    processes = getattr(args, "processes", None)
    if processes is not None and processes < 1:
        parser.error("--processes must be at least 1")
    if args.command == "dev":
        _dev(settings, processes or default_processes())
    elif args.command == "serve":
        _require_production(settings)
        asyncio.run(run_api(settings))
    elif args.command == "worker":
        _require_production(settings)
        asyncio.run(run_workers(settings, processes or default_processes()))
    elif args.command == "migrate":
        _require_servers(settings)
        from notifier.db.migrations import SCHEMAS_DIR, MigrationFailed, migrate

        try:
            applied = asyncio.run(migrate(settings.database_url, args.dir or SCHEMAS_DIR))
        except MigrationFailed as exc:
            if exc.applied:
                print("applied: " + ", ".join(exc.applied))
            sys.exit(f"notifier migrate: {exc}")
        print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    elif args.command == "vapid-keys":
        from notifier.channels.webpush import generate_vapid_keys

        private_pem, public = generate_vapid_keys()
        print(private_pem.strip())
        print("# set NOTIFIER_WEBPUSH__VAPID_PRIVATE_KEY to the PEM above; browsers use the public key:")
        print(public)
    elif args.command == "echo-webhooks":
        from notifier.echo import serve

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings.webhook_secret.get_secret_value(), "127.0.0.1", args.port))
    elif args.command == "openapi":
        from notifier.app import build_openapi

        print(json.dumps(build_openapi(), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
