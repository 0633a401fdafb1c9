"""Requests generated from the OpenAPI document, valid and hostile, against the real app.

For every generated request: no 5xx, the status is one the operation documents,
the JSON body validates against the documented schema for that status, and a
refused request (any 4xx) changes no account in Redis.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
import redis as redis_py
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pymongo.database import Database

from api.http.app import routes
from api.http.openapi import document
from projections.runner import project_until_idle
from streams import keys
from streams.replies import text

from .conftest import KEYS, PARTITIONS, MakeClient
from .test_openapi import OWN, inline

DOC = document(routes())
USERS = ("fz-a", "fz-b", "fz-c")
FUZZED = [
    (path, method, op)
    for path, ops in DOC["paths"].items()
    if path in OWN
    for method, op in ops.items()
]
MAX_FUZZ_WAIT_MS = 100
"""``wait_ms`` is documented up to 5000; the fuzz keeps waits short to stay fast."""

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
HOSTILE_TEXT = st.sampled_from(
    ["", " ", "$where", "a/b", "%00", "\u0000", "x" * 300, "é", "../etc", "a?b=c", "-1", "1e3"]
) | st.text(max_size=30)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid under ``schema``, for the subset of JSON Schema the document uses."""
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}) for k in kind])
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        ints = st.integers(schema.get("minimum"), schema.get("maximum"))
        if "not" in schema:
            ints = ints.filter(lambda n: n != schema["not"]["const"])
        return ints | st.sampled_from(
            [v for v in (schema.get("minimum"), schema.get("maximum")) if v is not None and v != 0]
            or [1]
        )
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False)
    if kind == "string":
        if "pattern" in schema:
            text = st.from_regex(schema["pattern"], fullmatch=True)
        else:
            text = st.text()
        return text.filter(
            lambda t: schema.get("minLength", 0) <= len(t) <= schema.get("maxLength", 10**9)
        )
    if kind == "array":
        return st.lists(
            from_schema(schema.get("items", {})),
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 5), 5),
        )
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in props.items() if k in required},
            optional={k: from_schema(v) for k, v in props.items() if k not in required},
        )
    return JSON_VALUES


def _schema_of(op: dict[str, Any], status: str) -> Any:
    content = op["responses"][status].get("content", {}).get("application/json")
    return None if content is None else inline(content["schema"], DOC)


def _mutate(body: Any, draw: Any) -> Any:
    """A hostile variation of a valid body."""
    if not isinstance(body, dict) or not body:
        return draw(JSON_VALUES)
    body = dict(body)
    name = draw(st.sampled_from(sorted(body)))
    how = draw(st.sampled_from(["retype", "drop", "extra", "float", "operator"]))
    if how == "retype":
        body[name] = draw(JSON_VALUES)
    elif how == "drop":
        del body[name]
    elif how == "extra":
        body[draw(st.text(min_size=1, max_size=10))] = draw(JSON_VALUES)
    elif how == "float":
        body[name] = float(body[name]) if isinstance(body[name], int) else 1.5
    else:
        body[name] = {"$gt": 0}
    return body


