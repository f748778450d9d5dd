"""The OpenAPI document is generated from the models that validate requests; the committed copy
in schemas/openapi.json must match it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from aiohttp.test_utils import TestClient
from pydantic import TypeAdapter, ValidationError

from notifier.api.problems import Problem
from notifier.api.types import Id, check_path_id
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


# Characters on which "\s" differs between Python's re, pydantic's Rust regex and the ECMA regex
# JSON Schema validators use, and the control characters PostgreSQL text or logs choke on.
_EDGE_CHARACTERS = [
    "\x85",
    "\x1c",
    "\x1f",
    "\ufeff",
    "\xa0",
    "\u2028",
    "\u3000",
    "\x7f",
    "\x00",
    " ",
    "\t",
    "/",
]


@pytest.mark.parametrize("char", _EDGE_CHARACTERS, ids=[f"U+{ord(c):04X}" for c in _EDGE_CHARACTERS])
def test_an_id_the_document_allows_is_one_the_server_takes(char: str) -> None:
    """The fuzzer found ids the document allowed ("a\\x85b") that the server refused: every engine
    must read the id pattern alike, in the path (check_path_id) and in bodies (pydantic)."""
    schema = build_openapi()["paths"]["/v1/units/{unit_id}"]["put"]["parameters"][0]["schema"]
    value = f"a{char}b"
    documented = jsonschema_rs.is_valid(schema, value)
    try:
        TypeAdapter(Id).validate_python(value)
        in_body = True
    except ValidationError:
        in_body = False
    try:
        check_path_id(value, "unit_id")
        in_path = True
    except Problem:
        in_path = False
    assert documented == in_body == in_path, (documented, in_body, in_path)
    assert not documented, "whitespace, control characters and '/' are not id characters"


def test_links_lead_to_operations_and_their_parameters() -> None:
    doc = build_openapi()
    operations = {
        item["operationId"]: (path, item)
        for path, methods in doc["paths"].items()
        for item in methods.values()
    }
    linked = 0
    for path, item in operations.values():
        for status, reply in item["responses"].items():
            assert "links" not in reply or status.startswith("2"), (path, status)
            for name, link in reply.get("links", {}).items():
                linked += 1
                target_path, target = operations[link["operationId"]]
                names = {p["name"] for p in target.get("parameters", [])}
                for param, expression in link.get("parameters", {}).items():
                    assert param in names, (path, name, param)
                    if expression.startswith("$request.path."):
                        assert "{" + expression.removeprefix("$request.path.") + "}" in path, (
                            path,
                            expression,
                        )
                    else:
                        assert expression.startswith("$response.body#/"), expression
                if "requestBody" in link:
                    assert "requestBody" in target, (path, name)
    assert linked >= 20
    notice = operations["create_notice"][1]["responses"]["202"]["links"]
    assert notice["get_notice"] == {
        "operationId": "get_notice",
        "parameters": {"notice_id": "$response.body#/id"},
    }


def test_every_path_parameter_is_constrained() -> None:
    doc = build_openapi()
    for path, methods in doc["paths"].items():
        for item in methods.values():
            for param in item.get("parameters", []):
                if param["in"] == "path":
                    schema = param["schema"]
                    assert "pattern" in schema or "format" in schema, (path, param["name"])
