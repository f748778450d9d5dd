"""A small router that validates requests with pydantic and documents them in OpenAPI 3.1.

Each operation declares its body, query and response models once; the same models validate the
request and generate ``/openapi.json``, so the document cannot drift from the code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.json_schema import models_json_schema

from notifier.api.keys import SETTINGS
from notifier.api.problems import PROBLEM_TYPE, Problem, from_validation_error, invalid
from notifier.api.types import ID_PATTERN

M = TypeVar("M", bound=BaseModel)


@dataclass(slots=True)
class Call:
    """What a handler receives besides the request: the validated body and query."""

    body: BaseModel | None
    query: BaseModel | None

    def body_as(self, model: type[M]) -> M:
        assert isinstance(self.body, model)
        return self.body

    def query_as(self, model: type[M]) -> M:
        assert isinstance(self.query, model)
        return self.query


Handler = Callable[[web.Request, Call], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Reply:
    """A documented response besides the operation's own success: ``media`` is its content type
    (a problem+json body unless said otherwise; None: a body this API does not describe, such as a
    provider's own callback protocol)."""

    description: str
    media: str | None = PROBLEM_TYPE


@dataclass(frozen=True, slots=True)
class Link:
    """An OpenAPI link from a success response: the target's parameters as runtime expressions
    (``$response.body#/id``, ``$request.path.unit_id``) and, optionally, fields of its request body
    (merged into a body the caller writes)."""

    parameters: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None


@dataclass(slots=True)
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    auth: bool = True
    headers: dict[str, str] = field(default_factory=dict)  # documented request headers
    # Statuses this operation answers besides the ones every operation of its shape does (see
    # ``_generic_replies``); a plain string is the description of a problem+json reply.
    responses: dict[int, str | Reply] = field(default_factory=dict)
    # OpenAPI links from the success response, by target operationId; a plain dict is the
    # target's parameters.
    links: dict[str, dict[str, str] | Link] = field(default_factory=dict)
    media: str | None = "application/json"  # the success body's content type
    db: bool = True  # reads PostgreSQL, so it can answer 503 while the database is unreachable
    # Other media types the success body comes in (chosen with Accept), each with its schema.
    alternatives: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Media types of a raw request body the handler reads itself (a photo), documented as binary.
    raw_body: tuple[str, ...] = ()

    @property
    def path_parameters(self) -> list[str]:
        return [seg[1:-1] for seg in self.path.split("/") if seg.startswith("{") and seg.endswith("}")]


class Router:
    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        tag: str,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        auth: bool = True,
        headers: dict[str, str] | None = None,
        responses: dict[int, str | Reply] | None = None,
        links: dict[str, dict[str, str] | Link] | None = None,
        media: str | None = "application/json",
        db: bool = True,
        alternatives: dict[str, dict[str, Any]] | None = None,
        raw_body: tuple[str, ...] = (),
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.operations.append(
                Operation(
                    method,
                    path,
                    handler,
                    summary,
                    tag,
                    body,
                    query,
                    response,
                    status,
                    auth,
                    headers or {},
                    responses or {},
                    links or {},
                    media,
                    db,
                    alternatives or {},
                    raw_body,
                )
            )
            return handler

        return register

    def install(self, app: web.Application) -> None:
        for op in self.operations:
            app.router.add_route(op.method, op.path, _wrap(op))


def _nul_field(data: Any, prefix: str = "") -> str | None:
    """The path of the first string (key or value) holding NUL, which PostgreSQL text cannot store.

    Iterative, so a deeply nested contact target cannot exhaust the stack."""
    stack: list[tuple[str, Any]] = [(prefix, data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str) and "\x00" in value:
            return path or "body"
        if isinstance(value, dict):
            for k in reversed(list(value)):
                sub = f"{path}.{k}" if path else str(k)
                if "\x00" in k:
                    return sub
                stack.append((sub, value[k]))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


MAX_JSON_DEPTH = 32
# A body longer than this (a receipts batch of ~1,000 items) is parsed and checked with a turn of
# the event loop between the two: each takes milliseconds, and a status read should not wait for both.
YIELD_AFTER_BYTES = 64 * 1024
# The list a body model names as its ``SLICED`` field (a receipts batch: up to 10,000 items, ~4 us
# each) is validated this many items at a time, with a turn of the event loop before each slice: in
# one call, 2,000 items held the loop ~8 ms (more when the process lost its core meanwhile), and
# every status read that arrived waited for all of it (benchmarks/scale.py target 6).
SLICE_ITEMS = 250


def _too_deep(data: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a value nests deeper than ``limit`` (the body is depth 1, a member of it 2, ...).

    Level by level over the containers only: a scalar is never walked, and a container's members
    are only looked at for whether they are containers (a batch of 10,000 receipts is 40,000
    values, three quarters of them strings, on the event loop)."""
    level = [data] if isinstance(data, (dict, list)) else []
    depth = 1
    while level:
        if depth >= limit and any(level):  # a non-empty container here has members one deeper
            return True
        level = [
            v
            for c in level
            for v in (c.values() if isinstance(c, dict) else c)
            if isinstance(v, (dict, list))
        ]
        depth += 1
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


# Built once: ``json.loads`` with hooks builds a decoder (and its scanner) on every call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def parse_json(raw: bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no numbers that overflow to infinity. The bytes are decoded
    as ``json.loads`` decodes them (UTF-8, -16 or -32, a BOM allowed)."""
    return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))


def may_hold_nul(raw: bytes) -> bool:
    """Whether JSON text parsed from ``raw`` may hold a NUL character. JSON writes one in a string
    only as the escape ``\\u0000`` (a raw control character in a string, or a NUL byte outside
    one, is not JSON); a NUL byte may also be part of a UTF-16 or UTF-32 text, which the parser
    accepts. Without either, the walk naming the field (``_reject_nul``) is not needed."""
    return b"\\u0000" in raw or b"\x00" in raw


def _reject_nul(data: Any, prefix: str = "") -> None:
    where = _nul_field(data, prefix)
    if where is not None:
        raise invalid(where, "must not contain NUL characters")


@contextlib.asynccontextmanager
async def body_deadline(request: web.Request) -> AsyncIterator[None]:
    """Reading a request body inside this block takes at most ``http_body_timeout_seconds``: a client
    trickling its body is answered 408 and the connection closed, not waited on for ever."""
    timeout = request.app[SETTINGS].http_body_timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise Problem(
            408,
            "Request Timeout",
            f"the request body did not arrive within {timeout:g} seconds",
            headers={"Connection": "close"},
        ) from None


def _wrap(op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        _reject_nul(dict(request.match_info))
        body = None
        if op.body is not None:
            if request.content.is_eof():  # the whole body is here: reading it cannot wait
                raw = await request.read()
            else:
                async with body_deadline(request):
                    raw = await request.read()
            try:
                data = parse_json(raw) if raw else None
            except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser allows
                raise _malformed("request body is not valid JSON") from None
            if not isinstance(data, dict):
                raise _malformed("request body must be a JSON object")
            if len(raw) > YIELD_AFTER_BYTES:
                await asyncio.sleep(0)  # a long body: other requests' turn between parsing and checking
            if _too_deep(data):
                raise _malformed(f"request body nests deeper than {MAX_JSON_DEPTH} levels")
            if may_hold_nul(raw):
                _reject_nul(data)
            try:
                body = await validate_body(op.body, data)
            except ValidationError as exc:
                raise from_validation_error(exc, data=data) from None
            data = None  # not held (nor walked by the collector) while the handler runs
        query = None
        if op.query is not None:
            params: dict[str, Any] = {}
            for key in request.query:
                values = request.query.getall(key)
                params[key] = values[0] if len(values) == 1 else values
            _reject_nul(params, "query")
            try:
                query = op.query.model_validate(params)
            except ValidationError as exc:
                raise from_validation_error(exc, prefix="query", data=params) from None
        return await op.handler(request, Call(body, query))

    return handler


@functools.cache
def _max_length(model: type[BaseModel], name: str) -> float:
    """The most items ``model``'s list field ``name`` takes (its ``max_length``; none: no limit)."""
    limits = [m.max_length for m in model.model_fields[name].metadata if getattr(m, "max_length", None)]
    return min(limits, default=float("inf"))


@functools.cache
def _list_adapter(model: type[BaseModel], name: str) -> TypeAdapter[list[Any]]:
    """A validator of the items of ``model``'s list field ``name`` (without the field's own bounds)."""
    annotation: Any = model.model_fields[name].annotation  # list[Item]
    return TypeAdapter(annotation)


async def validate_body(model: type[M], data: dict[str, Any]) -> M:
    """``model.model_validate(data)``, with a turn of the event loop every ``SLICE_ITEMS`` items of
    the list ``model.SLICED`` names (when it names one). It accepts and refuses exactly what the one
    call does: the items are validated as that call validates them and the model is then built from
    them (instances pass as they are); a body refused anywhere is validated again in one call, whose
    errors (every bad field, in order) are the answer. That second call holds the loop as every
    body's one call did before the slicing: a refused batch costs what it always cost. A list
    longer than the field allows goes to the one call at once (it stops at the limit)."""
    name: str | None = getattr(model, "SLICED", None)
    items = data.get(name) if name is not None else None
    if name is None or not isinstance(items, list) or len(items) <= SLICE_ITEMS:
        return model.model_validate(data)
    if len(items) > _max_length(model, name):
        return model.model_validate(data)
    adapter = _list_adapter(model, name)
    done: list[Any] = []
    try:
        for start in range(0, len(items), SLICE_ITEMS):
            await asyncio.sleep(0)  # other requests' turn before each slice
            done += adapter.validate_python(items[start : start + SLICE_ITEMS])
        return model.model_validate({**data, name: done})
    except ValidationError:
        return model.model_validate(data)  # refused: raises what the one call raises


def _malformed(detail: str) -> Problem:
    return Problem(
        400, "Bad Request", detail, type_="malformed", errors=[{"field": "body", "message": detail}]
    )


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _query_parameters(model: type[BaseModel], defs: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs.update(schema.pop("$defs", {}))
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
            **({"description": prop["description"]} if "description" in prop else {}),
        }
        for name, prop in schema.get("properties", {}).items()
    ]


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "properties": {
        "type": {"type": "string", "description": "a URI naming the kind of problem, or about:blank"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "one per bad field, named as the caller wrote it: escalation.steps[0].remind",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                "required": ["field", "message"],
            },
        },
    },
    "required": ["type", "title", "status"],
}

