"""The OpenAPI document matches the app: every route documented, every operation mounted."""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator
from starlette.routing import BaseRoute, Route

from api.http.app import routes
from api.http.openapi import PATHS, SCHEMAS, document, for_deployment, mounted
from api.http.routes import ledger, queue
from ledger.commands import CURRENCY_PATTERN, TRANSACTION_ID_PATTERN, USER_ID_PATTERN

from .conftest import MakeClient, auth


def path_of(route: BaseRoute) -> str:
    assert isinstance(route, Route), route  # the queue's and ledger's routes are plain Routes
    return route.path


OWN = {path_of(r) for r in [*queue.routes(), *ledger.routes()]} | {"/openapi.json"}


def inline(schema: Any, doc: dict[str, Any]) -> Any:
    """``schema`` with every local ``$ref`` replaced by its target (no recursion in ours)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[1]
            return inline(doc["components"]["schemas"][name], doc)
        return {k: inline(v, doc) for k, v in schema.items()}
    if isinstance(schema, list):
        return [inline(v, doc) for v in schema]
    return schema


def test_served_document_is_the_apps(make_client: MakeClient) -> None:
    client = make_client()
    served = client.get("/openapi.json")
    assert served.status_code == 200 and served.json()["openapi"] == "3.1.0"
    routes_ = client.app.routes  # type: ignore[attr-defined]
    queues = ["default", "high_priority", "low_priority"]
    assert served.json() == for_deployment(document(routes_), queues, 604800)


def test_every_route_is_documented_and_every_operation_mounted() -> None:
    app_routes = mounted(routes())
    doc = document(routes())
    for path, methods in app_routes.items():
        assert path in doc["paths"], f"{path} is not documented"
        assert set(doc["paths"][path]) == methods, path
    for path, ops in doc["paths"].items():
        assert set(ops) <= app_routes.get(path, set()), f"{path} is documented, not mounted"
    # our own routes are all in the static table, so none can silently drop out of it
    assert set(PATHS) >= OWN and set(doc["paths"]) >= OWN


def test_schemas_are_valid_json_schema_and_refs_resolve() -> None:
    doc = document(routes())
    for schema in SCHEMAS.values():
        Draft202012Validator.check_schema(inline(schema, doc))
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (path, method)
            for response in op["responses"].values():
                for media in response.get("content", {}).values():
                    if "schema" in media:
                        Draft202012Validator.check_schema(inline(media["schema"], doc))
            for param in op.get("parameters", []):
                if param["in"] == "path":
                    assert f"{{{param['name']}}}" in path and param["required"]
            if op.get("x-role"):
                assert op["security"] == [{"bearer": []}]
                assert {"401", "403", "429", "503"} <= set(op["responses"])
            if "requestBody" in op:
                assert {"400", "413", "415", "422"} <= set(op["responses"])


def test_limits_come_from_the_validators() -> None:
    props = SCHEMAS["Purchase"]["properties"]
    assert props["transaction_id"]["pattern"] == TRANSACTION_ID_PATTERN
    assert props["currency"]["pattern"] == CURRENCY_PATTERN
    assert SCHEMAS["RegisterUser"]["properties"]["user_id"]["pattern"] == USER_ID_PATTERN
    assert {k: v for k, v in props["amount"].items() if k != "description"} == {
        "type": "integer",
        "minimum": 1,
        "maximum": 2**53 - 1,
    }
    assert "26.0" in props["amount"]["description"]  # whole numbers are JSON integers
    for name in ("RegisterUser", "Purchase", "Use", "Adjust", "Enqueue", "BatchRequest"):
        assert SCHEMAS[name]["additionalProperties"] is False, name
    assert re.fullmatch(SCHEMAS["Adjust"]["properties"]["reason"]["pattern"], "fee")
    assert not re.fullmatch(SCHEMAS["Adjust"]["properties"]["reason"]["pattern"], "  ")


def test_documented_bodies_are_accepted(make_client: MakeClient) -> None:
    """A body the document calls valid is not refused as invalid (422) by the server."""
    client = make_client(api_keys={})
    doc = document(routes())
    samples = {
        "/api/users": {"user_id": "doc-1", "email": "doc@example.com"},
        "/api/accounts/doc-1/purchases": {"amount": 10, "transaction_id": "t-1", "currency": "EUR"},
        "/api/accounts/doc-1/usage": {"amount": 3, "reason": "x"},
        "/api/accounts/doc-1/adjustments": {"delta": -2, "reason": "fee"},
    }
    for path, body in samples.items():
        template = next(
            p for p in doc["paths"] if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", p), path)
        )
        schema = inline(
            doc["paths"][template]["post"]["requestBody"]["content"]["application/json"]["schema"],
            doc,
        )
        Draft202012Validator(schema).validate(body)
        r = client.post(path, json=body)
        assert r.status_code == 201, (path, r.text)
        response_schema = inline(
            doc["paths"][template]["post"]["responses"]["201"]["content"]["application/json"][
                "schema"
            ],
            doc,
        )
        Draft202012Validator(response_schema).validate(r.json())


def test_the_served_document_is_this_deployments(make_client: MakeClient) -> None:
    """Queue names are the configured ones, the longest hold is the configured one,
    and with no API keys no operation asks for a bearer key (every caller is admin)."""
    keyed = make_client().get("/openapi.json").json()
    enqueue = keyed["components"]["schemas"]["Enqueue"]["properties"]["queue_name"]
    assert enqueue["enum"] == ["default", "high_priority", "low_priority"]
    hold = keyed["components"]["schemas"]["Hold"]["properties"]["expires_in_s"]
    assert hold["maximum"] == 604800
    assert "x-deployment" not in json.dumps(keyed)
    assert keyed["paths"]["/api/users"]["post"]["security"] == [{"bearer": []}]
    open_doc = make_client(api_keys={}).get("/openapi.json").json()
    users = open_doc["paths"]["/api/users"]["post"]
    assert users["security"] == [] and not {"401", "403"} & set(users["responses"])


def test_text_patterns_use_the_servers_whitespace_not_ecma_s() -> None:
    """The server strips and refuses what Python's ``str.isspace`` calls whitespace:
    the schema's class is that set exactly (ECMA-262's ``\\s`` is not)."""
    from api.http.openapi import SPACE

    space = re.compile(f"[{SPACE}]")
    for code in range(0x110000):
        c = chr(code)
        assert bool(space.fullmatch(c)) == c.isspace(), hex(code)


def test_a_405_lists_every_method_of_the_path(make_client: MakeClient) -> None:
    client = make_client()
    r = client.request("PATCH", "/api/schedules/nightly", headers=auth("admin"))
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    assert r.headers["allow"] == "DELETE, GET, HEAD, PUT"
    r = client.request("DELETE", "/api/accounts/alice/holds", headers=auth("admin"))
    assert r.headers["allow"] == "GET, HEAD, POST"
