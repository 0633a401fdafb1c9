"""Settings, read from the environment (or CLI flags) at the edge, after parsing.

Every value goes through a parser that either returns it or raises ``ValueError``
with a short reason; ``env_value`` turns that into one line naming the variable
(``LEDGER_RATE_PER_S: 'abc' is not a number``). Nothing here is read at import
or while ``ledger``'s parser is built, so ``--help`` works whatever the
environment holds. A variable set to an empty (or blank) string counts as unset.

CLI options that also read a variable are added with ``add_option``: their
default is a ``FromEnv`` marker that ``resolve`` replaces after parsing — by the
flag's value when given (flags override the environment), else the variable's,
else the default.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ledger.commands import (
    DEFAULT_MAX_HOLD_EXPIRY_S,
    DEFAULT_MAX_OPEN_HOLDS,
    MAX_HOLD_EXPIRY_S,
    MAX_OPEN_HOLDS,
)
from streams.config import (
    DEFAULT_PARTITIONS,
    MAX_WAIT_REPLICAS,
    MAX_WAIT_TIMEOUT_MS,
    StreamsConfig,
)
from streams.errors import ConfigError

T = TypeVar("T")
Parse = Callable[[str], T]

ROLES = ("reader", "producer", "admin")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MAX_MS = 366 * 24 * 3600 * 1000
"""Upper bound of every millisecond option (a year)."""

REDIS_URL = "REDIS_URL"
MONGO_URL = "MONGO_URL"
MONGO_DB = "MONGO_DB"
PARTITIONS = "LEDGER_PARTITIONS"
COLLECTIONS = "LEDGER_COLLECTIONS"
API_KEYS = "LEDGER_API_KEYS"
RATE_PER_S = "LEDGER_RATE_PER_S"
RATE_BURST = "LEDGER_RATE_BURST"
LOG_LEVEL = "LEDGER_LOG_LEVEL"
WAIT_REPLICAS = "LEDGER_WAIT_REPLICAS"
WAIT_TIMEOUT_MS = "LEDGER_WAIT_TIMEOUT_MS"
MAX_OPEN_HOLDS_ENV = "LEDGER_MAX_OPEN_HOLDS"
MAX_HOLD_EXPIRY_ENV = "LEDGER_MAX_HOLD_EXPIRY_S"


class EnvError(ConfigError):
    """A variable (or flag) holds a value its option cannot take; one line names it."""


class SecretValueError(ValueError):
    """A refused value that must not be echoed (it holds API keys)."""


# -- value parsers: str -> value, or ValueError(reason) ------------------------------------
_INT_RE = re.compile(r"[+-]?[0-9]{1,18}")
_NUM_RE = re.compile(
    r"[+-]?(?:[0-9]{1,15}(?:\.[0-9]{0,17})?|\.[0-9]{1,17})"
    r"(?:[eE][+-]?[0-9]{1,3})?"
)
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}(?:\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,15}")
_HOST_RE = re.compile(r"[A-Za-z0-9.:%\[\]-]{1,253}")
_DB_FORBIDDEN = set('/\\. "$*<>:|?')
_KEY_RE = re.compile(r"[!-~]{16,512}")  # visible ASCII: it travels in an HTTP header


def integer(lo: int, hi: int) -> Parse[int]:
    """A whole number in ``lo..hi`` (ASCII digits only: no ``1_000``, no full-width digits)."""

    def parse(raw: str) -> int:
        text = raw.strip()
        if not _INT_RE.fullmatch(text):
            raise ValueError("is not a whole number")
        value = int(text)
        if not lo <= value <= hi:
            raise ValueError(f"is not between {lo} and {hi}")
        return value

    parse.__name__ = "integer"
    return parse


def number(lo: float, hi: float) -> Parse[float]:
    """A finite decimal number in ``lo..hi`` (no nan, inf or ``1_0``)."""

    def parse(raw: str) -> float:
        text = raw.strip()
        if not _NUM_RE.fullmatch(text):
            raise ValueError("is not a number")
        value = float(text)
        if not (math.isfinite(value) and lo <= value <= hi):
            raise ValueError(f"is not between {lo:g} and {hi:g}")
        return value

    parse.__name__ = "number"
    return parse


def choice(*values: str) -> Parse[str]:
    def parse(raw: str) -> str:
        text = raw.strip().upper()
        if text not in values:
            raise ValueError(f"is not one of {', '.join(values)}")
        return text

    parse.__name__ = "choice"
    return parse


def names(pattern: re.Pattern[str] = _NAME_RE, what: str = "name") -> Parse[tuple[str, ...]]:
    """A comma-separated list of at least one name matching ``pattern``."""

    def parse(raw: str) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(i.strip() for i in raw.split(",") if i.strip()))
        if not items:
            raise ValueError(f"names no {what}")
        if len(items) > 64 or not all(pattern.fullmatch(i) for i in items):
            raise ValueError(f"is not a comma-separated list of {what}s")
        return items

    parse.__name__ = "names"
    return parse


module_names = names(_MODULE_RE, "module name")


def redis_url(raw: str) -> str:
    text = raw.strip()
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme not in ("redis", "rediss", "unix", "redis+cluster"):
        raise ValueError("is not a redis://, rediss://, unix:// or redis+cluster:// URL")
    from redis.connection import parse_url

    from streams.connection import cluster_seeds
    from streams.errors import ConfigError

    try:
        first = cluster_seeds(text)[0] if scheme == "redis+cluster" else text
        parse_url(first)  # type: ignore[no-untyped-call]
        parts = urlsplit(first)
        _ = parts.port
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    except ValueError:
        raise ValueError("is not a valid Redis URL") from None
    if scheme != "unix" and not parts.hostname:
        raise ValueError("has no host")
    return text


def mongo_url(raw: str) -> str:
    text = raw.strip()
    if text.startswith("mongodb+srv://"):  # parse_uri would resolve it (DNS): only the shape
        if not urlsplit(text).hostname:
            raise ValueError("has no host")
        return text
    if not text.startswith("mongodb://"):
        raise ValueError("is not a mongodb:// or mongodb+srv:// URL")
    from pymongo.uri_parser import parse_uri

    try:
        parse_uri(text)
    except Exception:
        raise ValueError("is not a valid MongoDB URL") from None
    return text


def db_name(raw: str) -> str:
    text = raw.strip()
    if not text or len(text.encode()) > 63 or not text.isprintable() or _DB_FORBIDDEN & set(text):
        raise ValueError('is not a database name (1-63 characters, none of /\\. "$*<>:|?)')
    return text


def host(raw: str) -> str:
    text = raw.strip()
    if not _HOST_RE.fullmatch(text):
        raise ValueError("is not a host name or IP address")
    return text


def collections(raw: str) -> tuple[str, ...]:
    """Extra allow-listed collections, checked as the worker's ``db_manager`` will."""
    from ledger.errors import ValidationError
    from ledger.tasks import allowed_collections

    items = tuple(c.strip() for c in raw.split(",") if c.strip())
    try:
        allowed_collections(items)
    except ValidationError as exc:
        raise ValueError(f"is refused: {exc.message}") from None
    return items