_ID = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": ID_PATTERN}
_UUID = {"type": "string", "format": "uuid"}
# Every path parameter of the API, by name: one name means one kind of value everywhere.
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "unit_id": _ID,
    "member_id": _ID,
    "policy_id": _UUID,
    "notice_id": _UUID,
    "key_id": _UUID,
    "contact_id": _UUID,
    "quiz_id": _UUID,
    "attempt_id": _UUID,
    "rule_id": _UUID,
    "view_id": _UUID,
    "photo_id": _UUID,
    "checkin_id": {"type": "string", "pattern": r"^[0-9]{1,18}$", "description": "a check-in's id"},
    "date": {"type": "string", "format": "date", "description": "a local date, YYYY-MM-DD"},
    "channel": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[a-z0-9_-]+$"},
    "type_code": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[a-z][a-z0-9_]*$"},
    "token": {
        "type": "string",
        "minLength": 1,
        "maxLength": 1024,
        "pattern": r"^[A-Za-z0-9_.-]+$",
        "description": "a signed read link: base64url payload and signature",
    },
}
# Documented request headers, by name.
HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    # Printable ASCII; no space at either end, which HTTP strips from header values.
    "Idempotency-Key": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": r"^[!-~]([ -~]*[!-~])?$",
    },
}


_SECONDS = {"type": "integer", "minimum": 0}
RATE_LIMIT_HEADERS = {
    "Retry-After": {"description": "seconds until the key may send again", "schema": _SECONDS},
    "RateLimit-Limit": {"description": "requests the key may send at once (its bucket)", "schema": _SECONDS},
    "RateLimit-Remaining": {"description": "requests left in the bucket", "schema": _SECONDS},
    "RateLimit-Reset": {"description": "seconds until the bucket is full again", "schema": _SECONDS},
}


