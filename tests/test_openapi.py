"""The OpenAPI document is generated from the models that validate requests; the committed copy
in schemas/openapi.json must match it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from notifier.app import all_operations, build_openapi

COMMITTED = Path(__file__).resolve().parents[1] / "schemas" / "openapi.json"


def test_committed_openapi_matches_the_code() -> None:
    assert json.loads(COMMITTED.read_text()) == build_openapi(), (
        "schemas/openapi.json is stale: run `make openapi` and commit it"
    )


def test_every_route_is_documented_with_its_models() -> None:
    doc = build_openapi()
    assert doc["openapi"] == "3.1.0"
    for op in all_operations():
        item = doc["paths"][op.path][op.method.lower()]
        if op.body is not None:
            ref = item["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
            assert schema.get("additionalProperties") is False, (
                f"{op.path}: request body must reject unknown fields"
            )
        for ref in _refs(item):
            assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], ref


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


async def test_served_document_needs_no_auth(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert await resp.json() == build_openapi()
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {"postgres": "ok", "redis": "ok"}
