"""`orch serve` as a subprocess, and what a benchmark reads from outside it: a bare git remote
with a pipeline file, the store read by SQL, the process table.

Nothing here is orch's own code path: the service runs as `python -m orch.cli serve`, the store
is read with plain SQL over orch's schema, and processes are found and signalled through /proc.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import yaml

from bench.common import IN_HOME, pg_schema, stub_argv
from orch.adapters.proctable import LinuxProcessTable, start_time

GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
}
ONE_STAGE = (
    "replace: true\nmerge: false\nstages:\n  - name: analysis\n    gates: []\ncheckpoints: []\n"
)
ANNOUNCE = re.compile(r"^orch serving on (\S+) \(.*incarnation (\S+)\)")


def git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, check=True, capture_output=True
    )


def make_remote(root: Path, name: str = "remote", pipeline: str = ONE_STAGE) -> Path:
    """A bare repository with one commit on main: a README and `.orch/pipeline.yaml`."""
    remote = root / f"{name}.git"
    seed = root / f"{name}-seed"
    git("init", "--quiet", "--bare", "-b", "main", str(remote))
    git("init", "--quiet", "-b", "main", str(seed))
    (seed / "README.md").write_text("bench\n")
    (seed / ".orch").mkdir()
    (seed / ".orch" / "pipeline.yaml").write_text(pipeline)
    git("add", "--all", cwd=seed)
    git("commit", "--quiet", "-m", "seed", cwd=seed)
    git("push", "--quiet", str(remote), "main", cwd=seed)
    shutil.rmtree(seed)
    return remote


def repo(name: str, remote: Path, **more: Any) -> dict[str, Any]:
    return {"name": name, "remote": str(remote), "max_active": 50, **more}


@contextlib.contextmanager
def store_url(kind: str, pg_url: str | None, home: Path) -> Iterator[str]:
    """A fresh store for one service: a SQLite file in `home`, or a PostgreSQL schema."""
    if kind == "pg":
        assert pg_url is not None
        with pg_schema(pg_url) as url:
            yield url
    else:
        yield f"sqlite:///{home / 'orch.db'}"


class Serve:
    """One `orch serve --port 0` subprocess on 127.0.0.1. It may be stopped, killed and started
    again with the same command; every incarnation it had is remembered, so that no agent any of
    them started outlives the benchmark."""

    def __init__(
        self,
        name: str,
        root: Path,
        store: str,
        repos: Sequence[Mapping[str, Any]],
        slots: int = 50,
        worker: Mapping[str, Any] | None = None,
        tracker: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        data = root / "data"
        self.homes = data / "homes"  # where the stub, confined, writes its times
        self.store = store
        config: dict[str, Any] = {
            "data_dir": str(data),
            "workspace_root": str(root / "ws"),
            "logs_dir": str(root / "logs"),
            "store": {"url": store},
            "worker": {"slots": slots, **(worker or {})},
            "api": {"host": "127.0.0.1", "port": 0},
            "repos": [dict(r) for r in repos],
            "agents": {"default": {"kind": "command", "command": stub_argv(IN_HOME)}},
            "log_level": "WARNING",
        }
        if tracker is not None:
            config["tracker"] = dict(tracker)
        self.config_path = root / "orch.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.env = dict(env or {})
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.incarnation = ""
        self.incarnations: list[str] = []
        self.exec_at = 0.0  # time.time() just before the exec
        self.ready_at = 0.0  # when its "orch serving on" line was read
        self._stderr: Any = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        env.update(self.env)
        self._stderr = open(self.root / "serve.stderr", "a")  # noqa: SIM115 - closed in _reap
        argv = [sys.executable, "-m", "orch.cli", "--config", str(self.config_path), "serve"]
        self.exec_at = time.time()
        self.proc = subprocess.Popen(
            [*argv, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
        proc = self.proc

        def reader() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put((time.time(), line))
            lines.put(None)

        threading.Thread(target=reader, daemon=True, name=f"serve-{self.name}-stdout").start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                got = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if got is None:
                break
            at, line = got
            match = ANNOUNCE.match(line)
            if match:
                self.ready_at = at
                self.base_url = match.group(1)
                self.incarnation = match.group(2)
                self.incarnations.append(self.incarnation)
                return
        self.stop()
        raise RuntimeError(f"orch serve ({self.name}) did not start: {self.tail()}")

    def tail(self, chars: int = 600) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "serve.stderr").read_text()[-chars:]
        return ""

    def crash(self) -> float:
        """SIGKILL the service alone, as a crash would; its agents live on. Returns when."""
        at = time.time()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self._reap(0)
        return at

    def stop(self) -> None:
        """SIGTERM (orch gives its jobs back and ends its agents), SIGKILL if it lingers, then
        end whatever any of its incarnations left running."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        self._reap(20)
        self.kill_agents()

    def _reap(self, wait_s: float) -> None:
        proc = self.proc
        if proc is not None:
            try:
                proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def agents(self) -> list[tuple[int, str]]:
        """(pid, start time) of every process any incarnation of this service started (the
        sandbox launchers and the agents under them), found by ORCH_INCARNATION."""
        if not self.incarnations:
            return []
        found = LinuxProcessTable().children_of(set(self.incarnations))
        return [(o.pid, o.start) for o in found]

    def kill_agents(self) -> int:
        """SIGKILL every process this service's incarnations started; how many there were."""
        found = self.agents()
        for pid, started in found:
            LinuxProcessTable.signal(pid, started, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(start_time(p) == s for p, s in found):
            time.sleep(0.01)
        return len(found)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30.0)