def _generic_replies(op: Operation) -> dict[int, str]:
    """The statuses every operation of this shape can answer, whatever its handler does."""
    replies: dict[int, str] = {}
    if op.body is not None:
        replies[400] = "the body is not a JSON object (malformed, or nested deeper than 32 levels)"
    if op.auth:
        replies[401] = "missing, unknown, or revoked token"
        replies[403] = "this key's role may not do this"
        replies[429] = (
            "this key sent too many requests; retry after Retry-After seconds (RateLimit-* headers)"
        )
    if op.path_parameters:
        replies[404] = "not found, or outside the caller's units"
    if op.body is not None or op.raw_body:
        replies[413] = "the body is larger than this service accepts"
    if op.body is not None or op.query is not None or op.path_parameters:
        replies[422] = "invalid input (no string may hold U+0000); errors name each bad field"
    if op.db:
        replies[503] = "PostgreSQL is unreachable; retry after Retry-After seconds"
    return replies


def _content(media: str | None, schema: dict[str, Any]) -> dict[str, Any]:
    return {} if media is None else {"content": {media: {"schema": schema}}}


def _link(target: str, spec: dict[str, str] | Link) -> dict[str, Any]:
    link = spec if isinstance(spec, Link) else Link(spec)
    out: dict[str, Any] = {"operationId": target}
    if link.parameters:
        out["parameters"] = link.parameters
    if link.body is not None:
        out["requestBody"] = link.body
        out["description"] = "requestBody holds fields to merge into the body you send"
    return out


