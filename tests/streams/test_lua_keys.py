"""Every key a Lua script touches is declared in KEYS (Redis Cluster, issue 11).

On Redis Cluster a script may only touch the keys it is given: an undeclared
key is refused when it hashes to another slot, and unsupported even in the same
slot. This is a static check of the scripts as they are sent
(``streams.scripts.source``: preludes included), with no cluster: the key
argument of every ``redis.call``/``redis.pcall`` (and ``pcall(redis.call, …)``)
must be ``KEYS[…]`` or a name bound only to such values. A name's bindings are
every assignment to it (``nil`` allowed), every call's argument for a function
parameter of that name, and, for ``for k in pairs(t)``, every index written into
``t``; names are resolved per script, not per scope (stricter, never looser).
Names with no binding found, key names built by concatenation (``ARGV[1] ..
id``) and any other expression fail.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from streams.scripts import NAMES, source

NAME = r"[A-Za-z_]\w*"
KEYLESS = {"TIME"}
"""Commands of these scripts that take no key."""


def strip(lua: str) -> str:
    """The code without comments; string literals kept (they hold no newlines here)."""
    lua = re.sub(r"--\[\[.*?\]\]", "", lua, flags=re.S)
    out = []
    for line in lua.splitlines():
        code, quote, i = [], None, 0
        while i < len(line):
            c = line[i]
            if quote is None and line.startswith("--", i):
                break
            if quote is None and c in "'\"":
                quote = c
            elif quote == c and line[i - 1] != "\\":
                quote = None
            code.append(c)
            i += 1
        out.append("".join(code))
    return "\n".join(out)


def split_args(text: str, start: int, *, line: bool = False) -> tuple[list[str], int]:
    """The comma-separated top-level expressions from ``start`` up to the closing
    bracket that ends them (with ``line``: or the end of the line); and where they end."""
    args, depth, quote, cur, i = [], 0, None, "", start
    while i < len(text):
        c = text[i]
        if quote:
            quote = None if c == quote and text[i - 1] != "\\" else quote
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                break
            depth -= 1
        elif c == "\n" and depth == 0 and line:
            break
        elif c == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
            i += 1
            continue
        cur += c
        i += 1
    args.append(cur.strip())
    return args, i


def is_keys_ref(expr: str) -> bool:
    """``KEYS[…]`` and nothing more (not ``KEYS[1] .. 'x'``)."""
    if not expr.startswith("KEYS["):
        return False
    _, end = split_args(expr, len("KEYS["))
    return end == len(expr) - 1


def key_args(code: str) -> Iterator[tuple[str, str]]:
    """(command, key expression) of every Redis call in ``code``."""
    for m in re.finditer(r"redis\.p?call\(|pcall\(redis\.p?call,", code):
        args, _ = split_args(code, m.end())
        command = args[0].strip("'\"").upper()
        assert re.fullmatch(r"'\w+'|\"\w+\"", args[0]), f"command not a literal: {args[0]}"
        if command in KEYLESS:
            continue
        if command in {"XREAD", "XREADGROUP"}:
            rest = args[[a.upper() for a in args].index("'STREAMS'") + 1 :]
            yield from ((command, a) for a in rest[: len(rest) // 2])
        elif command in {"XINFO", "XGROUP"}:  # a subcommand, then the key
            yield command, args[2]
        else:
            yield command, args[1]


def bindings(code: str, name: str) -> list[str] | None:
    """Every expression ``name`` may be bound to; None when one can't be told."""
    found: list[str] = []
    # assignments: [local] a, b = x, y   (not ==, ~=, <=, >=)
    for m in re.finditer(rf"(?:local\s+)?({NAME}(?:\s*,\s*{NAME})*)\s*=(?!=)", code):
        if m.start() > 0 and code[m.start() - 1] in ".:[~<>=":
            continue
        names = [n.strip() for n in m.group(1).split(",")]
        if name not in names or names[0] in {"function", "for"}:
            continue
        if re.search(rf"\bfor\s+{re.escape(m.group(1))}\s*=$", code[: m.end()]):
            found.append("<number>")  # numeric for
            continue
        values, _ = split_args(code, m.end(), line=True)
        values = [re.sub(r"\s+end$", "", v) for v in values]
        i = names.index(name)
        if i >= len(values):
            return None
        found.append(values[i])
    # function parameters: every call passes a bound value
    for m in re.finditer(rf"function\s+({NAME})\s*\(([^)]*)\)", code):
        params = [p.strip() for p in m.group(2).split(",")]
        if name not in params:
            continue
        i = params.index(name)
        calls = [
            c for c in re.finditer(rf"(?<![\w.]){m.group(1)}\(", code) if c.start() != m.start(1)
        ]
        for c in calls:
            args, _ = split_args(code, c.end())
            found.append(args[i] if i < len(args) else "<missing>")
    # generic for: the keys of pairs(t) are the indexes written into t
    for m in re.finditer(rf"for\s+({NAME}(?:\s*,\s*{NAME})*)\s+in\s+(i?pairs)\(({NAME})\)", code):
        names = [n.strip() for n in m.group(1).split(",")]
        if name not in names:
            continue
        if names.index(name) != 0 or m.group(2) != "pairs":
            return None
        for w in re.finditer(rf"\b{m.group(3)}\[", code):
            index, end = split_args(code, w.end())
            if re.match(r"\]\s*=(?!=)", code[end:]):
                found.append(index[0])
    return found


