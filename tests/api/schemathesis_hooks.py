"""Hooks of the schemathesis run (``tests/api/schemathesis.toml``).

The API takes whole numbers only as JSON integers: ``26.0`` or ``2.6e1`` for an
amount is refused (422), as each integer field's description in
``/openapi.json`` says. JSON Schema 2020-12 counts ``26.0`` as an integer, so
schemathesis would send it as valid data; this hook writes such values as the
contract asks clients to, as integers. Fractional values are left alone.
"""

from __future__ import annotations

from typing import Any

import schemathesis

_EXACT = 2**53


def as_json_integers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT:
        return int(value)
    if isinstance(value, list):
        return [as_json_integers(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json_integers(v) for k, v in value.items()}
    return value


@schemathesis.hook
def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    return as_json_integers(body)
