"""``Client``: typed async access to the notifier API for integrating services.

Requests and answers are the API's own pydantic models (imported from ``notifier.api``, never
copied), so the client cannot drift from the server. Answers 429 and 503 (and a 409 for a send
whose Idempotency-Key is still in flight) are retried with backoff,
honouring ``Retry-After`` (each wait and the number of tries are bounded: ``Retry``); a request
that may have reached the server is retried after a broken connection only when repeating it is
harmless (reads, PUTs, receipts, a send with its idempotency key). Errors: notifier/client/errors.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel

from notifier.api.contacts import ContactIn, ContactList, ContactOut
from notifier.api.members import MemberBatchIn, MemberBatchItem, MemberBatchOut, MemberIn, MemberOut
from notifier.api.notices import IDEMPOTENCY_HEADER, NoticeIn, NoticeOut
from notifier.api.receipts import ReceiptOut
from notifier.api.rollcall import RollCallPage
from notifier.api.stream import StreamEvent
from notifier.api.unit_counts import NoticeListPage, Rollup
from notifier.api.units import UnitIn, UnitList, UnitOut
from notifier.channels.http import retry_after
from notifier.client.errors import ApiError, TransportError, api_error
from notifier.client.sse import EventParser

M = TypeVar("M", bound=BaseModel)

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class Retry:
    """How transient failures are retried: ``attempts`` tries in all, waiting ``Retry-After`` (or
    an exponential backoff from ``base`` with jitter), never longer than ``cap`` at a time."""

    attempts: int = 4
    base: float = 0.25
    cap: float = 10.0

    def backoff(self, attempt: int) -> float:
        return float(min(self.cap, self.base * 2.0 ** (attempt - 1) * (0.5 + random.random() / 2)))  # noqa: S311


@dataclass(frozen=True, slots=True)
class Update:
    """One event of a notice's live stream: its version (what ``Last-Event-ID`` resumes from)."""

    version: int
    data: StreamEvent


