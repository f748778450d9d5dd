"""The contract, fuzzed: schemathesis drives the live API (create_app on a real port, real
PostgreSQL and Redis) from the OpenAPI document the code generates, and every response must keep
the document's promises -- no 5xx, only documented status codes, content types and bodies, and no
request the document allows rejected without the document saying why.

Bounded: a fixed seed and ``EXAMPLES`` examples per operation (positive and negative), once as the
admin and once as a secretary bound to a unit; then a stateful run that follows the document's
response links (create a unit, read it, send it a notice, read and recall that ...)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Coroutine, Iterator
from typing import Any

import asyncpg
import httpx
import hypothesis
import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from notifier.app import all_operations, build_openapi, create_app
from notifier.db import api_keys
from notifier.settings import RateLimits, RoleLimit, Settings
from tests.conftest import ADMIN_TOKEN, auth, reset_state

EXAMPLES = 20  # per operation and principal; each one is a real HTTP round trip
STATEFUL_EXAMPLES = 20  # sequences of linked calls
STATEFUL_STEPS = 15  # calls per sequence (10 stopped reaching a 202 notice when a step gained "mode")
SEED = 20261201

Case = schemathesis.Case[Any]


# Only the document's own links: schemathesis' inferred ones would crowd them out of a short run.
def fuzz_schema(token: str) -> schemathesis.BaseSchema:
    """The document, for a caller with ``token``: schemathesis sends it (and knows when a request
    leaves it out on purpose)."""
    config = schemathesis.Config.from_dict(
        {
            "auth": {"openapi": {"bearer": {"bearer": token}}},
            "phases": {"stateful": {"inference": {"algorithms": []}}},
        }
    )
    return schemathesis.openapi.from_dict(build_openapi(), config=config)


SECRETARY_TOKEN = "fuzz-secretary-token"
schema = fuzz_schema(ADMIN_TOKEN)
secretary_schema = fuzz_schema(SECRETARY_TOKEN)

# Operations whose 422 the document explains beyond the shape of the input (a name that must exist,
# a rule across fields): input the schema allows may meet it. Anywhere else, a 422 for input the
# schema allows is a contract defect.
RULE_422 = {op.handler.__name__ for op in all_operations() if 422 in op.responses}
NUL_MESSAGE = "must not contain NUL characters"  # the rule every operation's 422 states


def accepted_unless_documented(ctx: Any, response: Any, case: Case) -> bool | None:
    """schemathesis' positive_data_acceptance, except a 422 the document explains: the operation's
    own rules, or the one every operation states (no string may hold U+0000)."""
    if response.status_code == 422:
        if case.operation.definition.raw.get("operationId") in RULE_422:
            return None
        errors = response.json().get("errors", [])
        if errors and all(e["message"] == NUL_MESSAGE for e in errors):
            return None
    return positive_data_acceptance(ctx, response, case)


CHECKS: dict[str, Any] = {
    "excluded_checks": [positive_data_acceptance],
    "additional_checks": [accepted_unless_documented],
}


class LiveServer:
    """create_app(settings) on 127.0.0.1 in a thread with its own event loop: schemathesis makes
    blocking calls, so the server cannot share the test's loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fuzz-server", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(create_app(self.settings))
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def __enter__(self) -> LiveServer:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the fuzz server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)

    def run(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` on the server's loop (the test's own loop is not running meanwhile)."""
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def reset(self) -> None:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            await reset_state(self.settings, conn)
        finally:
            await conn.close()


@pytest.fixture(scope="module")
def live(settings: Settings, migrated: None) -> Iterator[LiveServer]:
    """The server, over an empty database; what one operation's fuzzing creates, the next may
    meet (as in production), and the stateful run starts afresh."""
    # The fuzzer sends thousands of requests with one secretary key in seconds: far over any real
    # limit (tests/api/test_rate_limits.py proves the limit; here it would only answer 429).
    unlimited = RoleLimit(per_second=1e6, burst=1e6)
    fuzz_settings = settings.model_copy(
        update={"rate_limits": RateLimits(secretary=unlimited, service=unlimited)}
    )
    with LiveServer(fuzz_settings) as server:
        server.run(server.reset())
        yield server


def seed_branch(live: LiveServer) -> None:
    """A unit with a member: something for lists to return and links to lead from."""
    for path, body in (
        ("/v1/units/fuzz", {"name": "Fuzz branch", "parent_id": None}),
        ("/v1/members/fuzz-officer", {"name": "Officer", "units": ["fuzz"]}),
    ):
        assert httpx.put(live.url + path, json=body, headers=auth(), timeout=10).status_code == 201


@pytest.fixture(scope="module")
def secretary(live: LiveServer) -> None:
    """A secretary key (``SECRETARY_TOKEN``) bound to the seeded unit."""
    seed_branch(live)

    async def insert() -> None:
        conn = await asyncpg.connect(live.settings.database_url)
        try:
            await api_keys.insert(conn, "fuzz", "secretary", "fuzz", None, SECRETARY_TOKEN, None)
        finally:
            await conn.close()

    live.run(insert())
    # 401 counts as "accepted" for the checks, so a key that does not work would pass unnoticed.
    assert httpx.get(live.url + "/v1/units", headers=auth(SECRETARY_TOKEN), timeout=10).status_code == 200


FUZZ_SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)


@schema.parametrize()
@hypothesis.seed(SEED)
@FUZZ_SETTINGS
def test_every_operation_keeps_its_contract(case: Case, live: LiveServer) -> None:
    case.call_and_validate(base_url=live.url, **CHECKS)


@secretary_schema.parametrize()
@hypothesis.seed(SEED)
@FUZZ_SETTINGS
def test_every_operation_keeps_its_contract_for_a_secretary(
    case: Case, live: LiveServer, secretary: None
) -> None:
    case.call_and_validate(base_url=live.url, **CHECKS)


def test_linked_calls_keep_the_contract(live: LiveServer) -> None:
    live.run(live.reset())
    seed_branch(live)
    answered: Counter[tuple[str, str, int]] = Counter()

    # The notices' operations only: the links this checks start at POST /v1/notices, and every other
    # area's operations (each run by the per-operation tests above) would thin the fixed sequences out
    # until none follows a link -- the run is derandomized, so it would fail for good, not flakily.
    notices_only = schema.include(path_regex=r"^/v1/notices")

    class Workflow(notices_only.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"base_url": live.url}

        def before_call(self, case: Case) -> None:
            # A notice to the seeded branch, on the channel every deployment has: the sequences
            # must start from a created notice to have a link to follow (the body's other fields
            # stay generated; every way a body can be wrong is the per-operation tests' work).
            # A case made invalid on purpose is sent as it was made: rewriting its parts could
            # leave it valid for the server but still counted as invalid (then "accepted").
            negative = case.meta is not None and case.meta.generation.mode == GenerationMode.NEGATIVE
            notice = (case.method, case.path) == ("POST", "/v1/notices")
            if notice and isinstance(case.body, dict) and not negative:
                case.body["audience"] = {"units": ["fuzz"]}
                case.body["channels"] = ["inapp"]
                case.body.pop("escalation", None)

        def after_call(self, response: Any, case: Case) -> None:
            answered[(case.method, case.path, response.status_code)] += 1

        def validate_response(self, response: Any, case: Case, **kwargs: Any) -> None:
            case.validate_response(response, **CHECKS, transport_kwargs=kwargs)

    Workflow.run(
        settings=hypothesis.settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=STATEFUL_STEPS,
            derandomize=True,  # the state machine's fixed seed
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    # Only a link can name what an earlier call created: these prove the links were followed.
    seen = "\n".join(f"{n:4} {m} {p} -> {s}" for (m, p, s), n in sorted(answered.items()))
    assert answered[("POST", "/v1/notices", 202)], seen
    assert any(n for (_, path, status), n in answered.items() if "{notice_id}" in path and status < 300), seen