@st.composite
def requests(draw: Any) -> tuple[str, str, str, dict[str, Any], dict[str, str], bytes | None]:
    """(documented path, method, url, query, headers, body) of one generated request."""
    path, method, op = draw(st.sampled_from(FUZZED))
    url = path
    query: dict[str, Any] = {}
    for param in op.get("parameters", []):
        schema = param["schema"]
        if param["name"] == "user_id":
            value = draw(st.sampled_from([*USERS, "pattern", "hostile"]))
            if value == "pattern":
                value = draw(st.from_regex(schema["pattern"], fullmatch=True))
            elif value == "hostile":
                value = draw(HOSTILE_TEXT)
        elif param["name"] == "wait_ms":
            value = draw(st.integers(0, MAX_FUZZ_WAIT_MS))
        elif param["in"] == "header":
            value = draw(st.none() | st.from_regex(schema["pattern"]) | HOSTILE_TEXT)
        else:
            value = draw(st.none() | from_schema(schema) | HOSTILE_TEXT)
        if value is None:
            continue
        if param["in"] == "path":
            url = url.replace(f"{{{param['name']}}}", quote(str(value), safe=""))
        elif param["in"] == "query":
            query[param["name"]] = value
        else:
            query.setdefault("__headers__", {})[param["name"]] = value
    headers: dict[str, str] = {}
    extra = query.pop("__headers__", {})
    for name, value in extra.items():
        if isinstance(value, str) and value.isascii() and value.isprintable():
            headers[name] = value
    role = draw(st.sampled_from(["admin"] * 5 + ["producer"] * 2 + ["reader", None, "garbage"]))
    if role == "garbage":
        headers["Authorization"] = "Bearer not-a-key-0123456789"
    elif role is not None:
        key = next(k for k, r in KEYS.items() if r == role)
        headers["Authorization"] = f"Bearer {key}"
    content: bytes | None = None
    if "requestBody" in op:
        schema = inline(op["requestBody"]["content"]["application/json"]["schema"], DOC)
        body = draw(from_schema(schema))
        if isinstance(body, dict) and "user_id" in body and draw(st.booleans()):
            body["user_id"] = draw(st.sampled_from(USERS))
        if isinstance(body, dict) and "queue_name" in body and draw(st.booleans()):
            body["queue_name"] = draw(st.sampled_from(["default", "high_priority"]))
        shape = draw(st.sampled_from(["valid"] * 5 + ["mutated"] * 3 + ["raw", "wrong-type"]))
        if shape == "mutated":
            body = _mutate(body, draw)
        if shape == "raw":
            content = draw(
                st.binary(max_size=60)
                | st.sampled_from([b"{", b'{"a":NaN}', b"[" * 40 + b"]" * 40, b'{"a":1,"a":2}'])
            )
        else:
            content = json.dumps(body).encode()
        headers["Content-Type"] = "text/plain" if shape == "wrong-type" else "application/json"
    params = {k: str(v) for k, v in query.items()}
    return path, method.upper(), url, params, headers, content


def accounts(redis: redis_py.Redis, users: set[str]) -> dict[str, Any]:
    """Every account's state, and the length of every priority stream (events and tasks)."""
    state: dict[str, Any] = {
        u: redis.hgetall(keys.account(keys.partition_of(u, PARTITIONS), u)) for u in users
    }
    state["streams"] = [
        redis.xlen(keys.stream(p, level))
        for p in keys.partitions(PARTITIONS)
        for level in keys.LEVELS_DESC
    ]
    return state


@pytest.mark.slow  # 250 generated requests
@settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_generated_requests(
    make_client: MakeClient, redis: redis_py.Redis, mongo_db: Database[Any], data: st.DataObject
) -> None:
    client = _client(make_client, redis, mongo_db)
    template, method, url, params, headers, content = data.draw(requests())
    known = set(USERS) | {text(k).split(":acct:", 1)[1] for k in redis.keys("*:acct:*")}
    before = accounts(redis, known)
    r = client.request(method, url, params=params, headers=headers, content=content)
    assert r.status_code < 500, (method, url, r.status_code, r.text)
    if r.status_code in (404, 405) and r.json()["error"] in ("not_found", "method_not_allowed"):
        # a path parameter such as "a/b" or ".." decoded to a path no route serves
        assert template != url, (method, url, r.text)
    else:
        op = DOC["paths"][template][method.lower()]
        assert str(r.status_code) in op["responses"], (method, url, r.status_code, r.text)
        schema = _schema_of(op, str(r.status_code))
        if schema is not None:
            Draft202012Validator(schema).validate(r.json())
    if r.status_code >= 400:
        assert accounts(redis, known) == before, (method, url, r.status_code, r.text)


_CLIENTS: dict[int, Any] = {}


def _client(make_client: MakeClient, redis: redis_py.Redis, mongo_db: Database[Any]) -> Any:
    """One app per test run (hypothesis calls the body many times with the same fixtures)."""
    key = id(mongo_db)
    if key not in _CLIENTS:
        _CLIENTS.clear()
        client = make_client(rate_per_s=0)
        admin = {"Authorization": f"Bearer {next(k for k, r in KEYS.items() if r == 'admin')}"}
        for i, user in enumerate(USERS):
            client.post(
                "/api/users", json={"user_id": user, "email": f"{user}@x.io"}, headers=admin
            )
            client.post(
                f"/api/accounts/{user}/purchases",
                json={"amount": 100, "transaction_id": f"seed-{i}"},
                headers=admin,
            )
        project_until_idle(redis, PARTITIONS, mongo_db)
        _CLIENTS[key] = client
    return _CLIENTS[key]
