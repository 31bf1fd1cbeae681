"""`python -m bench`: floors first, then S1-S7, the merge gate, the metering proxy per streamed
event and one stage by the real claude, then one table of measured / floor (or, with --json, the
same rows as JSON)."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench import agent_stage, merge_rate, proxy_latency
from bench import floors as fl
from bench import rows as rw
from bench import s1_throughput as s1
from bench import s2_latency as s2
from bench import s3_fairness as s3
from bench import s4_overhead as s4
from bench import s5_detection as s5
from bench import s6_recovery as s6
from bench.common import NA, Row, abba, failed, missing, postgres, render

WORKLOADS = ("S1", "S2", "S3", "S4", "S5", "S6", "S7", "merge", "proxy", "agent")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Plan:
    """The sizes of one run: the full suite, or --quick's smoke sizes."""

    s1_tasks: int
    s1_slots: list[int]
    s2_events: int  # per store and kind of event
    s2_cold: int  # cold events per store, each after a minute of idle
    s3_tasks: int
    s3_scale: float
    s3_rounds: int
    s4_counts: list[int]
    s4_settle_s: float
    s4_window_s: float
    s5_agents: int
    s5_kills: int
    s5_stops: int
    s5_restarts: int
    s5_stall_s: float
    s5_grace_s: float
    s6_sizes: list[int]
    s7_sizes: list[int]
    s6_rounds: int
    s6_running: int
    s6_queued: int
    s7_requests: int
    merge_tickets: int
    merge_test_s: float
    proxy_events: int  # per stream, 2 ms apart
    agent_rounds: int


