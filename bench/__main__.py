"""`python -m bench`: floors first, then S1, S2 and one stage by the real claude, then one table
of measured / floor."""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Sequence

from bench import agent_stage
from bench import floors as fl
from bench import s1_throughput as s1
from bench import s2_latency as s2
from bench.common import Row, abba, fmt, median, percentile, postgres, render


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run under ~60 s")
    p.add_argument(
        "--rounds", type=int, default=None, help="ABBA rounds, medians reported (5; 1 with --quick)"
    )
    p.add_argument(
        "--pg-url",
        default=None,
        help="PostgreSQL URL (default: $ORCH_BENCH_PG_URL, else a throwaway database on "
        "postgresql://postgres@127.0.0.1:5432/postgres; PG rows are skipped if none is reachable)",
    )
    p.add_argument(
        "--s1-tasks",
        type=int,
        default=None,
        help="S1 tasks per run (default: 200 spread over the rounds, i.e. 200/rounds per run; "
        "20 with --quick)",
    )
    p.add_argument(
        "--s1-slots", default=None, help="S1 worker slots, comma-separated (default 1,10,50)"
    )
    p.add_argument(
        "--s2-tickets",
        type=int,
        default=None,
        help="S2 tickets per store (default 100; 10 with --quick)",
    )
    p.add_argument("--s2-rate", type=float, default=2.0, help="S2 Poisson rate, tickets/s (2)")
    p.add_argument("--skip-s1", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--skip-s2", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--skip-agent", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    args.rounds = max(1, args.rounds)
    return args


def floor_rows(f: fl.Floors) -> list[Row]:
    rows = [
        Row("floor (a) commit, SQLite WAL NORMAL", f.commit["sqlite-normal"], "/s"),
        Row("floor (a) commit, SQLite WAL FULL", f.commit["sqlite-full"], "/s"),
    ]
    if "pg" in f.commit:
        rows.append(Row("floor (a) commit, PostgreSQL", f.commit["pg"], "/s"))
    rows += [
        Row(
            "floor (d) spawn /bin/true",
            f.true_spawn_rate,
            "/s",
            note=f"Popen..reaped p50 {median(f.true_s) * 1e3:.2f} ms",
        ),
        Row(
            "floor (d) spawn stub (python -I -S)",
            f.stub_spawn_rate,
            "/s",
            note=f"Popen..reaped p50 {median(f.stub_s) * 1e3:.1f} ms; Popen..1st instruction "
            f"p50/p99 {median(f.stub_start_s) * 1e3:.1f}/{percentile(f.stub_start_s, 99) * 1e3:.1f}"
            " ms",
        ),
        Row(
            "floor (i) HTTP GET /ping p50",
            median(f.ping_s) * 1e3,
            "ms",
            note=f"keep-alive, p99 {percentile(f.ping_s, 99) * 1e3:.2f} ms",
        ),
    ]
    return rows


def s1_rows(
    f: fl.Floors, configs: list[tuple[str, int]], results: dict[tuple[str, int], list]
) -> list[Row]:
    rows = []
    for store, slots in configs:
        runs = results.get((store, slots), [])
        name = f"S1 {store} C={slots}"
        ok = [r for r in runs if not isinstance(r, str)]
        errors = [r for r in runs if isinstance(r, str)]
        if not ok:
            rows.append(Row(name, math.nan, "tr/s", note=f"failed: {errors[0] if errors else '?'}"))
            continue
        s = s1.summary(ok)
        notes = [
            f"exit->next spawn p50/p99 {fmt(s['gap_p50_ms'])}/{fmt(s['gap_p99_ms'])} ms",
            f"{fmt(s['txns'])} txn/tr",
            f"{fmt(s['statements'])} statements/tr",
            f"{fmt(s['cpu_ms'])} CPU-ms/tr",
            f"{len(ok)}x{ok[0].tasks} tasks",
        ]
        bad = [r.note for r in ok if r.note]
        if bad:
            notes.append(bad[0])
        if errors:
            notes.append(f"{len(errors)} run(s) failed: {errors[0]}")
        rows.append(Row(name, s["rate"], "tr/s", f.s1_floor(store, slots), note="; ".join(notes)))
    return rows


def s2_rows(f: fl.Floors, results: dict[str, s2.S2Result | str]) -> list[Row]:
    rows = []
    for store, res in results.items():
        if isinstance(res, str):
            rows.append(Row(f"S2 {store} p50", math.nan, "ms", note=f"failed: {res}"))
            continue
        lat = res.latencies_s
        extra = []
        if res.missing:
            extra.append(f"{res.missing} never started")
        if res.errors:
            extra.append(f"{len(res.errors)} HTTP errors: {res.errors[0]}")
        rows += [
            Row(
                f"S2 {store} p50",
                median(lat) * 1e3,
                "ms",
                f.s2_floor(50) * 1e3,
                note="; ".join(
                    [f"n={len(lat)}", f"HTTP ack p50 {median(res.acks_s) * 1e3:.1f} ms", *extra]
                ),
            ),
            Row(
                f"S2 {store} p99",
                percentile(lat, 99) * 1e3,
                "ms",
                f.s2_floor(99) * 1e3,
                note=f"HTTP ack p99 {percentile(res.acks_s, 99) * 1e3:.1f} ms",
            ),
            Row(
                f"S2 {store} max",
                max(lat) * 1e3 if lat else math.nan,
                "ms",
                (max(f.ping_s) + max(f.stub_start_s)) * 1e3,
                note="floor: max ping + max stub start",
            ),
        ]
    return rows


def agent_rows(res: agent_stage.StageResult | str) -> list[Row]:
    if isinstance(res, str):
        return [Row("agent: claude stage p50", math.nan, "ms", note=f"failed: {res}")]
    overhead = median(res.orch_s) - median(res.bare_s)
    return [
        Row(
            "agent: claude stage p50",
            median(res.orch_s) * 1e3,
            "ms",
            median(res.bare_s) * 1e3,
            higher_is_better=False,
            note=f"n={len(res.orch_s)} after a warm-up each; orch adds {overhead * 1e3:.0f} ms"
            f" at the median (claim, worktree, commit, push, store); {res.events} events read",
        )
    ]


def _terminate(signum: int, _frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C, so every `finally` stops its servers and removes its files
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    quick = args.quick
    rounds = args.rounds
    started = time.monotonic()
    notes = [
        f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        f"mode: {'quick' if quick else 'full'}, {rounds} ABBA round(s), medians",
    ]
    with postgres(args.pg_url) as (pg_url, pg_note):
        notes.append(pg_note)
        log(pg_note)
        log("floors: commit, spawn, HTTP")
        floors = fl.measure(pg_url, max(rounds, 3), quick)
        rows = floor_rows(floors)

        stores = ["sqlite-normal", "sqlite-full"] + (["pg"] if pg_url else [])
        if not args.skip_s1:
            if args.s1_slots:
                slots = [int(s) for s in args.s1_slots.split(",") if s.strip()]
            else:
                slots = [1, 10] if quick else [1, 10, 50]
            per_run = args.s1_tasks or (20 if quick else max(10, math.ceil(200 / rounds)))
            configs = [(store, c) for store in stores for c in slots]
            results: dict[tuple[str, int], list] = {}
            for r, config in abba(configs, rounds):
                store, c = config  # type: ignore[misc]
                log(f"S1 round {r + 1}/{rounds}: {store} C={c}, {per_run} tasks")
                try:
                    res: s1.S1Result | str = s1.run(store, c, per_run, pg_url)
                except Exception as exc:  # a failed configuration is a row, not a crash
                    traceback.print_exc(file=sys.stderr)
                    res = f"{type(exc).__name__}: {exc}"[:120]
                results.setdefault((store, c), []).append(res)
            rows += s1_rows(floors, configs, results)

        if not args.skip_s2:
            s2_stores = ["sqlite"] + (["pg"] if pg_url else [])
            n = args.s2_tickets or (10 if quick else 100)
            log(f"S2: {n} tickets per store at {args.s2_rate}/s, stores {', '.join(s2_stores)}")
            s2_results: dict[str, s2.S2Result | str]
            try:
                s2_results = dict(s2.run(s2_stores, n, args.s2_rate, rounds, pg_url))
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                s2_results = {s: f"{type(exc).__name__}: {exc}"[:160] for s in s2_stores}
            rows += s2_rows(floors, s2_results)

        if not args.skip_agent:
            log(f"agent: one development stage by the real claude, {max(rounds, 2)} round(s)")
            rows += agent_rows(agent_stage.run(max(rounds, 2)))

    notes.append(f"total {time.monotonic() - started:.0f} s")
    notes.append(
        "ratio = measured / floor. S1 floor T* = min(commit/6, stub spawn rate x min(C, CPUs)); "
        "S2 floor = HTTP /ping + stub Popen..1st instruction, same percentile; "
        "agent floor = the same claude run bare against the same scripted model server"
    )
    for note in notes:
        print(note)
    print()
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
