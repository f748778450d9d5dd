"""The router finds the busiest route (a single read receipt) by its first try: aiohttp tries the
resources under one path prefix in the order they were added (a regular expression and a
coroutine each; ``/v1/notices`` has a dozen), so the receipts module is installed first. That
order cannot change what any request reaches: no other route matches the receipts' paths."""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from notifier.api import receipts
from notifier.app import create_app
from tests.conftest import make_settings

NOTICE = "0b3f7a8e-8a7c-4f3e-9d1b-2b6b8d0c7e11"


def _app() -> web.Application:
    app = create_app(make_settings(("postgresql://127.0.0.1:9/none", "redis://127.0.0.1:9")))
    app.router.freeze()
    return app


def _sample(path: str) -> str:
    return re.sub(r"\{[^}]+\}", NOTICE, path)


async def test_the_single_receipt_is_the_first_resource_tried_under_v1_notices() -> None:
    app = _app()
    under = [r.canonical for r in app.router.resources() if r.canonical.startswith("/v1/notices/")]
    assert under[0] == "/v1/notices/{notice_id}/receipts", under[:3]
    assert len(under) > 5  # the prefix has many resources: the order is what makes it one try


async def test_no_other_route_matches_a_path_of_the_modules_installed_first() -> None:
    from notifier.app import HOT_MODULES

    app = _app()
    hot = {op.path for module in HOT_MODULES for op in module.routes.operations}
    assert "/v1/notices/{notice_id}/receipts" in hot and receipts in HOT_MODULES
    for path in hot:
        request = make_mocked_request("POST", _sample(path), app=app)
        matching = []
        for resource in app.router.resources():
            match, allowed = await resource.resolve(request)
            if match is not None or allowed:
                matching.append(resource.canonical)
        assert matching == [path], (path, matching)
