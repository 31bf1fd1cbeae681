"""Each workload's results as rows of the table: figure, floor measured in the same run, target.

Targets are BENCHMARKS.md's, written as text; a floor is a number of the same unit as the
figure, so that ratio = measured / floor."""

from __future__ import annotations

import math

from bench import (
    merge_rate,
    proxy_latency,
    s1_throughput,
    s2_latency,
    s3_fairness,
    s4_overhead,
    s5_detection,
)
from bench import s6_recovery as s6
from bench.agent_stage import StageResult
from bench.common import NA, Row, fmt, median, missing, percentile
from bench.floors import Floors


def _ms(values: list[float], q: float = 50) -> float:
    return (median(values) if q == 50 else percentile(values, q)) * 1e3


def floor_rows(f: Floors) -> list[Row]:
    rows = [Row("floor", "(a) commits/s", store, rate) for store, rate in f.commit.items()]
    rows += [
        Row("floor", "(d) spawn /bin/true /s", "-", f.true_spawn_rate),
        Row(
            "floor",
            "(d) spawn stub /s",
            "-",
            f.stub_spawn_rate,
            note=f"Popen..1st instruction p50/p99 {_ms(f.stub_start_s):.1f}/"
            f"{_ms(f.stub_start_s, 99):.1f} ms",
        ),
    ]
    rows += [
        Row("floor", "(g) SELECT by key p50 ms", store, _ms(s), note=f"p99 {_ms(s, 99):.3f} ms")
        for store, s in f.sql_s.items()
    ]
    rows += [
        Row("floor", "(i) GET /ping p50 ms", "-", _ms(f.ping_s)),
        Row("floor", "(i) GET /ping p99 ms", "-", _ms(f.ping_s, 99)),
        Row("floor", "S4 bare supervisor KB/child", "-", f.supervisor.get("rss_kb")),
        Row("floor", "S5 bare waitpid wake ms", "-", _ms(f.reaped_s), note="SIGKILL .. reaped"),
        Row("floor", "S6 import orch ms", "-", _ms(f.import_s), note=s6_import_note()),
    ]
    return rows


def s6_import_note() -> str:
    return "exec .. exit of python -c 'import orch.cli, orch.bootstrap, orch.web.app'"


# -- S1 ------------------------------------------------------------------------------------------


