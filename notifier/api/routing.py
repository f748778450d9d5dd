"""A small router that validates requests with pydantic and documents them in OpenAPI 3.1.

Each operation declares its body, query and response models once; the same models validate the
request and generate ``/openapi.json``, so the document cannot drift from the code.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from notifier.api.problems import Problem, from_validation_error, invalid

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
    problems: dict[int, str] = field(default_factory=dict)  # further documented problem statuses
    media: dict[str, dict[str, Any]] = field(default_factory=dict)  # other success media types: schema


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
        problems: dict[int, str] | None = None,
        media: dict[str, dict[str, Any]] | None = None,
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
                    problems or {},
                    media or {},
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


def _too_deep(data: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    stack: list[tuple[int, Any]] = [(1, data)]
    while stack:
        depth, value = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack.extend((depth + 1, v) for v in value.values())
        elif isinstance(value, list):
            stack.extend((depth + 1, v) for v in value)
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


def parse_json(raw: bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no numbers that overflow to infinity."""
    return json.loads(raw, parse_constant=_no_constant, parse_float=_finite)


def _reject_nul(data: Any, prefix: str = "") -> None:
    where = _nul_field(data, prefix)
    if where is not None:
        raise invalid(where, "must not contain NUL characters")


def _wrap(op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        _reject_nul(dict(request.match_info))
        body = None
        if op.body is not None:
            raw = await request.read()
            try:
                data = parse_json(raw) if raw else None
            except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser allows
                raise _malformed("request body is not valid JSON") from None
            if not isinstance(data, dict):
                raise _malformed("request body must be a JSON object")
            if _too_deep(data):
                raise _malformed(f"request body nests deeper than {MAX_JSON_DEPTH} levels")
            _reject_nul(data)
            try:
                body = op.body.model_validate(data)
            except ValidationError as exc:
                raise from_validation_error(exc) from None
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
                raise from_validation_error(exc, prefix="query") from None
        return await op.handler(request, Call(body, query))

    return handler


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
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                "required": ["field", "message"],
            },
        },
    },
    "required": ["type", "title", "status"],
}


def openapi_document(operations: list[Operation], version: str) -> dict[str, Any]:
    models = {m for op in operations for m in (op.body, op.response) if m is not None}
    ordered = sorted(models, key=lambda m: m.__name__)
    _, top = models_json_schema(
        [(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    paths: dict[str, Any] = {}
    for op in operations:
        item: dict[str, Any] = {
            "summary": op.summary,
            "operationId": op.handler.__name__,
            "tags": [op.tag],
            "responses": {},
        }
        params = [
            {"name": seg[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for seg in op.path.split("/")
            if seg.startswith("{") and seg.endswith("}")
        ]
        if op.query is not None:
            params += _query_parameters(op.query, schemas)
        params += [
            {"name": h, "in": "header", "required": False, "schema": {"type": "string"}, "description": d}
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
        ok: dict[str, Any] = {"description": "success"}
        if op.response is not None:
            ok["content"] = {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{op.response.__name__}"}}
            }
        for media, schema in op.media.items():
            ok.setdefault("content", {})[media] = {"schema": schema}
        item["responses"][str(op.status)] = ok
        problem = {
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        }
        if op.auth:
            item["responses"]["401"] = {"description": "missing or unknown token", **problem}
            item["responses"]["404"] = {"description": "not found, or outside the caller's units", **problem}
        for code, description in op.problems.items():
            item["responses"][str(code)] = {"description": description, **problem}
        if op.body is not None or op.query is not None:
            item["responses"]["422"] = {"description": "invalid input; errors name each bad field", **problem}
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
