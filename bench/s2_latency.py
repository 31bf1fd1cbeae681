"""S2, ticket filed -> agent process started, against `orch serve` as a subprocess.

One `orch serve` per store runs with a YAML config: a real local bare git remote (made here, with
a seed commit whose `.orch/pipeline.yaml` keeps only the analysis stage, without gates), the stub
as the `default` command agent, C=50 worker slots, everything on 127.0.0.1. Tickets are POSTed to
/api/v1/tasks at Poisson arrivals, in ABBA blocks across the stores. Each stub writes its first
instruction's CLOCK_REALTIME to `<dir>/<ORCH_TICKET>.analysis.1`; the latency of a ticket is that
time minus the wall clock just before the request was sent.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from bench.common import IN_HOME, abba, pg_schema, stub_argv, stub_times

PIPELINE = "stages:\n  - name: analysis\n    gates: []\ncheckpoints: []\n"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
}


@dataclass
class S2Result:
    store: str
    latencies_s: list[float] = field(default_factory=list)  # stub first instruction - send
    acks_s: list[float] = field(default_factory=list)  # HTTP response received - send
    missing: int = 0
    errors: list[str] = field(default_factory=list)


def _git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        check=True,
        capture_output=True,
    )


def make_remote(root: Path) -> Path:
    """A bare repository with one commit on main: a README and the one-stage pipeline file."""
    remote = root / "remote.git"
    seed = root / "seed"
    _git("init", "--quiet", "--bare", "-b", "main", str(remote))
    _git("init", "--quiet", "-b", "main", str(seed))
    (seed / "README.md").write_text("bench\n")
    (seed / ".orch").mkdir()
    (seed / ".orch" / "pipeline.yaml").write_text(PIPELINE)
    _git("add", "--all", cwd=seed)
    _git("commit", "--quiet", "-m", "seed", cwd=seed)
    _git("push", "--quiet", str(remote), "main", cwd=seed)
    shutil.rmtree(seed)
    return remote


class Serve:
    """One `orch serve --port 0` subprocess, ended by its pid."""

    def __init__(
        self, name: str, root: Path, store_url: str, remote: Path, slots: int = 50
    ) -> None:
        self.name = name
        self.root = root
        data = root / "data"
        self.homes = data / "homes"  # where the stub, confined, writes its times
        config = {
            "data_dir": str(data),
            "workspace_root": str(root / "ws"),
            "logs_dir": str(root / "logs"),
            "store": {"url": store_url},
            "worker": {"slots": slots},
            "api": {"host": "127.0.0.1", "port": 0},
            "repos": [{"name": "bench", "remote": str(remote), "max_active": 50}],
            "agents": {"default": {"kind": "command", "command": stub_argv(IN_HOME)}},
            "log_level": "WARNING",
        }
        self.config_path = root / "orch.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def start(self, timeout_s: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        self.stderr = open(self.root / "serve.stderr", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orch.cli",
                "--config",
                str(self.config_path),
                "serve",
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def reader() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=reader, daemon=True, name=f"serve-{self.name}-stdout").start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith("orch serving on "):
                self.base_url = line.split()[3]
                return
        raise RuntimeError(f"orch serve ({self.name}) did not start: {self.tail()}")

    def tail(self, chars: int = 600) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "serve.stderr").read_text()[-chars:]
        return ""

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if getattr(self, "stderr", None) is not None:
            self.stderr.close()


def _stub_start(homes: Path, key: str) -> float | None:
    times = stub_times(homes, f"{key}.analysis.1")
    return times[0] if times else None


def _file(client: httpx.Client, n: int) -> tuple[str, float, float]:
    """POST one ticket; return (ticket key, wall clock at send, seconds to the response)."""
    sent = time.time()
    t0 = time.perf_counter()
    response = client.post(
        "/api/v1/tasks", json={"repo": "bench", "title": f"bench ticket {n}", "body": "S2"}
    )
    ack = time.perf_counter() - t0
    response.raise_for_status()
    return str(response.json()["key"]), sent, ack


def _collect(serve: Serve, sent: list[tuple[str, float, float]], result: S2Result) -> None:
    deadline = time.monotonic() + 30.0
    pending = list(sent)
    while pending and time.monotonic() < deadline:
        still = []
        for key, at, ack in pending:
            started = _stub_start(serve.homes, key)
            if started is None:
                still.append((key, at, ack))
            else:
                result.latencies_s.append(started - at)
                result.acks_s.append(ack)
        pending = still
        if pending:
            time.sleep(0.05)
    result.missing += len(pending)


@contextlib.contextmanager
def _servers(
    names: list[str], pg_url: str | None, root: Path, slots: int
) -> Iterator[dict[str, Serve]]:
    remote = make_remote(root)
    serves: dict[str, Serve] = {}
    with contextlib.ExitStack() as stack:
        try:
            for name in names:
                home = root / name
                home.mkdir(parents=True, exist_ok=True)
                if name == "pg":
                    assert pg_url is not None
                    url = stack.enter_context(pg_schema(pg_url))
                else:
                    url = f"sqlite:///{home / 'orch.db'}"
                serve = Serve(name, home, url, remote, slots)
                serves[name] = serve
                serve.start()
            yield serves
        finally:
            for serve in serves.values():
                serve.stop()


def run(
    stores: list[str],
    n_per_store: int,
    rate_per_s: float,
    rounds: int,
    pg_url: str | None,
    slots: int = 50,
) -> dict[str, S2Result]:
    results = {name: S2Result(name) for name in stores}
    rng = random.Random(20240601)
    root = Path(tempfile.mkdtemp(prefix="orch-bench-s2-"))
    try:
        with _servers(stores, pg_url, root, slots) as serves:
            clients = {name: _client(serve.base_url) for name, serve in serves.items()}
            try:
                # warm up: the first ticket of a server clones the remote's mirror
                for name, serve in serves.items():
                    warm = [_file(clients[name], -i) for i in range(1, 3)]
                    _collect(serve, warm, S2Result(name))
                counter = 0
                blocks = max(1, rounds)
                per_block = [
                    n_per_store // blocks + (1 if i < n_per_store % blocks else 0)
                    for i in range(blocks)
                ]
                for r, name in abba(stores, blocks):
                    assert isinstance(name, str)
                    serve = serves[name]
                    sent: list[tuple[str, float, float]] = []
                    next_at = time.monotonic()
                    for _ in range(per_block[r]):
                        next_at += rng.expovariate(rate_per_s)
                        delay = next_at - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                        counter += 1
                        try:
                            sent.append(_file(clients[name], counter))
                        except httpx.HTTPError as exc:
                            results[name].errors.append(str(exc)[:200])
                    _collect(serve, sent, results[name])
            finally:
                for client in clients.values():
                    client.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def _client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=30.0)