class Client:
    """``async with Client("http://127.0.0.1:8080", token) as api: ...``"""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        session: aiohttp.ClientSession | None = None,
        retry: Retry | None = None,
        timeout: float = 30.0,
        stream_idle_timeout: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or Retry()
        self._headers = {"Authorization": f"Bearer {token}"}
        self._own_session = session is None
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        # A stream has no end; a connection silent this long (heartbeats stopped) is dead: reconnect.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_read=stream_idle_timeout)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    # -- the organisation ------------------------------------------------------------------
    async def put_unit(self, unit_id: str, unit: UnitIn) -> UnitOut:
        return await self._json(UnitOut, "PUT", f"/v1/units/{unit_id}", body=unit)

    async def get_unit(self, unit_id: str) -> UnitOut:
        return await self._json(UnitOut, "GET", f"/v1/units/{unit_id}")

    async def list_units(self, *, limit: int | None = None, cursor: str | None = None) -> UnitList:
        return await self._json(UnitList, "GET", "/v1/units", params={"limit": limit, "cursor": cursor})

    async def put_member(self, member_id: str, member: MemberIn) -> MemberOut:
        return await self._json(MemberOut, "PUT", f"/v1/members/{member_id}", body=member)

    async def get_member(self, member_id: str) -> MemberOut:
        return await self._json(MemberOut, "GET", f"/v1/members/{member_id}")

    async def put_members(self, members: list[MemberBatchItem]) -> MemberBatchOut:
        """Create or replace many members at once (POST /v1/members:batch; repeating it is harmless)."""
        body = MemberBatchIn(members=members)
        return await self._json(MemberBatchOut, "POST", "/v1/members:batch", body=body)

    async def add_contact(self, member_id: str, contact: ContactIn) -> ContactOut:
        return await self._json(
            ContactOut, "POST", f"/v1/members/{member_id}/contacts", body=contact, idempotent=False
        )

    async def list_contacts(self, member_id: str) -> ContactList:
        return await self._json(ContactList, "GET", f"/v1/members/{member_id}/contacts")

    async def delete_contact(self, member_id: str, contact_id: str) -> None:
        await self._call("DELETE", f"/v1/members/{member_id}/contacts/{contact_id}")

    # -- notices ---------------------------------------------------------------------------
    async def send(self, notice: NoticeIn, *, idempotency_key: str | None = None) -> NoticeOut:
        """Enqueue a notice. A retry (or a second call with the same key) sends it once."""
        key = idempotency_key or str(uuid.uuid4())
        return await self._json(
            NoticeOut, "POST", "/v1/notices", body=notice, headers={IDEMPOTENCY_HEADER: key}
        )

    async def get_notice(self, notice_id: str, *, unit: str | None = None) -> NoticeOut:
        return await self._json(NoticeOut, "GET", f"/v1/notices/{notice_id}", params={"unit": unit})

    async def list_notices(
        self,
        *,
        unit: str | None = None,
        kind: str | None = None,
        state: str | None = None,
        q: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> NoticeListPage:
        params = {"unit": unit, "kind": kind, "state": state, "q": q, "limit": limit, "cursor": cursor}
        return await self._json(NoticeListPage, "GET", "/v1/notices", params=params)

    async def notice_units(self, notice_id: str, *, parent: str | None = None) -> Rollup:
        return await self._json(Rollup, "GET", f"/v1/notices/{notice_id}/units", params={"parent": parent})

    async def read(self, notice_id: str, member_id: str | None = None) -> ReceiptOut:
        """Record a read receipt (a member key: its own; otherwise ``member_id``'s). Idempotent."""
        body = {"type": "read", **({"member_id": member_id} if member_id is not None else {})}
        return await self._json(ReceiptOut, "POST", f"/v1/notices/{notice_id}/receipts", body=body)

    async def status(self, notice_id: str, *, unit: str | None = None) -> StreamEvent:
        """The notice's counts and per-unit roll-up now: what its live stream would send first."""
        return await self._json(
            StreamEvent,
            "GET",
            f"/v1/notices/{notice_id}/stream",
            params={"unit": unit},
            headers={"Accept": "application/json"},
        )

    async def roll_call(
        self, notice_id: str, *, unit: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> RollCallPage:
        params = {"unit": unit, "limit": limit, "cursor": cursor}
        return await self._json(RollCallPage, "GET", f"/v1/notices/{notice_id}/roll-call", params=params)

    async def roll_call_csv(self, notice_id: str, *, unit: str | None = None) -> str:
        """The whole roll-call as CSV text (UTF-8; the byte-order mark the API adds is kept)."""
        data = await self._call(
            "GET", f"/v1/notices/{notice_id}/roll-call", params={"unit": unit}, headers={"Accept": "text/csv"}
        )
        return data.decode("utf-8")

    async def stream(
        self, notice_id: str, *, unit: str | None = None, last_event_id: int | None = None
    ) -> AsyncGenerator[Update, None]:
        """The notice's live counts, one ``Update`` per change, the current state first; endless
        (``break`` or ``aclose()`` to stop). A stream the server ends (it does every
        ``stream_max_seconds``) or a dropped connection is resumed with Last-Event-ID, so nothing is
        sent twice; it gives up with ``TransportError`` after ``retry.attempts`` failed connects in a row."""
        failures = 0
        url = f"{self.base_url}/v1/notices/{notice_id}/stream"
        params = _params({"unit": unit})
        while True:
            headers = {**self._headers, "Accept": "text/event-stream"}
            if last_event_id is not None:
                headers["Last-Event-ID"] = str(last_event_id)
            try:
                async with self.session.get(
                    url, params=params, headers=headers, timeout=self._stream_timeout
                ) as resp:
                    if resp.status >= 400:
                        error = await _error(resp)
                        if resp.status not in RETRY_STATUSES:
                            raise error
                        failures += 1
                        if failures >= self.retry.attempts:
                            raise error
                        await asyncio.sleep(self._wait(failures, error.retry_after))
                        continue
                    failures = 0  # open: a later end (a server's periodic one, a restart) starts afresh
                    parser = EventParser()
                    async for raw in resp.content:
                        ev = parser.feed(raw.decode("utf-8").rstrip("\r\n"))
                        if ev is None or ev.event != "counts" or ev.id is None:
                            continue
                        last_event_id = int(ev.id)
                        yield Update(last_event_id, StreamEvent.model_validate_json(ev.data))
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures += 1
                if failures >= self.retry.attempts:
                    raise TransportError(f"stream of notice {notice_id}: {exc!r}") from exc
            await asyncio.sleep(self._wait(max(1, failures), None))  # then resume from last_event_id

    # -- plumbing --------------------------------------------------------------------------
    def _wait(self, attempt: int, retry_after: float | None) -> float:
        return min(self.retry.cap, retry_after) if retry_after is not None else self.retry.backoff(attempt)

    async def _json(
        self,
        model: type[M],
        method: str,
        path: str,
        *,
        body: BaseModel | Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = True,
    ) -> M:
        data = await self._call(
            method, path, body=body, params=params, headers=headers, idempotent=idempotent
        )
        return model.model_validate_json(data)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = True,
    ) -> bytes:
        payload = body.model_dump(mode="json", exclude_unset=True) if isinstance(body, BaseModel) else body
        data = None if payload is None else json.dumps(payload, ensure_ascii=False).encode()
        sent_headers = {**self._headers, **(headers or {})}
        if data is not None:
            sent_headers["Content-Type"] = "application/json"
        url = self.base_url + path
        query = _params(params or {})
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self.session.request(
                    method, url, data=data, params=query, headers=sent_headers, timeout=self._timeout
                ) as resp:
                    if resp.status < 400:
                        return await resp.read()
                    error = await _error(resp)
            except aiohttp.ClientConnectorError as exc:  # never reached the server: always safe again
                if attempt >= self.retry.attempts:
                    raise TransportError(f"{method} {path}: {exc}") from exc
                await asyncio.sleep(self._wait(attempt, None))
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                if not idempotent or attempt >= self.retry.attempts:
                    raise TransportError(f"{method} {path}: {exc!r}") from exc
                await asyncio.sleep(self._wait(attempt, None))
                continue
            if not _transient(error) or attempt >= self.retry.attempts:
                raise error
            await asyncio.sleep(self._wait(attempt, error.retry_after))


def _transient(error: ApiError) -> bool:
    """429, 503, and a 409 saying a request with the same Idempotency-Key is still in flight (the
    first of two concurrent sends: once it is done, the retry replays its answer)."""
    if error.status in RETRY_STATUSES:
        return True
    return error.status == 409 and str(error.problem.get("type", "")).endswith("/idempotency-in-flight")


def _params(params: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in params.items() if v is not None}


async def _error(resp: aiohttp.ClientResponse) -> ApiError:
    text = await resp.text(errors="replace")
    try:
        problem = json.loads(text)
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"title": resp.reason or f"HTTP {resp.status}", "status": resp.status, "detail": text[:500]}
    return api_error(resp.status, problem, retry_after(resp.headers.get("Retry-After"), time.time()))