def undeclared(code: str) -> list[str]:
    """The Redis calls of ``code`` whose key is not known to come from KEYS."""
    verdict: dict[str, bool] = {}

    def declared(expr: str, seen: frozenset[str]) -> bool:
        expr = expr.strip()
        if is_keys_ref(expr):
            return True
        if not re.fullmatch(NAME, expr):
            return False
        if expr in seen:  # a cycle brings in no value of its own
            return True
        if expr not in verdict:
            values = bindings(code, expr)
            verdict[expr] = bool(values) and all(
                v == "nil" or declared(v, seen | {expr})
                for v in values or []  # v == "nil": "no key yet"
            )
        return verdict[expr]

    return [f"{cmd} {expr}" for cmd, expr in key_args(code) if not declared(expr, frozenset())]


@pytest.mark.parametrize("name", NAMES)
def test_every_key_a_script_touches_is_declared(name: str) -> None:
    code = strip(source(name))
    assert list(key_args(code)), "no Redis call found: the parser missed them"
    assert undeclared(code) == []


@pytest.mark.parametrize(
    ("lua", "bad"),
    [
        ("redis.call('HSET', ARGV[1] .. id, 'a', 1)", ["HSET ARGV[1] .. id"]),
        ("local key = ARGV[1] .. id\nredis.call('HGET', key, 'a')", ["HGET key"]),
        ("local a, b = KEYS[1], ARGV[2]\nredis.call('DEL', b)", ["DEL b"]),
        ("local k = KEYS[1]\nk = ARGV[1]\nredis.call('DEL', k)", ["DEL k"]),
        ("redis.call('DEL', KEYS[1] .. ':x')", ["DEL KEYS[1] .. ':x'"]),
        ("local function f(s) return redis.call('GET', s) end\nf(KEYS[1])\nf(ARGV[1])", ["GET s"]),
        ("local t = {}\nt[ARGV[1]] = 1\nfor s in pairs(t) do redis.call('DEL', s) end", ["DEL s"]),
        ("pcall(redis.call, 'XAUTOCLAIM', prefix .. 'x', 'g')", ["XAUTOCLAIM prefix .. 'x'"]),
        ("pcall(redis.call, 'XINFO', 'CONSUMERS', ARGV[1], g)", ["XINFO ARGV[1]"]),
        ("local s = KEYS[i]\nredis.call('XGROUP', 'DELCONSUMER', s, g, c)", []),
        (
            "redis.call('XREADGROUP', 'GROUP', g, c, 'STREAMS', ARGV[1], '>')",
            ["XREADGROUP ARGV[1]"],
        ),
        ("local t = {}\nt[KEYS[2]] = 1\nfor s in pairs(t) do redis.call('DEL', s) end", []),
        ("local a, b = nil, nil\nif x then a = KEYS[3] end\nredis.call('DEL', a)", []),
        ("-- redis.call('DEL', ARGV[1])\nredis.call('TIME')", []),
    ],
)
def test_the_check_tells_declared_keys_from_built_ones(lua: str, bad: list[str]) -> None:
    assert undeclared(strip(lua)) == bad