def api_keys(raw: str) -> dict[str, str]:
    """``key:role,key:role`` -> {key: role}; refuses unknown roles and short keys.

    A refusal says which entry, never the key itself.
    """
    keys: dict[str, str] = {}
    items = [i.strip() for i in raw.split(",")]
    for n, item in enumerate(items, 1):
        if not item:
            continue
        key, sep, role = item.rpartition(":")
        if not sep or role not in ROLES:
            raise SecretValueError(f"entry {n} is not key:role with role in {', '.join(ROLES)}")
        if not _KEY_RE.fullmatch(key):
            raise SecretValueError(f"entry {n}: keys must be 16-512 visible ASCII characters")
        keys[key] = role
    return keys


def parse_api_keys(text: str) -> dict[str, str]:
    """``api_keys`` with the error naming ``LEDGER_API_KEYS`` (a ``ConfigError``)."""
    return env_value({API_KEYS: text}, API_KEYS, api_keys, {})


# -- reading a variable --------------------------------------------------------------------
def _shown(raw: str) -> str:
    """The refused value, quoted on one line and short."""
    text = repr(raw)
    return text if len(text) <= 60 else text[:56] + "...'"


def refusal(name: str, raw: str, exc: ValueError) -> EnvError:
    if isinstance(exc, SecretValueError):
        return EnvError(f"{name}: {exc}")
    return EnvError(f"{name}: {_shown(raw)} {exc}")


def env_value(env: Mapping[str, str], name: str, parse: Parse[T], default: T) -> T:
    """The variable parsed, ``default`` when unset or blank; ``EnvError`` naming it if bad."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise refusal(name, raw, exc) from None


@dataclass(frozen=True, slots=True)
class FromEnv:
    """An option's default until ``resolve``: the variable's value, else ``default``."""

    env: str
    parse: Parse[Any]
    default: Any

    def __str__(self) -> str:
        return str(self.default)


def _argtype(parse: Parse[T]) -> Callable[[str], T]:
    """``parse`` for argparse: a refusal becomes argparse's one usage error."""

    def convert(raw: str) -> T:
        try:
            return parse(raw)
        except ValueError as exc:
            shown = str(exc) if isinstance(exc, SecretValueError) else f"{_shown(raw)} {exc}"
            raise argparse.ArgumentTypeError(shown) from None

    convert.__name__ = parse.__name__
    return convert


def add_option(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    env: str,
    parse: Parse[Any],
    default: Any,
    help: str,
    shown_default: str | None = None,
    **kwargs: Any,
) -> None:
    """``--flag`` that reads ``env`` when not given; its help names the variable."""
    shown = str(default) if shown_default is None else shown_default
    parser.add_argument(
        flag,
        type=_argtype(parse),
        default=FromEnv(env, parse, default),
        help=f"{help} (default {shown}; env {env})".replace("%", "%%"),
        **kwargs,
    )


