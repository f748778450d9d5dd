"""What the commands that talk to a running server share: where it is, and how its errors read."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable

from notifier.client import ApiError, Client, ClientError

URL_ENV = "NOTIFIER_URL"
TOKEN_ENV = "NOTIFIER_TOKEN"  # noqa: S105 (the name of the variable, not a token)
DEFAULT_URL = "http://127.0.0.1:8080"


def client_for(args: argparse.Namespace) -> Client:
    """A client for ``--url``/``--token``, else NOTIFIER_URL / NOTIFIER_TOKEN (exits without a token)."""
    url = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        sys.exit(f"notifier {args.command}: set {TOKEN_ENV} or pass --token")
    return Client(url, token)


def run(args: argparse.Namespace, command: Callable[[Client], Awaitable[int]]) -> int:
    """Run ``command`` with a client; an API error or an unreachable server is one line on stderr."""

    async def main() -> int:
        async with client_for(args) as api:
            return await command(api)

    try:
        return asyncio.run(main())
    except ApiError as exc:
        fields = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in exc.errors)
        print(f"notifier {args.command}: {exc}" + (f" ({fields})" if fields else ""), file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"notifier {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"notifier {args.command}: interrupted", file=sys.stderr)
        return 130
