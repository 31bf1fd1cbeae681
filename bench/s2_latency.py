"""S2, event -> agent process started, against `orch serve` as a subprocess.

One `orch serve` per store runs with a real local bare git remote (its seed commit's
`.orch/pipeline.yaml` keeps only the analysis stage, without gates), the stub as the `default`
command agent, C=50 worker slots, and Plane as its tracker: orch's fake Plane
(`orch.fakes.plane.PlaneFake`) on 127.0.0.1, with one project following the repository.

Two kinds of event are sent, in ABBA blocks across the stores and the kinds, at Poisson arrivals:

- `api`: a ticket POSTed to /api/v1/tasks;
- `plane`: a person moves a work item to "To Analyse" in the fake, which signs the webhook
  delivery with the secret (`X-Plane-Signature`, hex HMAC-SHA256 of the body); the delivery is
  kept back from the fake's sender (`drop_webhooks`) and POSTed to /webhooks/plane by the bench
  itself, so the clock starts just before that request. orch verifies it, stores it, reads the
  item back from the fake and files the task.

Then, with `cold` > 0, that many cold events per store: a ticket POSTed after `idle_s` of no
traffic at all (a second apart across the stores, so they do not share the CPU), whose latency is
set beside the warm events'.

Each stub writes its first instruction's CLOCK_REALTIME to `<home>/<ticket>.analysis.1`; the
latency of an event is that time minus the wall clock just before its request was sent.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import abba
from bench.serve import Probe, Serve, make_remote, repo, store_url, stub_start

PLANE_KEY, PLANE_SECRET = "bench-plane-key", "bench-plane-webhook-secret"
SOURCES = ("api", "plane")
COLD = "cold"  # the source of the cold events: API tickets after a long idle


@dataclass
class S2Result:
    store: str
    source: str
    latencies_s: list[float] = field(default_factory=list)  # stub first instruction - send
    acks_s: list[float] = field(default_factory=list)  # HTTP response received - send
    # the way there, from what the store recorded: the task's row written (its created_at)
    # - send; the agent's run recorded, its launcher told the command (runs.started_at) - the
    # task's row; the stub's first instruction - the run recorded
    filed_s: list[float] = field(default_factory=list)
    handed_s: list[float] = field(default_factory=list)
    exec_s: list[float] = field(default_factory=list)
    missing: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class Target:
    """One store's service, and the Plane project it follows."""

    serve: Serve
    client: httpx.Client
    plane: object  # a PlaneFake
    project: str
    identifier: str
    items: list[dict] = field(default_factory=list)  # work items made ahead, still in Backlog


def _file_api(t: Target, n: int) -> tuple[str, float, float]:
    """POST one ticket; (task key, wall clock at send, seconds to the response)."""
    sent = time.time()
    t0 = time.perf_counter()
    response = t.client.post(
        "/api/v1/tasks", json={"repo": "bench", "title": f"bench ticket {n}", "body": "S2"}
    )
    ack = time.perf_counter() - t0
    response.raise_for_status()
    return str(response.json()["key"]), sent, ack


def _file_plane(t: Target) -> tuple[str, float, float]:
    """A person moves the next work item to "To Analyse"; its signed delivery is POSTed."""
    plane = t.plane
    item = t.items.pop(0)
    plane.drop_webhooks(1)  # type: ignore[attr-defined]
    plane.person_moves(t.project, item["id"], "To Analyse")  # type: ignore[attr-defined]
    delivery = plane.dropped[-1]  # type: ignore[attr-defined]
    assert "X-Plane-Signature" in delivery.headers
    sent = time.time()
    t0 = time.perf_counter()
    response = t.client.post("/webhooks/plane", content=delivery.body, headers=delivery.headers)
    ack = time.perf_counter() - t0
    response.raise_for_status()
    if not response.json().get("stored"):
        raise RuntimeError("orch did not store the delivery")
    return f"{t.identifier}-{item['sequence_id']}", sent, ack


