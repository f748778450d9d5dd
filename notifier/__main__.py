"""Command line: ``notifier dev | serve | worker | migrate | openapi | send | status | roll-call``.

``dev`` is the all-in-one used by ``make run``: embedded PostgreSQL and Redis (unless
NOTIFIER_DATABASE_URL / NOTIFIER_REDIS_URL are set), migrations, the API in this process and
``--processes`` worker processes (default: one per CPU; notifier/workers/processes.py) with
their scheduler (the reconciler cron). Ctrl-C stops everything, servers included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import secrets
import signal
import sys
from pathlib import Path

from aiohttp import web
from pydantic import SecretStr

from notifier.logs import configure as configure_logging
from notifier.settings import Settings
from notifier.workers.processes import default_processes, run_on_api_loop, run_on_worker_loop

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
    freeze_startup_objects()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    try:
        await (stop if stop is not None else _stop_on_signals())
    finally:
        await runner.cleanup()


def freeze_startup_objects() -> None:
    """Leave what the process holds once started (modules, models, routes, templates, pools: some
    100,000 objects, all living as long as it does) out of the garbage collector's passes. A
    full pass walks every tracked object; with them, one held the API's event loop for tens of
    milliseconds, every few seconds under a read storm, and every request waited (a status read's
    p99, benchmarks/scale.py target 6). Garbage first, so that none is kept for ever."""
    gc.collect()
    gc.freeze()


async def run_worker(settings: Settings, stop: asyncio.Future[None] | None = None) -> None:
    """The worker, supervised: a Redis outage pauses it, never ends it (only ``stop`` does)."""
    from notifier.workers.settings import run_supervised

    await run_supervised(settings, stop if stop is not None else _stop_on_signals())


async def run_workers(settings: Settings, processes: int) -> None:
    """``notifier worker``: one worker in this process, or ``processes`` of them as children."""
    from notifier.workers.processes import run_worker_processes

    if processes == 1:
        from notifier.workers.priority import lower_own_priority

        lower_own_priority(settings.worker_nice)  # this process is the worker: requests first
        await run_worker(settings)
    else:
        await run_worker_processes(settings, processes, _stop_on_signals())


async def run_dev(settings: Settings, processes: int) -> None:
    from notifier.db.migrations import migrate
    from notifier.workers.processes import run_worker_processes

    await migrate(settings.database_url)
    from notifier.cli.console_link import print_admin_link

    await print_admin_link(settings)
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
    from notifier.cli.console_link import dev_vapid_key

    settings = dev_vapid_key(settings.model_copy(update=updates))
    url = f"http://{settings.host}:{settings.port}"
    print(
        f"\nnotifier is serving on {url}\n"
        f"  admin token: {token}\n"
        f"  try: curl -H 'Authorization: Bearer {token}' {url}/v1/units\n"
        f"  OpenAPI: {url}/openapi.json   Ctrl-C stops everything.\n",
        flush=True,
    )
    try:
        run_on_api_loop(settings, run_dev(settings, processes))
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


def _parser() -> argparse.ArgumentParser:
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
    sub.add_parser("doctor", help="check this deployment's settings, PostgreSQL, Redis and migrations")
    sub.add_parser("vapid-keys", help="print a new VAPID key pair for web push")
    link = sub.add_parser("console-link", help="print a one-time sign-in link to the web console")
    link.add_argument("member", nargs="?", default=None, help="the member (default: the admin)")
    imp = sub.add_parser("import", help="import the organisation: from DingTalk, or from a CSV table")
    imp_sub = imp.add_subparsers(dest="source", required=True)
    imp_dt = imp_sub.add_parser("dingtalk", help="departments, users and their userids from DingTalk")
    imp_dt.add_argument("--root-unit", default="dingtalk", help="the unit DingTalk's root department is")
    imp_csv = imp_sub.add_parser("csv", help="unit_path,member_id,name,phone,dingtalk_userid rows")
    imp_csv.add_argument("file", type=Path)
    for p in (imp_dt, imp_csv):
        p.add_argument("--dry-run", action="store_true", help="print what would change, write nothing")
    echo = sub.add_parser("echo-webhooks", help="a local receiver that verifies and prints webhooks")
    echo.add_argument("--port", type=int, default=9000)
    remote = argparse.ArgumentParser(add_help=False)  # commands that talk to a running server
    remote.add_argument("--url", help="the server (default: $NOTIFIER_URL, else http://127.0.0.1:8080)")
    remote.add_argument("--token", help="an API key (default: $NOTIFIER_TOKEN)")
    send = sub.add_parser("send", parents=[remote], help="send a notice (and --watch it being read)")
    send.add_argument("--unit", action="append", required=True, help="a unit to send to (repeatable)")
    send.add_argument("--title", required=True)
    send.add_argument("--body", required=True)
    send.add_argument("--channels", default="inapp", help="comma-separated, in order: inapp,sms")
    send.add_argument("--escalation", default=None, help="an escalation policy name")
    send.add_argument("--kind", choices=["ding", "notice"], default="ding")
    send.add_argument("--idempotency-key", default=None, help="default: a new one (sent once per key)")
    send.add_argument("--watch", action="store_true", help="show delivered/read live until all have read")
    status = sub.add_parser("status", parents=[remote], help="a notice's counts, per unit")
    status.add_argument("notice_id")
    status.add_argument("--unit", default=None, help="the counts of this unit's subtree")
    roll = sub.add_parser("roll-call", parents=[remote], help="who has not read a notice, and why")
    roll.add_argument("notice_id")
    roll.add_argument("--unit", default=None, help="only this unit's subtree")
    roll.add_argument("--csv", action="store_true", help="CSV on stdout")
    return parser


def _migrate(settings: Settings, directory: Path | None) -> None:
    _require_servers(settings)
    from notifier.db.migrations import SCHEMAS_DIR, MigrationFailed, migrate

    try:
        applied = asyncio.run(migrate(settings.database_url, directory or SCHEMAS_DIR))
    except MigrationFailed as exc:
        if exc.applied:
            print("applied: " + ", ".join(exc.applied))
        sys.exit(f"notifier migrate: {exc}")
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))


def _remote(args: argparse.Namespace) -> int:
    """The commands that talk to a running server (notifier/cli/)."""
    if args.command == "send":
        from notifier.cli.send import run_send

        return run_send(args)
    if args.command == "status":
        from notifier.cli.status import run_status

        return run_status(args)
    from notifier.cli.rollcall import run_roll_call

    return run_roll_call(args)


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    processes = getattr(args, "processes", None)
    if processes is not None and processes < 1:
        parser.error("--processes must be at least 1")
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    if args.command == "dev":
        _dev(settings, processes or default_processes())
    elif args.command == "serve":
        _require_production(settings)
        run_on_api_loop(settings, run_api(settings))
    elif args.command == "worker":
        _require_production(settings)
        run_on_worker_loop(settings, run_workers(settings, processes or default_processes()))
    elif args.command == "migrate":
        _migrate(settings, args.dir)
    elif args.command == "console-link":
        from notifier.cli import console_link

        console_link.run(settings, args.member)
    elif args.command == "import":
        _require_servers(settings)
        from notifier.cli.imports import run_command

        run_command(settings, args)
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
    elif args.command == "doctor":
        from notifier.cli import doctor

        sys.exit(doctor.main(settings))
    elif args.command in ("send", "status", "roll-call"):
        sys.exit(_remote(args))
    elif args.command == "openapi":
        from notifier.app import build_openapi

        print(json.dumps(build_openapi(), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
