"""Every benchmark with modest sizes, then one combined table.

    python -m bench.run_all [--only e2e,priority,...] [--full]

Runs each ``python -m bench.<name>`` below as its own process (each starts
its own private servers on 127.0.0.1), keeps its output in
bench/results/<name>.txt, reads its bench/results/<name>.json and prints
one table: case, figure, unit, ratio/target, met?. ``--full`` runs each with
its own defaults instead of the modest sizes. Writes bench/results/all.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.common import RESULTS, ROOT

MODEST: dict[str, list[str]] = {
    "append": ["--events", "20000", "--single", "5000"],
    "projection": ["--events", "5000", "--users", "500"],
    "http": ["--seconds", "4", "--workers", "1,2"],
    "replay": ["--events", "20000", "--users", "2000"],
    "e2e": ["--events", "3000", "--tasks", "1000", "--seconds", "10"],
    "priority": ["--backlog", "100000", "--seconds", "10"],
    "memory": ["--minutes", "0.5"],
    "scaling": ["--tasks", "10000"],
    "peers": ["--tasks", "10000", "--latency-s", "5"],
    "cluster": ["--events", "10000", "--tasks", "5000"],
    "dependencies": ["--pairs", "300"],
    "holds": ["--pairs", "12000", "--expire", "10000"],
}

Row = tuple[str, str, Any, str, str, bool | None]  # case, figure, value, unit, ratio, met


def _load(name: str) -> Any:
    return json.loads((RESULTS / f"{name}.json").read_text())


def rows_append(d: Any) -> list[Row]:
    r = d["rows"]
    return [
        (
            "append",
            "one by one",
            r[3]["events_per_s"],
            "events/s",
            f"{r[3]['ratio_vs_raw']:.0%} of raw XADD",
            None,
        ),
        (
            "append",
            "append_batch x200",
            r[4]["events_per_s"],
            "events/s",
            f"{r[4]['ratio_vs_raw']:.0%} of raw pipelined XADD (target >= 60%); "
            f"{r[4]['ratio_vs_event_shaped']:.0%} of event-shaped XADD (target >= 85%)",
            r[4]["ratio_vs_raw"] >= 0.6 and r[4]["ratio_vs_event_shaped"] >= 0.85,
        ),
    ]


def rows_projection(d: Any) -> list[Row]:
    last = d[-1]
    return [
        (
            "projection",
            last["case"],
            last["events_per_s"],
            "events/s",
            f"{last['ratio_vs_raw']:.0%} of raw bulk upsert",
            None,
        )
    ]


def rows_http(d: Any) -> list[Row]:
    out: list[Row] = []
    for r in d:
        if r["via"] == "HTTP":
            out.append(
                (
                    "http",
                    f"{r['mode']}, {r['uvicorn_workers']} uvicorn worker(s)",
                    r["events_per_s"],
                    "events/s",
                    f"p99 {r['p99_ms']} ms",
                    None,
                )
            )
    return out


def rows_replay(d: Any) -> list[Row]:
    return [
        (
            "replay",
            f"{d['events']:,} events, {d['accounts']:,} accounts",
            d["events_per_s"],
            "events/s",
            "",
            None,
        )
    ]


def rows_e2e(d: Any) -> list[Row]:
    s = d["steady"]
    return [
        (
            "e2e",
            "burst drain (all groups idle)",
            d["burst"]["entries_per_s"],
            "entries/s",
            "",
            None,
        ),
        (
            "e2e",
            "append -> handler done p99",
            s["append_to_handler_done_ms"]["p99"],
            "ms",
            f"p50 {s['append_to_handler_done_ms']['p50']}",
            None,
        ),
        (
            "e2e",
            "append -> projected p99",
            s["append_to_projected_ms"]["p99"],
            "ms",
            f"p50 {s['append_to_projected_ms']['p50']}",
            None,
        ),
    ]


def rows_priority(d: Any) -> list[Row]:
    b = d["backlog"]
    return [
        (
            "priority",
            "CRITICAL enqueue->finish p99, 100k LOW backlog",
            b["enqueue_to_finish_ms"]["p99"],
            "ms",
            f"target < {d['target_p99_ms']}",
            d["met"],
        ),
        (
            "priority",
            "CRITICAL enqueue->finish p99, idle",
            d["idle"]["enqueue_to_finish_ms"]["p99"],
            "ms",
            "",
            None,
        ),
    ]


def rows_memory(d: Any) -> list[Row]:
    pe, bd = d["per_event"], d["bounded"]
    rss = bd["peak_rss_kB"]
    return [
        (
            "memory",
            "Redis used_memory per credit event",
            pe["used_per_credit_event_B"],
            "B",
            f"{pe['used_per_credit_event_B'] / pe['raw_xadd_used_per_entry_B']:.1f}x raw XADD",
            None,
        ),
        (
            "memory",
            "Redis used_memory per account",
            pe["used_per_account_with_registration_B"],
            "B",
            "incl. its registration event",
            None,
        ),
        (
            "memory",
            f"XLEN max with --trim-after-ms 2000 ({bd['seconds']:g} s)",
            bd["xlen_max"],
            "entries",
            f"final {bd['xlen_final']} of {bd['appended']}",
            bd["xlen_final"] < bd["appended"] / 2,
        ),
        *[
            ("memory", f"peak RSS {k}", round(v / 1024), "MiB", "", None)
            for k, v in rss.items()
            if k != "worker-2"
        ],
    ]


def rows_scaling(d: Any) -> list[Row]:
    return [
        (
            "scaling",
            f"{r['processes']} worker process(es)",
            r["tasks_per_s"],
            "tasks/s",
            f"x{r['speedup']} vs 1",
            None,
        )
        for r in d["rows"]
    ]


def rows_cluster(d: Any) -> list[Row]:
    rows: list[Row] = []
    for r in d["results"]:
        phases = {"append (batched)": r["append"], "enqueue_many": r["enqueue"]}
        phases |= {f"drain, {n} worker proc(s)": row for n, row in r["drain"].items()}
        for name, row in phases.items():
            rows.append(
                (
                    "cluster",
                    f"{name}, {r['backend']}",
                    row["per_s"],
                    "items/s",
                    f"redis {row['redis_us_per_item']} µs/item",
                    None,
                )
            )
    return rows


def rows_dependencies(d: Any) -> list[Row]:
    lat, k = d["latency_ms"], d["keepalive"]
    return [
        ("deps", "parent done -> child started, p50", round(lat["p50"], 2), "ms", "", None),
        ("deps", "parent done -> child started, p99", round(lat["p99"], 2), "ms", "", None),
        (
            "deps",
            "Redis commands per dependency",
            d["commands_per_dependency"],
            "commands",
            f"{d['script_calls_per_dependency']} script calls",
            None,
        ),
        (
            "deps",
            f"claim renewals, {k['handler_s']} s handler",
            k["renewals"],
            "XCLAIM",
            f"claim_idle {k['claim_idle_ms']} ms",
            None,
        ),
    ]


def rows_peers(d: Any) -> list[Row]:
    res, ratios, targets = d["results"], d["ratios"], d["targets"]
    t = res["dramatiq"]
    rows: list[Row] = []
    for name, label in (("ledger", "ledger"), ("ledger_many", "ledger, enqueue_many")):
        o, r = res[name], ratios[name]
        rows += [
            (
                "peers",
                f"drain, {label}",
                o["drain"]["drain_per_s"],
                "tasks/s",
                f"{r['drain']:.2f}x Dramatiq (target >= 3)",
                targets[name]["drain >= 3x dramatiq"],
            ),
            (
                "peers",
                f"CPU per task, {label}",
                o["drain"]["cpu_ms_per_task"],
                "ms",
                f"{r['cpu']:.2f}x Dramatiq (target <= 0.5)",
                targets[name]["cpu/task <= 0.5x dramatiq"],
            ),
        ]
    o = res["ledger"]
    return [
        *rows,
        ("peers", "drain, Dramatiq", t["drain"]["drain_per_s"], "tasks/s", "", None),
        ("peers", "CPU per task, Dramatiq", t["drain"]["cpu_ms_per_task"], "ms", "", None),
        (
            "peers",
            f"latency p99 at {d['latency_rate_per_s']}/s, ledger",
            o["latency"]["latency_ms"]["p99"],
            "ms",
            f"Dramatiq {t['latency']['latency_ms']['p99']}",
            None,
        ),
        *[
            ("peers", f"hash totals equal what was enqueued, {name}", ok, "", "", ok)
            for name, ok in d["totals_ok"].items()
        ],
    ]


def rows_holds(d: Any) -> list[Row]:
    spend, hold = d["rows"]
    out: list[Row] = [
        ("holds", spend["case"], spend["events_per_s"], "events/s", "", None),
        (
            "holds",
            hold["case"],
            hold["events_per_s"],
            "events/s",
            f"{hold['ratio_vs_purchase_use']:.0%} of purchase + use",
            None,
        ),
    ]
    e = d.get("expiry")
    if e:
        out.append(
            (
                "holds",
                f"{e['holds']} holds due at once: all released",
                e["seconds_to_release_all"],
                "s",
                f"{e['released_per_s']} expiries/s",
                e["released"] == e["holds"],
            )
        )
    return out


EXTRACT: dict[str, Callable[[Any], list[Row]]] = {
    "append": rows_append,
    "projection": rows_projection,
    "http": rows_http,
    "replay": rows_replay,
    "e2e": rows_e2e,
    "priority": rows_priority,
    "memory": rows_memory,
    "scaling": rows_scaling,
    "peers": rows_peers,
    "cluster": rows_cluster,
    "dependencies": rows_dependencies,
    "holds": rows_holds,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", default=",".join(MODEST))
    ap.add_argument("--full", action="store_true", help="each benchmark's own defaults")
    args = ap.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    rows: list[Row] = []
    runs: dict[str, Any] = {}
    for name in args.only.split(","):
        cmd = [sys.executable, "-m", f"bench.{name}", *([] if args.full else MODEST[name])]
        shown = " ".join(["python -m", f"bench.{name}", *cmd[3:]])
        print(f"$ {shown}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        secs = time.perf_counter() - t0
        (RESULTS / f"{name}.txt").write_text(f"$ {shown}\n{proc.stdout}{proc.stderr}")
        print(proc.stdout, end="", flush=True)
        runs[name] = {"command": shown, "seconds": round(secs, 1), "exit": proc.returncode}
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            rows.append(
                (name, "FAILED", proc.returncode, "exit", "see results/" + name + ".txt", False)
            )
            continue
        rows.extend(EXTRACT[name](_load(name)))
        print(f"({name}: {secs:.0f} s)\n", flush=True)

    print(f"{'case':<11}{'figure':<50}{'value':>10} {'unit':<9}{'ratio / target':<38}met?")
    for case, figure, value, unit, ratio, met in rows:
        v = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        m = "" if met is None else ("yes" if met else "NO")
        print(f"{case:<11}{figure:<50}{v:>10} {unit:<9}{ratio:<38}{m}")
    (RESULTS / "all.json").write_text(
        json.dumps(
            {
                "runs": runs,
                "rows": [
                    dict(zip(("case", "figure", "value", "unit", "ratio", "met"), r, strict=True))
                    for r in rows
                ],
            },
            indent=2,
        )
    )
    return 0 if all(r["exit"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