def _collect(
    serve: Serve, sent: list[tuple[str, float, float]], result: S2Result, timeout_s: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(sent)
    started_at: dict[str, tuple[float, float]] = {}
    while pending and time.monotonic() < deadline:
        still = []
        for key, at, ack in pending:
            started = stub_start(serve.homes, key, "analysis", 1)
            if started is None:
                still.append((key, at, ack))
            else:
                result.latencies_s.append(started - at)
                result.acks_s.append(ack)
                started_at[key] = (at, started)
        pending = still
        if pending:
            time.sleep(0.05)
    result.missing += len(pending)
    _breakdown(serve, started_at, result)


def _breakdown(serve: Serve, started: dict[str, tuple[float, float]], result: S2Result) -> None:
    """Each started event's way, cut where the store recorded it."""
    if not started:
        return
    probe = Probe(serve.store)
    try:
        for key, (at, first) in started.items():
            row = probe.rows(
                "SELECT t.created_at, r.started_at FROM tasks t JOIN runs r ON r.task_id = t.id"
                " WHERE t.key = :k AND r.attempt = 1 ORDER BY r.id LIMIT 1",
                k=key,
            )
            if not row:
                continue
            filed, handed = float(row[0][0]), float(row[0][1])
            result.filed_s.append(filed - at)
            result.handed_s.append(handed - filed)
            result.exec_s.append(first - handed)
    finally:
        probe.close()


@contextlib.contextmanager
def _targets(
    stores: list[str], pg_url: str | None, root: Path, slots: int, items: int
) -> Iterator[dict[str, Target]]:
    from orch.fakes.plane import PlaneFake

    remote = make_remote(root)
    targets: dict[str, Target] = {}
    with contextlib.ExitStack() as stack:
        for name in stores:
            home = root / name
            home.mkdir(parents=True, exist_ok=True)
            url = stack.enter_context(store_url(name, pg_url, home))
            plane = stack.enter_context(PlaneFake(PLANE_KEY))
            project = plane.add_project("Bench", "BEN")
            # made before the webhook is subscribed: their creation is delivered to nobody
            made = [plane.add_item(project, f"bench item {i}") for i in range(items)]
            serve = Serve(
                name,
                home,
                url,
                [repo("bench", remote)],
                slots,
                tracker={
                    "kind": "plane",
                    "url": plane.url,
                    "workspace": plane.slug,
                    "poll_interval_s": 3600,  # the webhooks alone
                    "projects": [{"id": project, "repo": "bench"}],
                },
                env={"PLANE_API_KEY": PLANE_KEY, "PLANE_WEBHOOK_SECRET": PLANE_SECRET},
            )
            stack.callback(serve.stop)
            serve.start()
            plane.subscribe(f"{serve.base_url}/webhooks/plane", PLANE_SECRET)
            client = stack.enter_context(serve.client())
            targets[name] = Target(serve, client, plane, project, "BEN", made)
        yield targets


def run(
    stores: list[str],
    n_per_source: int,
    rate_per_s: float,
    rounds: int,
    pg_url: str | None,
    slots: int = 50,
    cold: int = 0,
    idle_s: float = 60.0,
) -> dict[tuple[str, str], S2Result]:
    """{(store, source): result} for every store and both sources (and COLD, with `cold`)."""
    results = {(s, src): S2Result(s, src) for s in stores for src in SOURCES}
    if cold:
        results.update({(s, COLD): S2Result(s, COLD) for s in stores})
    rng = random.Random(20240601)
    root = Path(tempfile.mkdtemp(prefix="orch-bench-s2-"))
    blocks = max(1, rounds)
    per_block = [
        n_per_source // blocks + (1 if i < n_per_source % blocks else 0) for i in range(blocks)
    ]
    try:
        with _targets(stores, pg_url, root, slots, n_per_source + 2) as targets:
            # warm up each kind once: the first ticket of a server clones the remote's mirror
            for name, t in targets.items():
                warm = [_file_api(t, -1), _file_plane(t)]
                _collect(t.serve, warm, S2Result(name, "warm-up"))
            counter = 0
            configs = [(s, src) for s in stores for src in SOURCES]
            for r, config in abba(configs, blocks):
                name, source = config  # type: ignore[misc]
                t = targets[name]
                result = results[(name, source)]
                sent: list[tuple[str, float, float]] = []
                next_at = time.monotonic()
                for _ in range(per_block[r]):
                    next_at += rng.expovariate(rate_per_s)
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    counter += 1
                    try:
                        sent.append(_file_api(t, counter) if source == "api" else _file_plane(t))
                    except (httpx.HTTPError, RuntimeError) as exc:
                        result.errors.append(str(exc)[:200])
                _collect(t.serve, sent, result)
            for _ in range(cold):
                time.sleep(idle_s)
                for name, t in targets.items():
                    counter += 1
                    _collect(t.serve, [_file_api(t, counter)], results[(name, COLD)])
                    time.sleep(1.0)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results