def s1_rows(
    f: Floors, configs: list[tuple[str, int]], results: dict[tuple[str, int], list]
) -> list[Row]:
    rows = []
    for store, slots in configs:
        runs = results.get((store, slots), [])
        ok = [r for r in runs if not isinstance(r, str)]
        errors = [r for r in runs if isinstance(r, str)]
        metric = f"transitions/s C={slots}"
        if not ok:
            rows.append(missing("S1", metric, store, errors[0] if errors else "error: no run"))
            continue
        s = s1_throughput.summary(ok)
        notes = [
            f"exit->next spawn p50 {fmt(s['gap_p50_ms'])} ms",
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
        rows.append(
            Row(
                "S1",
                metric,
                store,
                s["rate"],
                f.s1_floor(store, slots),
                "≥0.25·T*",
                "; ".join(notes),
            )
        )
        rows.append(
            Row(
                "S1",
                f"exit->next start p99 ms C={slots}",
                store,
                s["gap_p99_ms"],
                None,
                "≤20 ms",
            )
        )
    return rows


# -- S2 ------------------------------------------------------------------------------------------


def s2_rows(f: Floors, results: dict[tuple[str, str], s2_latency.S2Result | str]) -> list[Row]:
    rows = []
    for (store, source), res in results.items():
        if source == s2_latency.COLD:
            rows += _s2_cold_rows(store, res, results.get((store, "api")))
            continue
        workload = "S2" if source == "api" else "S2 plane"
        what = "POST /api/v1/tasks" if source == "api" else "signed POST /webhooks/plane"
        if isinstance(res, str):
            rows.append(missing(workload, "event->agent start p50 ms", store, res))
            continue
        lat = res.latencies_s
        extra = [
            f"n={len(lat)}, {what}",
            f"HTTP ack p50/p99 {_ms(res.acks_s):.1f}/{_ms(res.acks_s, 99):.1f} ms",
        ]
        if res.missing:
            extra.append(f"{res.missing} never started")
        if res.errors:
            extra.append(f"{len(res.errors)} HTTP errors: {res.errors[0]}")
        rows += [
            Row(
                workload,
                "event->agent start p50 ms",
                store,
                _ms(lat),
                f.s2_floor(50) * 1e3,
                "≤3x floor, ≤10 ms",
                "; ".join(extra),
            ),
            Row(
                workload,
                "event->agent start p99 ms",
                store,
                _ms(lat, 99),
                f.s2_floor(99) * 1e3,
                "≤10x floor, ≤30 ms",
            ),
            Row(
                workload,
                "event->agent start max ms",
                store,
                max(lat) * 1e3 if lat else None,
                (max(f.ping_s) + max(f.stub_start_s)) * 1e3,
                None,
                "floor: max ping + max stub start",
                why="" if lat else "error: no event started an agent",
            ),
        ]
        # where the time goes, cut where the store recorded the event's way
        for metric, values, floor, note in (
            ("request->task recorded p50 ms", res.filed_s, f.ping_s, "floor: GET /ping"),
            ("task->agent handed its command p50 ms", res.handed_s, None, "claim, worktree, spawn"),
            (
                "handed->agent's 1st instruction p50 ms",
                res.exec_s,
                f.stub_start_s,
                "floor: stub Popen->1st instruction",
            ),
        ):
            rows.append(
                Row(
                    workload,
                    metric,
                    store,
                    _ms(values) if values else None,
                    _ms(floor) if floor else None,
                    None,
                    note,
                    why="" if values else "error: no run was recorded",
                )
            )
    return rows


def _s2_cold_rows(
    store: str, res: s2_latency.S2Result | str, warm: s2_latency.S2Result | str | None
) -> list[Row]:
    """The cold events beside the warm ones: the floor is the warm p50."""
    if isinstance(res, str):
        return [missing("S2 cold", "event->agent start p50 ms", store, res)]
    lat = res.latencies_s
    warm_p50 = _ms(warm.latencies_s) if isinstance(warm, s2_latency.S2Result) else None
    note = f"n={len(lat)} after 60 s idle each; floor: the warm events' p50"
    return [
        Row(
            "S2 cold",
            "event->agent start p50 ms",
            store,
            _ms(lat) if lat else None,
            warm_p50,
            "≤1.2x warm",
            note,
            why="" if lat else "error: no cold event started an agent",
        ),
        Row(
            "S2 cold",
            "event->agent start max ms",
            store,
            max(lat) * 1e3 if lat else None,
            warm_p50,
            None,
            why="" if lat else "error: no cold event started an agent",
        ),
    ]


# -- S3 ------------------------------------------------------------------------------------------


def s3_rows(results: dict[tuple[str, str], list[s3_fairness.S3Result | str]]) -> list[Row]:
    rows = []
    for (store, variant), runs in results.items():
        ok = [r for r in runs if not isinstance(r, str)]
        errors = [r for r in runs if isinstance(r, str)]
        if not ok:
            rows.append(missing("S3", f"{variant}: violations", store, errors[0]))
            continue
        first = [max(r.first_dispatch_s) for r in ok if r.first_dispatch_s]
        note = f"{len(ok)} run(s) of {ok[0].tasks} tasks x 3 stages, C={s3_fairness.SLOTS}"
        bad = [r.note for r in ok if r.note] + errors
        if bad:
            note += f"; {bad[0]}"
        stage = ok[0].stage_s
        rows += [
            Row(
                "S3",
                f"{variant}: violations",
                store,
                median([float(r.violations) for r in ok]),
                None,
                "0",
                note,
            ),
            Row(
                "S3",
                f"{variant}: makespan s",
                store,
                median([r.makespan_s for r in ok]),
                median([r.lower_bound_s for r in ok]),
                "≤1.10·LB",
                "floor = LB",
            ),
            Row(
                "S3",
                f"{variant}: Jain index",
                store,
                median([r.jain for r in ok]),
                1.0,
                "≥0.95",
                "agent-seconds per repository while every repository had work",
            ),
            Row(
                "S3",
                f"{variant}: idle eligible slot-time %",
                store,
                median([r.idle_share * 100 for r in ok]),
                None,
                "≤1%",
            ),
            Row(
                "S3",
                f"{variant}: last repo's first start s",
                store,
                median(first) if first else None,
                None,
                f"≤ one stage ({stage:g} s) after a free slot" if variant == "skewed" else None,
                why="" if first else "error: no stub ran",
            ),
        ]
    return rows


# -- S4 ------------------------------------------------------------------------------------------


def s4_rows(f: Floors, results: dict[str, s4_overhead.S4Result | str]) -> list[Row]:
    rows = []
    for store, res in results.items():
        if isinstance(res, str):
            rows.append(missing("S4", "RSS KB/agent", store, res))
            continue
        if len(res.points) < 2:
            rows.append(missing("S4", "RSS KB/agent", store, f"error: {res.note or 'no points'}"))
            continue
        p0, pn = res.points[0], res.points[-1]
        n = pn.agents
        shown = ", ".join(
            f"{p.agents}: {p.rss_kb / 1024:.0f} MB/{p.threads:.0f} thr/{p.fds:.0f} fds"
            for p in res.points
        )
        sup = f.supervisor
        heartbeat = n / s4_overhead.HEARTBEAT_S
        writes_note = (
            "data_version changes, 10 ms polls"
            if store != "pg"
            else (
                f"xact_commit, reads included; rows written/s {pn.rows_per_s:.2f} at {n}, "
                f"{p0.rows_per_s:.2f} at 0"
            )
        )
        rows += [
            Row(
                "S4",
                "RSS KB/agent",
                store,
                res.slope("rss_kb"),
                sup.get("rss_kb"),
                "≤200 KB",
                f"{shown}; window {res.window_s:g} s" + (f"; {res.note}" if res.note else ""),
            ),
            Row("S4", "threads/agent", store, res.slope("threads"), sup.get("threads"), "≤2"),
            Row("S4", "fds/agent", store, res.slope("fds"), sup.get("fds"), None),
            Row(
                "S4",
                f"CPU % of a core, {n} agents",
                store,
                pn.cpu_pct,
                None,
                "≤1% at 50 agents",
                f"{p0.cpu_pct:.2f}% at 0 agents",
            ),
            Row(
                "S4",
                "store writes/s, 0 agents",
                store,
                p0.writes_per_s,
                None,
                "0 (heartbeats only)",
                writes_note,
            ),
            Row(
                "S4",
                f"store writes/s, {n} agents",
                store,
                pn.writes_per_s,
                heartbeat,
                "heartbeats only",
                f"floor: {n} agents / {s4_overhead.HEARTBEAT_S:g} s heartbeat",
            ),
        ]
    return rows


# -- S5 ------------------------------------------------------------------------------------------


def s5_rows(f: Floors, results: dict[str, s5_detection.S5Result | str]) -> list[Row]:
    rows = []
    for store, res in results.items():
        if isinstance(res, str):
            rows.append(missing("S5", "(i) SIGKILL detection p50 ms", store, res))
            continue
        det = s5_detection.summary
        kills, stops, restarts = (
            det(res.kills, "detected_s"),
            det(res.stops, "detected_s"),
            det(res.restarts, "detected_s"),
        )
        rec = det(res.kills, "recovered_s")
        head = f"{res.agents} agents; {len(kills)}/{len(res.kills)} kills detected"
        if res.note:
            head += f"; {res.note}"
        ready = det(res.restarts, "ready_s")
        rows += [
            Row(
                "S5",
                "(i) SIGKILL detection p50 ms",
                store,
                _ms(kills) if kills else None,
                _ms(f.reaped_s),
                None,
                head,
                why="" if kills else "error: none detected",
            ),
            Row(
                "S5",
                "(i) SIGKILL detection p99 ms",
                store,
                _ms(kills, 99) if kills else None,
                _ms(f.reaped_s, 99),
                "≤100 ms",
                why="" if kills else "error: none detected",
            ),
            Row(
                "S5",
                "(i) SIGKILL recovery p50 ms",
                store,
                _ms(rec) if rec else None,
                None,
                None,
                "next attempt's start; holds the retry backoff (backoff_base_s 1 s)",
                why="" if rec else "error: no retry started",
            ),
            Row(
                "S5",
                "(ii) SIGSTOP detection p50 s",
                store,
                median(stops) if stops else None,
                res.stall_s,
                f"≤ stall + 1 s = {res.stall_s + 1:g} s",
                f"stall_s {res.stall_s:g}, kill_grace_s {res.grace_s:g}; "
                f"{len(stops)}/{len(res.stops)} detected; "
                f"max {max(stops) if stops else math.nan:.2f} s",
                why="" if stops else "error: none detected",
            ),
            Row(
                "S5",
                "(iii) orch killed: detection s",
                store,
                median(restarts) if restarts else None,
                median(ready) if ready else None,
                "≤ S6 ready + 1 s",
                f"{len(restarts)} restart(s); floor = this restart's exec->ready",
                why="" if restarts or not res.restarts else "error: none detected",
            )
            if res.restarts
            else missing("S5", "(iii) orch killed: detection s", store, f"{NA}no restart was run"),
            Row(
                "S5",
                "duplicate advances",
                store,
                float(res.duplicates),
                None,
                "0",
                f"{res.not_done} task(s) not done after release"
                if res.not_done
                else "live stubs per ticket after each fault, transitions into done per task",
            ),
        ]
    return rows


# -- S6 and S7 ------------------------------------------------------------------------------------


def _size(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def s6_rows(f: Floors, results: dict[str, s6.S6Result | str]) -> list[Row]:
    rows = []
    floor = _ms(f.import_s)
    for store, res in results.items():
        if isinstance(res, str):
            rows.append(missing("S6", "exec->ready ms", store, res))
            continue
        ready_by_size = {}
        for size, restarts in sorted(res.restarts.items()):
            ready = [r.ready_s for r in restarts if r.ready_s is not None]
            orphans = [r.orphans_s for r in restarts if r.orphans_s is not None]
            spawn = [r.first_spawn_s for r in restarts if r.first_spawn_s is not None]
            ready_ms = median(ready) * 1e3 if ready else None
            ready_by_size[size] = ready_ms
            tag = _size(size)
            fill = res.fill_s.get(size, 0.0)
            rows += [
                Row(
                    "S6",
                    f"exec->ready ms @{tag}",
                    store,
                    ready_ms,
                    floor,
                    "≤1.5x import floor",
                    f"{len(restarts)} restart(s); copies written in {fill:.1f} s"
                    + (f"; {res.note}" if res.note else ""),
                ),
                Row(
                    "S6",
                    f"exec->orphans reconciled ms @{tag}",
                    store,
                    median(orphans) * 1e3 if orphans else None,
                    None,
                    "≤ ready + 100 ms",
                    why="" if orphans else "error: orphans still running after 60 s",
                ),
                Row(
                    "S6",
                    f"exec->first spawn ms @{tag}",
                    store,
                    median(spawn) * 1e3 if spawn else None,
                    None,
                    "≤ ready + 50 ms",
                    why="" if spawn else "error: no agent started within 60 s",
                ),
            ]
        sizes = sorted(s for s, v in ready_by_size.items() if v)
        if len(sizes) >= 2:
            lo, hi = sizes[0], sizes[-1]
            rows.append(
                Row(
                    "S6",
                    f"ready growth {_size(lo)}->{_size(hi)} x",
                    store,
                    ready_by_size[hi] / ready_by_size[lo],
                    None,
                    "≤1.2x",
                )  # type: ignore[operator]
            )
    return rows


ENDPOINTS = {"state": "GET /state", "task": "GET /tasks/{key}"}


def s7_rows(f: Floors, results: dict[str, s6.S6Result | str]) -> list[Row]:
    rows = []
    for store, res in results.items():
        if isinstance(res, str):
            rows.append(missing("S7", "GET /api/v1/state p50 ms", store, res))
            continue
        p50_by: dict[tuple[str, str], dict[int, float]] = {}
        for (size, endpoint, mode), api in sorted(res.api.items()):
            name = f"{ENDPOINTS[endpoint]} {'seq' if mode == 'seq' else '8 conc'}"
            tag = _size(size)
            if not api.latencies_s:
                rows.append(missing("S7", f"{name} p50 ms @{tag}", store, "error: no answer"))
                continue
            p50, p99, size_b = s6.quantiles(api)
            p50_by.setdefault((endpoint, mode), {})[size] = p50
            err = f"; {api.errors} error(s)" if api.errors else ""
            rows += [
                Row(
                    "S7",
                    f"{name} p50 ms @{tag}",
                    store,
                    p50,
                    _ms(f.ping_s),
                    "≤10 ms",
                    f"n={len(api.latencies_s)}{err}",
                ),
                Row(
                    "S7",
                    f"{name} p99 ms @{tag}",
                    store,
                    p99,
                    _ms(f.ping_s, 99),
                    "≤25 ms" if mode == "seq" else "≤50 ms",
                ),
            ]
            if mode == "seq":
                rows.append(
                    Row("S7", f"{ENDPOINTS[endpoint]} bytes @{tag}", store, size_b, None, "O(page)")
                )
        for (endpoint, mode), by_size in p50_by.items():
            if mode == "seq" and len(by_size) >= 2:
                lo, hi = min(by_size), max(by_size)
                rows.append(
                    Row(
                        "S7",
                        f"{ENDPOINTS[endpoint]} p50 growth {_size(lo)}->{_size(hi)} x",
                        store,
                        by_size[hi] / by_size[lo],
                        None,
                        "≤1.1x",
                    )
                )
        for (size, endpoint, mode), api in sorted(res.api.items()):
            if endpoint != "state":
                continue
            name = f"event-loop lag p99 ms, /state {'seq' if mode == 'seq' else '8 conc'}"
            p99 = s6.lag_quantile(api.lag, 0.99)
            rows.append(
                Row(
                    "S7",
                    f"{name} @{_size(size)}",
                    store,
                    p99 * 1e3 if p99 is not None else None,
                    None,
                    None,
                    "orch_event_loop_lag_seconds in /metrics, p99 within its bucket",
                    why="" if p99 is not None else "error: /metrics gave no event-loop lag",
                )
            )
        rows.append(
            missing(
                "S7",
                "S2 p99 under API load",
                store,
                f"{NA}not run: S7 here has no webhook traffic beside it",
            )
        )
    return rows


# -- the merge gate, the agent --------------------------------------------------------------------


def merge_rows(results: dict[str, merge_rate.MergeResult | str]) -> list[Row]:
    rows = []
    for store, res in results.items():
        if isinstance(res, str):
            rows.append(missing("merge gate", "merges/hour", store, res))
            continue
        note = f"{res.merges} merges in {res.wall_s:.1f} s, test command sleep {res.test_s:g}"
        if res.failed:
            note += f"; {res.failed} failed"
        if res.note:
            note += f"; {res.note}"
        rows.append(
            Row(
                "merge gate",
                "merges/hour",
                store,
                res.per_hour,
                res.ceiling,
                f"ceiling 3600/{res.test_s:g} s = {res.ceiling:,.0f}",
                note,
                why="" if not math.isnan(res.per_hour) else "error: fewer than 2 merges",
            )
        )
    return rows


def agent_rows(res: StageResult | str) -> list[Row]:
    if isinstance(res, str):
        why = res if res.startswith(("n/a", "error")) else f"error: {res}"
        return [missing("agent", "claude stage p50 ms", "sqlite", why)]
    overhead = median(res.orch_s) - median(res.bare_s)
    return [
        Row(
            "agent",
            "claude stage p50 ms",
            "sqlite",
            median(res.orch_s) * 1e3,
            median(res.bare_s) * 1e3,
            None,
            f"n={len(res.orch_s)} after a warm-up each; orch adds {overhead * 1e3:.0f} ms at the "
            f"median; {res.events} events read",
        )
    ]


def proxy_rows(res: proxy_latency.ProxyResult | str) -> list[Row]:
    metric = "per streamed event p50 ms"
    if isinstance(res, str):
        return [missing("proxy", metric, "-", res, "floor + 1 ms")]
    proxied, direct = proxy_latency.summary(res)
    note = (
        f"write -> read, {len(res.proxied_ms)} events in {res.streams} streams through the"
        f" proxy; adds {proxied - direct:.3f} ms at the median"
    )
    if not res.counted_ok:
        note += "; a stream's usage was NOT counted in full"
    return [Row("proxy", metric, "-", proxied, direct, "floor + 1 ms", note)]