def file_ticket(client: httpx.Client, repo_name: str, title: str) -> str:
    """File a ticket through the API; its task's key."""
    response = client.post("/api/v1/tasks", json={"repo": repo_name, "title": title, "body": ""})
    response.raise_for_status()
    return str(response.json()["key"])


# -- what the stubs left in their homes ----------------------------------------------------------


def stub_file(homes: Path, key: str, stage: str, attempt: int) -> Path | None:
    for path in homes.glob(f"*/{key}.{stage}.{attempt}"):
        return path
    return None


def stub_start(homes: Path, key: str, stage: str, attempt: int) -> float | None:
    path = stub_file(homes, key, stage, attempt)
    if path is None:
        return None
    try:
        return float(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stub_pid(homes: Path, key: str, stage: str, attempt: int) -> int | None:
    for path in homes.glob(f"*/{key}.{stage}.{attempt}.pid"):
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            return None
    return None


def stub_starts(homes: Path) -> list[tuple[str, float]]:
    """(file name, start time) of every stub run whose file is there."""
    out = []
    for path in homes.glob("*/*.*.*"):
        if path.suffix in (".pid", ".txt"):
            continue
        try:
            out.append((path.name, float(path.read_text().split()[0])))
        except (OSError, ValueError, IndexError):
            continue
    return out


def live_stubs(root: Path) -> dict[str, int]:
    """Tickets with a live stub agent whose home is under `root`, and how many each has."""
    needle = b"stub_agent.py"
    home = f"HOME={root}".encode()
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            # the sandbox launcher's command line names the stub too: only the stub counts
            if needle not in cmdline or b"launcher" in cmdline:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] in "ZX":
            continue
        if not any(item.startswith(home) for item in environ):
            continue
        for item in environ:
            if item.startswith(b"ORCH_TICKET="):
                ticket = item.split(b"=", 1)[1].decode(errors="replace")
                found[ticket] = found.get(ticket, 0) + 1
    return found


def release(homes: Path) -> None:
    """Let every stub started with `release` end, as a success."""
    for home in homes.iterdir():
        if home.is_dir():
            (home / "release").write_text("")


# -- the store, read from outside -----------------------------------------------------------------


def sa_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Probe:
    """Plain SQL over orch's tables, each statement its own transaction."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(sa_url(url), isolation_level="AUTOCOMMIT")
        self.conn = self.engine.connect()

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        return list(self.conn.execute(sa.text(sql), params))

    def scalar(self, sql: str, **params: Any) -> Any:
        return self.conn.execute(sa.text(sql), params).scalar()

    def task_id(self, key: str) -> int:
        return int(self.scalar("SELECT id FROM tasks WHERE key = :k", k=key))

    def latest_job(self, task_id: int) -> tuple[str, int, str | None]:
        """(state, attempt, lease owner) of the task's newest job."""
        row = self.rows(
            "SELECT state, attempt, lease_owner FROM jobs WHERE task_id = :t"
            " ORDER BY id DESC LIMIT 1",
            t=task_id,
        )[0]
        return str(row[0]), int(row[1]), row[2]

    def count(self, sql: str, **params: Any) -> int:
        return int(self.scalar(sql, **params) or 0)


# -- the process table ---------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS (KB), threads, open fds and CPU seconds (user + system) of a live process."""
    base = Path("/proc") / str(pid)
    rss = 0.0
    for line in (base / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = float(line.split()[1])
    stat = (base / "stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    return {
        "rss_kb": rss,
        "threads": float(len(os.listdir(base / "task"))),
        "fds": float(len(os.listdir(base / "fd"))),
        "cpu_s": cpu,
    }


def wait_for(what: Any, timeout_s: float, every_s: float = 0.02) -> Any:
    """`what()` once it is truthy, or None after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = what()
        if got:
            return got
        if time.monotonic() >= deadline:
            return None
        time.sleep(every_s)
