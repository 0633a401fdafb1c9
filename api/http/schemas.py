"""Strict request parsing at the edge: nothing malformed reaches the library.

    Content-Type other than application/json     415 unsupported_media_type
    body over MAX_BODY_BYTES (counted as read)   413 payload_too_large
    not UTF-8 / not JSON / NaN / duplicate keys  400 malformed_json
    nested deeper than MAX_JSON_DEPTH            400 malformed_json
    a body that is not a JSON object             422 invalid (field None)
    unknown or missing fields, wrong types       422 invalid, naming the field

Money fields are checked by ``ledger.money`` (JSON integers only: ``10.0`` is
refused); ledger bodies go through ``ledger.commands.parse`` and task data
through ``ledger.tasks`` (no ``$``-keys, bounded size and depth).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from starlette.requests import Request

from ledger.commands import check_hold_id, check_user_id
from ledger.errors import ValidationError

from .errors import BadRequest, BodyTooLarge, MalformedJson, UnsupportedMediaType
from .state import app_state

MAX_BODY_BYTES: Final = 1024 * 1024
MAX_JSON_DEPTH: Final = 32
"""Deepest nesting of arrays/objects in any request body (the top value is depth 1)."""
INLINE_DECODE_BYTES: Final = 64 * 1024
"""Bodies up to this size are parsed on the event loop; bigger ones on the thread pool."""
MAX_BATCH: Final = 1000
"""Most events in one ``POST /api/events:batch``."""


def _content_type_ok(value: str) -> bool:
    media, _, params = value.partition(";")
    if media.strip().lower() != "application/json":
        return False
    for param in params.split(";"):
        name, _, val = param.partition("=")
        if name.strip().lower() == "charset" and val.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refused (413) as soon as more than ``limit`` bytes arrive."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BadRequest("Content-Length is not a number")
        if int(declared) > limit:
            raise BodyTooLarge(f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a missing or lying Content-Length is caught here
            raise BodyTooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _depth_ok(raw: str, limit: int) -> bool:
    """Bracket depth outside strings, checked before parsing (no deep recursion)."""
    depth, in_string, escaped = 0, False, False
    for ch in raw:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def decode_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys, bounded depth."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedJson("the body is not valid UTF-8") from None
    if not text.strip():
        raise MalformedJson("the body is empty; send a JSON object")
    if not _depth_ok(text, MAX_JSON_DEPTH):
        raise MalformedJson(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_no_constants, object_pairs_hook=_pairs)
    except (ValueError, RecursionError) as exc:
        raise MalformedJson(f"the body is not valid JSON: {exc}") from None


async def json_object(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object body (``optional``: an empty body is ``{}``)."""
    ctype = request.headers.get("content-type")
    if optional and ctype is None:
        raw = await read_body(request)
        if not raw:
            return {}
        raise UnsupportedMediaType("send Content-Type: application/json")
    if ctype is None or not _content_type_ok(ctype):
        raise UnsupportedMediaType("send Content-Type: application/json")
    raw = await read_body(request)
    if optional and not raw.strip():
        return {}
    if len(raw) > INLINE_DECODE_BYTES:  # big bodies are parsed off the event loop
        body = await app_state(request).blocking(decode_json, raw)
    else:
        body = decode_json(raw)
    if not isinstance(body, dict):
        raise ValidationError(None, "the body must be a JSON object")
    return body


def only_fields(
    body: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> None:
    """Refuse unknown fields and report the first missing one (422, naming it)."""
    for key in body:
        if key not in required and key not in optional:
            raise ValidationError(key, f"unknown field {key!r}")
    for name in required:
        if name not in body:
            raise ValidationError(name, f"{name} is required")


def path_user(request: Request) -> str:
    """The ``{user_id}`` path parameter, by the body's rules."""
    return check_user_id(request.path_params["user_id"])


def path_hold(request: Request) -> str:
    """The ``{hold_id}`` path parameter (``<user_id>:h<n>``; 422 naming hold_id otherwise)."""
    return check_hold_id(request.path_params["hold_id"])


def query_int(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    """An optional decimal integer query parameter within ``lo..hi`` (422 otherwise)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise ValidationError(name, f"{name} must be an integer between {lo} and {hi}")
    value = int(raw)
    if not lo <= value <= hi:
        raise ValidationError(name, f"{name} must be an integer between {lo} and {hi}")
    return value


def idempotency_key(request: Request) -> str | None:
    """The ``Idempotency-Key`` header, checked (1-255 visible ASCII)."""
    from streams.appender import check_idempotency_key

    key = request.headers.get("idempotency-key")
    return None if key is None else check_idempotency_key(key)