def _responses(op: Operation) -> dict[str, Any]:
    ok_schema: dict[str, Any] = {"type": "string"}
    if op.response is not None and op.media == "application/json":
        ok_schema = {"$ref": f"#/components/schemas/{op.response.__name__}"}
    links = {target: _link(target, spec) for target, spec in sorted(op.links.items())}
    out: dict[int, dict[str, Any]] = {}
    ok_media = op.media if op.response is not None or op.media != "application/json" else None
    out[op.status] = {"description": "success", **_content(ok_media, ok_schema)}
    for media, schema in op.alternatives.items():
        out[op.status].setdefault("content", {})[media] = {"schema": schema}
    problem = {"$ref": "#/components/schemas/Problem"}
    replies: dict[int, str | Reply] = {**_generic_replies(op), **op.responses}
    for status, reply in replies.items():
        r = reply if isinstance(reply, Reply) else Reply(reply)
        if 200 <= status < 300:
            out[status] = {"description": r.description, **_content(ok_media, ok_schema)}
        else:
            schema = problem if r.media == PROBLEM_TYPE else {"type": "string"}
            out[status] = {"description": r.description, **_content(r.media, schema)}
            if status == 429:
                out[status]["headers"] = RATE_LIMIT_HEADERS
    if links:
        for status, item in out.items():
            if 200 <= status < 300:
                item["links"] = links
    return {str(k): v for k, v in sorted(out.items())}


def openapi_document(operations: list[Operation], version: str) -> dict[str, Any]:
    models = {m for op in operations for m in (op.body, op.response) if m is not None}
    ordered = sorted(models, key=lambda m: m.__name__)
    _, top = models_json_schema(
        [(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    paths: dict[str, Any] = {}
    for op in operations:
        item: dict[str, Any] = {"summary": op.summary, "operationId": op.handler.__name__, "tags": [op.tag]}
        params = [
            {"name": name, "in": "path", "required": True, "schema": PATH_PARAMETERS[name]}
            for name in op.path_parameters
        ]
        if op.query is not None:
            params += _query_parameters(op.query, schemas)
        params += [
            {"name": h, "in": "header", "required": False, "schema": HEADER_SCHEMAS[h], "description": d}
            for h, d in op.headers.items()
        ]
        if params:
            item["parameters"] = params
        if op.body is not None:
            item["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}}
                },
            }
        elif op.raw_body:
            item["requestBody"] = {
                "required": True,
                "content": {
                    media: {"schema": {"type": "string", "format": "binary"}} for media in op.raw_body
                },
            }
        item["responses"] = _responses(op)
        if op.auth:
            item["security"] = [{"bearer": []}]
        paths.setdefault(op.path, {})[op.method.lower()] = item
    schemas["Problem"] = PROBLEM_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "notifier",
            "version": version,
            "description": "Urgent DINGs and daily lessons with delivery and read receipts.",
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