def plan(args: argparse.Namespace) -> Plan:
    quick, rounds = args.quick, args.rounds
    if quick:
        p = Plan(
            s1_tasks=5, s1_slots=[1, 10], s2_events=3, s2_cold=0,
            s3_tasks=20, s3_scale=0.05, s3_rounds=1,
            s4_counts=[0, 5], s4_settle_s=0.3, s4_window_s=1.0,
            s5_agents=4, s5_kills=2, s5_stops=2, s5_restarts=1, s5_stall_s=1.0, s5_grace_s=0.5,
            s6_sizes=[1000, 2000], s7_sizes=[1000, 2000], s6_rounds=1, s6_running=4, s6_queued=1,
            s7_requests=32, merge_tickets=3, merge_test_s=0.5, proxy_events=50, agent_rounds=1,
        )  # fmt: skip
    else:
        # smaller than BENCHMARKS.md's sizes where the exact ones would take the full run past
        # a quarter of an hour here; the options below give them back (docs/benchmarks.md)
        p = Plan(
            s1_tasks=max(10, math.ceil(125 / rounds)), s1_slots=[1, 10, 50], s2_events=40,
            s2_cold=3, s3_tasks=60, s3_scale=0.5, s3_rounds=1,
            s4_counts=[0, 10, 50], s4_settle_s=3.0, s4_window_s=10.0,
            s5_agents=50, s5_kills=20, s5_stops=20, s5_restarts=2, s5_stall_s=5.0,
            s5_grace_s=10.0,
            s6_sizes=[1000, 10000, 100000], s7_sizes=[1000, 10000], s6_rounds=2, s6_running=50,
            s6_queued=10, s7_requests=600, merge_tickets=15, merge_test_s=0.5,
            proxy_events=500, agent_rounds=3,
        )  # fmt: skip
    if args.s1_tasks:
        p.s1_tasks = args.s1_tasks
    if args.s1_slots:
        p.s1_slots = [int(s) for s in args.s1_slots.split(",") if s.strip()]
    if args.s2_tickets:
        p.s2_events = args.s2_tickets
    if args.s2_cold is not None:
        p.s2_cold = args.s2_cold
    if args.s3_tasks:
        p.s3_tasks = args.s3_tasks
    if args.s3_scale:
        p.s3_scale = args.s3_scale
    if args.s4_window:
        p.s4_window_s = args.s4_window
    if args.s6_sizes:
        p.s6_sizes = [int(s) for s in args.s6_sizes.split(",") if s.strip()]
        p.s7_sizes = [s for s in p.s7_sizes if s in p.s6_sizes] or p.s6_sizes[:2]
    if args.s6_rounds:
        p.s6_rounds = args.s6_rounds
    if args.s7_requests:
        p.s7_requests = args.s7_requests
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every row")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list instead")
    p.add_argument(
        "--rounds", type=int, default=None, help="ABBA rounds, medians reported (5; 1 with --quick)"
    )
    p.add_argument(
        "--only",
        default="",
        help=f"comma-separated workloads to run, of {','.join(WORKLOADS)} (default: all)",
    )
    p.add_argument(
        "--pg-url",
        default=None,
        help="PostgreSQL URL (default: $ORCH_BENCH_PG_URL, else a throwaway database on "
        "postgresql://postgres@127.0.0.1:5432/postgres; PG rows are n/a if none is reachable)",
    )
    p.add_argument("--s1-tasks", type=int, default=None, help="S1 tasks per run")
    p.add_argument("--s1-slots", default=None, help="S1 worker slots, comma-separated (1,10,50)")
    p.add_argument(
        "--s2-tickets", type=int, default=None, help="S2 events per store and kind (40; 3 quick)"
    )
    p.add_argument(
        "--s2-cold",
        type=int,
        default=None,
        help="S2 cold events per store, each after 60 s idle (3; 0 quick; BENCHMARKS: 20)",
    )
    p.add_argument(
        "--s2-rate", type=float, default=None, help="S2 Poisson rate, events/s (2; 4 quick)"
    )
    p.add_argument("--s3-tasks", type=int, default=None, help="S3 tasks (60; BENCHMARKS: 100)")
    p.add_argument(
        "--s3-scale", type=float, default=None, help="S3 stage durations x (0.5; BENCHMARKS: 1)"
    )
    p.add_argument(
        "--s4-window", type=float, default=None, help="S4 window, seconds (10; BENCHMARKS: 60)"
    )
    p.add_argument("--s6-sizes", default=None, help="S6 task counts (1000,10000,100000)")
    p.add_argument("--s6-rounds", type=int, default=None, help="S6 restarts per size (2)")
    p.add_argument(
        "--s7-requests", type=int, default=None, help="S7 GETs per endpoint and mode (600)"
    )
    p.add_argument("--skip-agent", action="store_true", help="leave out the real claude's row")
    p.add_argument("--skip-s1", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--skip-s2", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    if args.s2_rate is None:
        args.s2_rate = 4.0 if args.quick else 2.0
    args.rounds = max(1, args.rounds)
    return args


def _terminate(signum: int, _frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C, so every `finally` stops its servers and removes its files
    raise SystemExit(128 + signum)


def _each(stores: list[str], label: str, fn: Callable[[str], object]) -> dict[str, object]:
    """fn(store) for each store; a failure is that store's row, not the end of the run."""
    out: dict[str, object] = {}
    for store in stores:
        log(f"{label}: {store}")
        try:
            out[store] = fn(store)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            out[store] = failed(exc)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    only = {w.strip() for w in args.only.split(",") if w.strip()} or set(WORKLOADS)
    for flag, workload in ((args.skip_agent, "agent"), (args.skip_s1, "S1"), (args.skip_s2, "S2")):
        if flag:
            only.discard(workload)
    p = plan(args)
    rounds = args.rounds
    header = [
        f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        f"mode: {'quick' if args.quick else 'full'}, {rounds} ABBA round(s), medians",
    ]
    rows: list[Row] = []
    with postgres(args.pg_url) as (pg_url, pg_note):
        header.append(pg_note)
        log(pg_note)
        stores = ["sqlite"] + (["pg"] if pg_url else [])
        no_pg = f"{NA}{pg_note}"

        def pg_missing(workload: str) -> None:
            if not pg_url:
                rows.append(missing(workload, "every metric", "pg", no_pg))

        log("floors: commit, spawn, SQL, HTTP, import, bare supervisor")
        floors = fl.measure(pg_url, max(rounds, 3), args.quick)
        rows += rw.floor_rows(floors)

        if "S1" in only:
            s1_stores = ["sqlite-normal", "sqlite-full"] + (["pg"] if pg_url else [])
            configs = [(store, c) for store in s1_stores for c in p.s1_slots]
            results: dict[tuple[str, int], list] = {}
            for r, config in abba(configs, rounds):
                store, c = config  # type: ignore[misc]
                log(f"S1 round {r + 1}/{rounds}: {store} C={c}, {p.s1_tasks} tasks")
                try:
                    res: s1.S1Result | str = s1.run(store, c, p.s1_tasks, pg_url)
                except Exception as exc:  # a failed configuration is a row, not a crash
                    traceback.print_exc(file=sys.stderr)
                    res = failed(exc)
                results.setdefault((store, c), []).append(res)
            rows += rw.s1_rows(floors, configs, results)
            pg_missing("S1")

        if "S2" in only:
            log(f"S2: {p.s2_events} events per store and kind at {args.s2_rate}/s")
            s2_results: dict[tuple[str, str], s2.S2Result | str]
            try:
                s2_results = dict(
                    s2.run(stores, p.s2_events, args.s2_rate, rounds, pg_url, cold=p.s2_cold)
                )
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                s2_results = {(s, k): failed(exc) for s in stores for k in s2.SOURCES}
            rows += rw.s2_rows(floors, s2_results)
            pg_missing("S2")
            pg_missing("S2 plane")
            if not p.s2_cold:
                rows += [
                    rw.missing("S2 cold", "event->agent start p50 ms", s, "n/a: not run (--quick)")
                    for s in stores
                ]

        if "S3" in only:
            s3_results: dict[tuple[str, str], list] = {}
            configs3 = [(s, v) for v in ("uniform", "skewed") for s in stores]
            for r, config in abba(configs3, p.s3_rounds):
                store, variant = config  # type: ignore[misc]
                log(f"S3 round {r + 1}/{p.s3_rounds}: {store} {variant}, {p.s3_tasks} tasks")
                kind = "sqlite-normal" if store == "sqlite" else store
                try:
                    res3: s3.S3Result | str = s3.run(kind, variant, p.s3_tasks, p.s3_scale, pg_url)
                except Exception as exc:
                    traceback.print_exc(file=sys.stderr)
                    res3 = failed(exc)
                s3_results.setdefault((store, variant), []).append(res3)
            rows += rw.s3_rows(s3_results)
            pg_missing("S3")

        if "S4" in only:
            s4_results = _each(
                stores,
                f"S4 agents {p.s4_counts}, window {p.s4_window_s:g} s",
                lambda s: s4.run(s, pg_url, p.s4_counts, p.s4_settle_s, p.s4_window_s),
            )
            rows += rw.s4_rows(floors, s4_results)  # type: ignore[arg-type]
            pg_missing("S4")

        if "S5" in only:
            s5_results = _each(
                stores,
                f"S5 {p.s5_agents} agents, stall {p.s5_stall_s:g} s",
                lambda s: s5.run(
                    s, pg_url, p.s5_agents, p.s5_kills, p.s5_stops, p.s5_restarts,
                    p.s5_stall_s, p.s5_grace_s,
                ),
            )  # fmt: skip
            rows += rw.s5_rows(floors, s5_results)  # type: ignore[arg-type]
            pg_missing("S5")

        if "S6" in only or "S7" in only:
            log(f"S6/S7: sizes {p.s6_sizes}, {p.s6_running} running + {p.s6_queued} queued")
            s6_results: dict[str, s6.S6Result | str]
            try:
                s6_results = dict(
                    s6.run(
                        stores, pg_url, p.s6_sizes, p.s7_sizes if "S7" in only else [],
                        p.s6_rounds, p.s6_running, p.s6_queued, p.s7_requests,
                    )
                )  # fmt: skip
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                s6_results = {s: failed(exc) for s in stores}
            if "S6" in only:
                rows += rw.s6_rows(floors, s6_results)
                pg_missing("S6")
            if "S7" in only:
                rows += rw.s7_rows(floors, s6_results)
                pg_missing("S7")

        if "merge" in only:
            merge_results = _each(
                stores,
                f"merge gate: {p.merge_tickets} tickets, test sleep {p.merge_test_s:g}",
                lambda s: merge_rate.run(s, pg_url, p.merge_tickets, p.merge_test_s),
            )
            rows += rw.merge_rows(merge_results)  # type: ignore[arg-type]
            pg_missing("merge gate")

        if "proxy" in only:
            log(f"proxy: {p.proxy_events} streamed events a stream, {rounds} ABBA round(s)")
            try:
                rows += rw.proxy_rows(proxy_latency.run(rounds, p.proxy_events))
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                rows += rw.proxy_rows(failed(exc))

        if "agent" in only:
            log(f"agent: one development stage by the real claude, {p.agent_rounds} round(s)")
            rows += rw.agent_rows(agent_stage.run(p.agent_rounds))

    header.append(f"total {time.monotonic() - started:.0f} s")
    header.append(
        "ratio = measured / floor (floors measured first in this run). S1 floor T* = "
        "min(commit/6, stub spawn rate x min(C, CPUs)); S2 floor = GET /ping + stub "
        "Popen..1st instruction at the same percentile"
    )
    log(f"done in {time.monotonic() - started:.0f} s")
    if args.json:
        for line in header:
            log(line)
        print(json.dumps([r.as_json() for r in rows], indent=1))
    else:
        render(rows, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
