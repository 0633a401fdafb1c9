"""``ledger serve --host H --port P [--workers N] [--insecure]``: the HTTP API under uvicorn.

``api.cli`` wires it in with ``add_parsers(sub, _common)`` and
``run(args, settings)`` for ``args.command == "serve"``. uvicorn's worker
processes build their own app with ``app_from_env`` (an importable factory), so
``run`` hands the settings to them through the environment.

With no API keys configured every request is admin: ``serve`` then refuses a
host that is not loopback unless told ``--insecure`` (exit code 2).

Metrics: ``run`` creates an empty directory for this serve and hands it to the
worker processes as ``PROMETHEUS_MULTIPROC_DIR`` (``prometheus_client``'s
multiprocess mode: each process writes its counters there, whichever process
answers ``/metrics`` adds them all up), and removes it when uvicorn returns. A
value inherited from the environment is replaced: files left by another run
would be counted again.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from .. import settings as cfg
from ..settings import EnvError, Settings, add_option, resolve
from .exits import RET_OK, RET_USAGE

FACTORY = "api.cli.serve:app_from_env"
RATE_ENV = cfg.RATE_PER_S
BURST_ENV = cfg.RATE_BURST
WAIT_ENV = cfg.WAIT_REPLICAS
WAIT_TIMEOUT_ENV = cfg.WAIT_TIMEOUT_MS
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def add_parsers(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``serve`` to ``ledger``'s subcommands."""
    serve = sub.add_parser(
        "serve",
        help="serve the HTTP API (uvicorn)",
        description="Serve the HTTP API with uvicorn. API keys come from LEDGER_API_KEYS "
        "(key:role,...). Without keys every request is admin, so only a loopback host is "
        "allowed unless --insecure is given.",
    )
    common(serve)
    add_option(
        serve,
        "--host",
        env="LEDGER_HOST",
        parse=cfg.host,
        default="127.0.0.1",
        help="address to bind",
    )
    add_option(
        serve, "--port", env="LEDGER_PORT", parse=cfg.integer(1, 65535), default=8000, help="port"
    )
    add_option(
        serve,
        "--workers",
        env="LEDGER_WORKERS",
        parse=cfg.integer(1, 256),
        default=1,
        help="uvicorn worker processes",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback host without API keys (everyone is admin)",
    )
    defaults = Settings()
    add_option(
        serve,
        "--rate-per-s",
        env=RATE_ENV,
        parse=cfg.RATE_VALUE,
        default=defaults.rate_per_s,
        help="per-key requests per second, 0 = no limit",
    )
    add_option(
        serve,
        "--rate-burst",
        env=BURST_ENV,
        parse=cfg.BURST_VALUE,
        default=defaults.rate_burst,
        help="per-key burst",
    )
    add_option(
        serve,
        "--wait-replicas",
        env=WAIT_ENV,
        parse=cfg.WAIT_REPLICAS_VALUE,
        default=defaults.wait_replicas,
        help="answer an append (or enqueue) only once this many replicas of every Redis "
        "node it was written on confirm it (WAIT), else 503 (retry with the same "
        "Idempotency-Key); 0 = do not wait",
    )
    add_option(
        serve,
        "--wait-timeout-ms",
        env=WAIT_TIMEOUT_ENV,
        parse=cfg.WAIT_TIMEOUT_VALUE,
        default=defaults.wait_timeout_ms,
        help="how long an append waits for those replicas",
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes ``Settings.from_env`` (and ``app_from_env``) give ``settings``."""
    env = {
        "MONGO_DB": settings.mongo_db,
        "LEDGER_PARTITIONS": str(settings.partitions),
        "LEDGER_COLLECTIONS": ",".join(settings.extra_collections),
        "LEDGER_API_KEYS": ",".join(f"{k}:{r}" for k, r in settings.api_keys.items()),
        RATE_ENV: repr(settings.rate_per_s),
        BURST_ENV: str(settings.rate_burst),
        WAIT_ENV: str(settings.wait_replicas),
        WAIT_TIMEOUT_ENV: str(settings.wait_timeout_ms),
    }
    if settings.redis_url:
        env["REDIS_URL"] = settings.redis_url
    if settings.mongo_url:
        env["MONGO_URL"] = settings.mongo_url
    return env


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Every setting of the API from the environment (``EnvError`` names a bad variable)."""
    return Settings.from_env(environ)


def app_from_env() -> Any:
    """uvicorn's factory: the instrumented app, configured from the environment (one
    call per worker process; ``metrics.process_started`` does its metrics bookkeeping)."""
    from ..http import metrics
    from ..http.app import create_app

    app = metrics.instrument(create_app(settings_from_env()))
    metrics.process_started()
    return app


@contextmanager
def metrics_dir() -> Iterator[str]:
    """An empty directory for multiprocess metrics, set as ``PROMETHEUS_MULTIPROC_DIR``
    while the serve runs; removed (and the variable put back) afterwards.

    uvicorn (one process) re-raises the SIGTERM it drained on, whose default action
    ends the process before any ``finally``; so while the serve runs, SIGTERM and
    SIGHUP left at their default remove the directory first, then end the process
    by the same signal, as before. A SIGKILLed serve leaves it behind (a new serve
    never reuses it).
    """
    path = tempfile.mkdtemp(prefix="ledger-serve-metrics-")
    before = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path

    def remove_then_die(signum: int, frame: object) -> None:
        shutil.rmtree(path, ignore_errors=True)
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    replaced: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) == signal.SIG_DFL:
                replaced[sig] = signal.signal(sig, remove_then_die)
    try:
        yield path
    finally:
        for signum, handler in replaced.items():
            signal.signal(signum, handler)
        if before is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = before
        shutil.rmtree(path, ignore_errors=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Check the options, hand the settings to uvicorn's workers, serve until stopped.

    ``settings`` carries the API keys (``api.cli`` reads LEDGER_API_KEYS for
    ``serve`` only); the rate and WAIT options are resolved like every other option.
    """
    try:
        resolve(args)
        settings = replace(
            settings,
            rate_per_s=args.rate_per_s,
            rate_burst=args.rate_burst,
            wait_replicas=args.wait_replicas,
            wait_timeout_ms=args.wait_timeout_ms,
        )
    except EnvError as exc:
        print(f"ledger serve: error: {exc}", file=sys.stderr)
        return RET_USAGE
    if not settings.api_keys and not is_loopback(args.host) and not args.insecure:
        print(
            f"ledger serve: refusing to listen on {args.host} without API keys: every "
            "request would be admin. Set LEDGER_API_KEYS (key:role,...), bind a loopback "
            "address, or pass --insecure.",
            file=sys.stderr,
        )
        return RET_USAGE
    if not settings.redis_url:
        print("ledger serve: REDIS_URL is not set", file=sys.stderr)
        return RET_USAGE
    import uvicorn

    os.environ.update(settings_env(settings))
    with metrics_dir():
        uvicorn.run(
            FACTORY,
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=str(getattr(args, "log_level", "info")).lower(),
            proxy_headers=False,
            server_header=False,
            log_config=None,
        )
    return RET_OK