def resolve(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """Replace every ``FromEnv`` default by the variable's value (or the default).

    Records in ``args.env_sources`` which options came from which variable, so
    later refusals can name it. Idempotent.
    """
    env = os.environ if environ is None else environ
    sources: dict[str, str] = dict(getattr(args, "env_sources", {}))
    for dest, value in sorted(vars(args).items()):
        if isinstance(value, FromEnv):
            setattr(args, dest, env_value(env, value.env, value.parse, value.default))
            if (env.get(value.env) or "").strip():
                sources[dest] = value.env
    args.env_sources = sources
    return args


def source(args: argparse.Namespace, dest: str, flag: str) -> str:
    """What to call an option in a refusal: its variable if it came from one, else the flag."""
    sources: dict[str, str] = getattr(args, "env_sources", {})
    return sources.get(dest, flag)


# -- the settings object ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    redis_url: str | None = None
    """None: ``ledger demo`` starts an embedded redis-server."""
    mongo_url: str | None = None
    """None: ``ledger demo`` starts an embedded Mongo-wire server."""
    mongo_db: str = "ledger"
    partitions: int = DEFAULT_PARTITIONS
    extra_collections: tuple[str, ...] = ()
    api_keys: Mapping[str, str] = field(default_factory=dict)
    """bearer key -> role (producer | reader | admin); empty: no auth (loopback only)."""
    rate_per_s: float = 200.0
    """Per-key token bucket: sustained requests per second …"""
    rate_burst: int = 400
    """… and the burst it allows."""
    wait_replicas: int = 0
    """Replicas that must confirm an append or enqueue (``WAIT``) before it is
    answered, on every node it was written on; else HTTP 503. 0: no WAIT."""
    wait_timeout_ms: int = 1000
    """How long to wait for them."""
    max_open_holds: int = DEFAULT_MAX_OPEN_HOLDS
    """Open credit holds per account (``LEDGER_MAX_OPEN_HOLDS``, 1..10000, default
    100); one more is refused with 409 ``too_many_holds``."""
    max_hold_expiry_s: int = DEFAULT_MAX_HOLD_EXPIRY_S
    """Longest hold (``LEDGER_MAX_HOLD_EXPIRY_S``, seconds, 1..31622400, default
    604800 = 7 days); a longer ``expires_in_s`` is refused with 422 naming it."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, server: bool = True) -> Settings:
        """Every setting from the environment; ``server=False`` skips the HTTP API's
        own (API keys, rate limit), which the other commands never read."""
        env = os.environ if environ is None else environ
        d = cls()
        base = cls(
            redis_url=env_value(env, REDIS_URL, redis_url, None),
            mongo_url=env_value(env, MONGO_URL, mongo_url, None),
            mongo_db=env_value(env, MONGO_DB, db_name, d.mongo_db),
            partitions=env_value(env, PARTITIONS, PARTITIONS_VALUE, d.partitions),
            extra_collections=env_value(env, COLLECTIONS, collections, ()),
            wait_replicas=env_value(env, WAIT_REPLICAS, WAIT_REPLICAS_VALUE, d.wait_replicas),
            wait_timeout_ms=env_value(env, WAIT_TIMEOUT_MS, WAIT_TIMEOUT_VALUE, d.wait_timeout_ms),
            max_open_holds=env_value(
                env, MAX_OPEN_HOLDS_ENV, MAX_OPEN_HOLDS_VALUE, d.max_open_holds
            ),
            max_hold_expiry_s=env_value(
                env, MAX_HOLD_EXPIRY_ENV, MAX_HOLD_EXPIRY_VALUE, d.max_hold_expiry_s
            ),
        )
        return base.with_server_env(env) if server else base

    def with_server_env(self, environ: Mapping[str, str] | None = None) -> Settings:
        """These settings plus the API keys and rate limit from the environment."""
        env = os.environ if environ is None else environ
        return replace(
            self,
            api_keys=env_value(env, API_KEYS, api_keys, {}),
            rate_per_s=env_value(env, RATE_PER_S, RATE_VALUE, self.rate_per_s),
            rate_burst=env_value(env, RATE_BURST, BURST_VALUE, self.rate_burst),
        )

    def streams(self) -> StreamsConfig:
        if self.redis_url is None:
            raise ConfigError("REDIS_URL is not set (only `ledger demo` starts its own Redis)")
        return StreamsConfig(
            redis_url=self.redis_url,
            partitions=self.partitions,
            extra_collections=self.extra_collections,
            wait_replicas=self.wait_replicas,
            wait_timeout_ms=self.wait_timeout_ms,
            max_open_holds=self.max_open_holds,
            max_hold_expiry_s=self.max_hold_expiry_s,
        )


PARTITIONS_VALUE = integer(1, 1024)
RATE_VALUE = number(0, 1_000_000)
BURST_VALUE = integer(1, 1_000_000)
WAIT_REPLICAS_VALUE = integer(0, MAX_WAIT_REPLICAS)
WAIT_TIMEOUT_VALUE = integer(1, MAX_WAIT_TIMEOUT_MS)
"""0 is refused: ``WAIT n 0`` would block for ever."""
MAX_OPEN_HOLDS_VALUE = integer(1, MAX_OPEN_HOLDS)
MAX_HOLD_EXPIRY_VALUE = integer(1, MAX_HOLD_EXPIRY_S)
