"""Contention: many orch processes on one store.

Eight writer processes on one SQLite each file tickets and drive jobs, all at once, and no
"database is locked" reaches any task's state; two `orch serve` processes on one PostgreSQL
database claim each job exactly once and merge each task once. Writers started together on a
fresh store all migrate it and start, and a process that ran an earlier stage of a task builds on
what other processes pushed since.

Every process here is started by the test, listens on 127.0.0.1 only, and is ended by its pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from psycopg import sql

from orch.adapters.store.sql import SqlStore
from orch.bootstrap import App, build
from orch.config import IsolatedSettings, RepoSettingsModel, StoreSettings
from orch.demo import sample
from orch.domain.model import Task
from orch.domain.states import JobState, Stage, TaskStatus

pytestmark = pytest.mark.slow

WRITER = Path(__file__).with_name("contention_writer.py")
# no checkpoint, so no person is needed: two agent stages, then the merge; with three stages a
# task can come back to a process after another one ran a stage of it
PIPELINE_YAML = """\
replace: true
stages:
  - name: analysis
  - name: development
  - name: deploy-staging
checkpoints: []
"""
AGENT_STAGES = ("analysis", "development")
# what SQLite (and the store's retry loop) say when a writer could not get the database
CONTENTION_WORDS = re.compile(r"locked|busy", re.IGNORECASE)
# a merge stage that finds another task's merge in flight in its repository gives its claim
# back without using an attempt: that re-claim is the one a job may have, and it says so
MERGE_TURN = "another merge is in flight"


# -- helpers ---------------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """This process's environment without any ORCH_ setting: each test builds its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}


def make_repos(root: Path, names: list[str], pipeline: str = PIPELINE_YAML) -> dict[str, Path]:
    """Sample projects with bare remotes, each carrying `pipeline` on its default branch."""
    remotes = {}
    for name in names:
        work, remote = sample.create(root / name)
        (work / ".orch").mkdir()
        (work / ".orch" / "pipeline.yaml").write_text(pipeline, encoding="utf-8")
        sample.git("add", "--all", cwd=work)
        sample.git("commit", "--quiet", "-m", "A pipeline without checkpoints", cwd=work)
        sample.git("push", "--quiet", "origin", "main", cwd=work)
        remotes[name] = remote
    return remotes


def repo_settings(remotes: dict[str, Path], max_active: int) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "remote": str(remote),
            "key_prefix": name.upper(),
            "test_command": sample.test_command(),
            "max_active": max_active,
        }
        for name, remote in remotes.items()
    ]


def write_config(
    path: Path, store_url: str, remotes: dict[str, Path], *, slots: int, max_active: int
) -> Path:
    """A settings file; each process gives itself its own data directory and workspace root."""
    config = {
        "data_dir": str(path.parent / "data"),
        "store": {"url": store_url},
        "api": {"host": "127.0.0.1"},
        "repos": repo_settings(remotes, max_active),
        "worker": {"slots": slots, "poll_interval_s": 0.2, "backoff_base_s": 0.1},
        "log_level": "WARNING",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def read_line(proc: subprocess.Popen[str], bound_s: float, what: str) -> str:
    """The next line `proc` prints on stdout; the bound only turns a hang into a failure."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(bound_s):
            raise AssertionError(f"no {what} from pid {proc.pid} within {bound_s:g}s")
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"pid {proc.pid} exited ({proc.wait()}) before printing {what}")
    return line


def end(proc: subprocess.Popen[str]) -> None:
    """End a process this test started, by its pid: TERM, wait, then KILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def start_writers(
    config: Path, root: Path, count: int, tickets: int, go: Path, *, migrate: bool = False
) -> tuple[list[subprocess.Popen[str]], list[Path]]:
    """`count` writer processes, each with its own directory and stderr log, ready and waiting
    for `go` to exist. The caller ends them."""
    procs: list[subprocess.Popen[str]] = []
    logs: list[Path] = []
    try:
        for i in range(count):
            workdir = root / f"writer-{i}"
            workdir.mkdir(parents=True)
            logs.append(workdir / "stderr.log")
            args = [str(config), str(workdir), str(i), str(tickets), str(count * tickets), str(go)]
            with logs[-1].open("w") as err:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(WRITER), *(["--migrate"] if migrate else []), *args],
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                        env=clean_env(),
                    )
                )
    except BaseException:
        for proc in procs:
            end(proc)
        raise
    return procs, logs


def worker_owners(store: SqlStore, task: Task) -> set[str]:
    """The incarnations that wrote the task's stage: a worker's transition names it."""
    return {
        tr.actor.removeprefix("worker:")
        for tr in store.transitions(task.id)
        if tr.actor.startswith("worker:")
    }


def writer_spans(store: SqlStore, tasks: list[Task]) -> list[tuple[float, float]]:
    """Per writer, the database times of its first and its last stage write."""
    times: dict[str, list[float]] = {}
    for task in tasks:
        for tr in store.transitions(task.id):
            if tr.actor.startswith("worker:"):
                times.setdefault(tr.actor, []).append(tr.at)
    return [(min(at), max(at)) for at in times.values()]


def contention_traces(store: SqlStore, tasks: list[Task]) -> list[str]:
    """Every trace of a writer that could not get the database, in any task's state."""
    found = []
    for task in tasks:
        if CONTENTION_WORDS.search(task.status_reason):
            found.append(f"{task.key} status_reason: {task.status_reason}")
        for job in store.jobs(task.id):
            if CONTENTION_WORDS.search(job.last_error):
                found.append(f"{task.key} job {job.id} last_error: {job.last_error}")
        for tr in store.transitions(task.id):
            if CONTENTION_WORDS.search(tr.reason):
                found.append(f"{task.key} v{tr.version} transition: {tr.reason}")
    return found


def merges_per_task(remotes: dict[str, Path]) -> Counter[str]:
    """How many merge commits each task key has on its repository's default branch."""
    counts: Counter[str] = Counter()
    for remote in remotes.values():
        subjects = subprocess.run(
            ["git", "--git-dir", str(remote), "log", "--merges", "--format=%s", "main"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        for subject in subjects:
            match = re.match(r"Merge orch/(\S+): ", subject)
            assert match, f"a merge commit orch did not make: {subject!r}"
            counts[match.group(1)] += 1
    return counts


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of `server_url`, dropped at the end."""
    admin_url = server_url.replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"orch_contention_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{admin_url.rpartition('/')[0]}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def migrated(url: str) -> str:
    store = SqlStore(url)
    try:
        store.migrate()
    finally:
        store.close()
    return url


# -- eight writers on one SQLite file --------------------------------------------------------

WRITERS = 8
TICKETS_PER_WRITER = 4


def test_eight_writer_processes_on_one_sqlite_file_finish_every_task_without_lock_errors(
    tmp_path: Path,
) -> None:
    remotes = make_repos(tmp_path / "repos", ["alpha", "beta", "gamma"])
    url = migrated(f"sqlite:///{tmp_path / 'orch.db'}")
    config = write_config(tmp_path / "orch.yaml", url, remotes, slots=3, max_active=8)
    total = WRITERS * TICKETS_PER_WRITER
    go = tmp_path / "go"
    procs, logs = start_writers(config, tmp_path, WRITERS, TICKETS_PER_WRITER, go)
    try:
        owners = [json.loads(read_line(p, 60, "ready line"))["owner"] for p in procs]
        go.touch()  # every writer files its tickets and drives jobs from now on, all at once
        reports = []
        for proc, log in zip(procs, logs, strict=True):
            line = read_line(proc, 300, "final report")
            assert proc.wait(30) == 0, f"writer {proc.pid}: {line}{log.read_text()[-3000:]}"
            reports.append(json.loads(line))
    finally:
        for proc in procs:
            end(proc)

    store = SqlStore(url)
    try:
        tasks = store.list_tasks(1000)
        assert len(tasks) == total
        assert contention_traces(store, tasks) == []
        assert {t.key: t.status for t in tasks} == {t.key: TaskStatus.DONE for t in tasks}
        for task in tasks:
            for job in store.jobs(task.id):
                # no attempt failed: a job was handed back only to wait for another merge
                assert not job.last_error or MERGE_TURN in job.last_error, (task.key, job)
        # every ticket each writer filed got a key of its own, with no gap in any sequence
        filed = [key for r in reports for key in r["filed"]]
        assert sorted(filed) == sorted(t.key for t in tasks)
        for prefix in ("ALPHA", "BETA", "GAMMA"):
            numbers = sorted(int(k.split("-")[1]) for k in filed if k.startswith(prefix + "-"))
            assert numbers == list(range(1, len(numbers) + 1))
        # the work really was spread: most writers drove stages, and tasks changed hands
        drivers = {t.key: worker_owners(store, t) for t in tasks}
        involved = set().union(*drivers.values())
        assert involved <= set(owners)
        assert len(involved) >= WRITERS // 2, f"only {len(involved)} writers drove any stage"
        assert any(len(who) > 1 for who in drivers.values()), "no task changed hands"
        spans = writer_spans(store, tasks)
        assert any(
            a[0] <= b[1] and b[0] <= a[1] for i, a in enumerate(spans) for b in spans[i + 1 :]
        ), "no two writers wrote stages at the same time"
    finally:
        store.close()
    for log in logs:
        text = log.read_text()
        assert not CONTENTION_WORDS.search(text), f"{log}:\n{text[-3000:]}"
    assert merges_per_task(remotes) == Counter({t.key: 1 for t in tasks})


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_eight_writers_started_together_on_a_fresh_store_all_migrate_it_and_start(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    remotes = make_repos(tmp_path / "repos", ["alpha"])
    # the race is lost only sometimes: a few fresh stores make it show whenever it exists
    for round_ in range(4):
        root = tmp_path / f"round-{round_}"
        with contextlib.ExitStack() as stack:
            if backend == "sqlite":
                url = f"sqlite:///{root / 'orch.db'}"
            else:
                url = stack.enter_context(fresh_database(request.getfixturevalue("pg_url")))
            config = write_config(root / "orch.yaml", url, remotes, slots=1, max_active=1)
            procs, logs = start_writers(config, root, WRITERS, 0, root / "go", migrate=True)
            try:
                for proc in procs:
                    read_line(proc, 60, "ready line")
                (root / "go").touch()
                codes = [proc.wait(120) for proc in procs]
            finally:
                for proc in procs:
                    end(proc)
            failed = [log.read_text()[-600:] for code, log in zip(codes, logs, strict=True) if code]
            assert failed == [], f"round {round_}: {len(failed)} writer(s) failed to start"


def test_a_writer_that_ran_an_earlier_stage_builds_on_what_others_pushed_since(
    tmp_path: Path,
) -> None:
    """Writer A runs a task's first stage, writer B its second, A its third: A must work on the
    branch as B left it. Two apps, each with its own workspace root as every orch process has,
    stand for two processes; each `run_once` claims the only runnable job."""
    remotes = make_repos(tmp_path / "repos", ["alpha"], PIPELINE_YAML)
    url = migrated(f"sqlite:///{tmp_path / 'orch.db'}")

    repos = [RepoSettingsModel.model_validate(r) for r in repo_settings(remotes, max_active=1)]

    def writer(name: str) -> App:
        settings = IsolatedSettings(
            data_dir=tmp_path / name, store=StoreSettings.model_validate({"url": url}), repos=repos
        )
        return build(settings, migrate=False)

    a, b = writer("a"), writer("b")
    try:
        key = a.intake.file("alpha", "Tidy").key
        for app in (a, b, a):
            assert app.dispatcher.run_once()
        task = a.intake.task(key)
        jobs = a.store.jobs(task.id)
    finally:
        a.close()
        b.close()
    assert [(j.stage.value, j.attempt, j.last_error) for j in jobs] == [
        ("analysis", 1, ""),
        ("development", 1, ""),
        ("deploy-staging", 1, ""),
    ]
    assert task.status == TaskStatus.DONE
    assert merges_per_task(remotes) == Counter({key: 1})


# -- two serves on one PostgreSQL database ---------------------------------------------------


def start_serve(config: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    """`orch serve` on 127.0.0.1 and a free port; returns the process and its base URL."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orch", "--config", str(config), "serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=clean_env(),
        )
    try:
        line = read_line(proc, 60, "serving line")
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert match, f"no 127.0.0.1 address in {line!r}"
    except BaseException:
        end(proc)
        raise
    return proc, match.group(0)


SERVE_TICKETS = 12


@pytest.mark.postgres
def test_two_serves_on_one_postgres_database_claim_each_job_once_and_merge_each_task_once(
    tmp_path: Path, pg_url: str
) -> None:
    remotes = make_repos(tmp_path / "repos", ["north", "south", "east"])
    with fresh_database(pg_url) as db:
        migrated(db)
        configs = [
            write_config(tmp_path / f"serve-{i}" / "orch.yaml", db, remotes, slots=3, max_active=2)
            for i in range(2)
        ]
        serves: list[subprocess.Popen[str]] = []
        logs = [c.with_name("stderr.log") for c in configs]
        try:
            urls = []
            for config, log in zip(configs, logs, strict=True):
                proc, url = start_serve(config, log)
                serves.append(proc)
                urls.append(url)
            with contextlib.ExitStack() as stack:
                clients = [stack.enter_context(httpx.Client(base_url=u, timeout=30)) for u in urls]
                owners = {c.get("/api/v1/health").json()["owner"] for c in clients}
                keys = []
                for n in range(SERVE_TICKETS):
                    repo = list(remotes)[n % len(remotes)]
                    created = clients[n % 2].post(
                        "/api/v1/tasks", json={"repo": repo, "title": f"Ticket {n}"}
                    )
                    assert created.status_code == 201, created.text
                    keys.append(created.json()["key"])
                deadline = time.monotonic() + 180  # guards a hang only
                pending = set(keys)
                while pending and time.monotonic() < deadline:
                    for n, key in enumerate(sorted(pending)):
                        status = clients[n % 2].get(f"/api/v1/tasks/{key}").json()["status"]
                        if status in ("done", "cancelled", "needs_operator"):
                            pending.discard(key)
                    time.sleep(0.2)
                assert not pending, f"never settled: {sorted(pending)}"
        finally:
            for proc in serves:
                end(proc)
        store = SqlStore(db)
        try:
            tasks = store.list_tasks(1000)
            claimed_by: set[str] = set()
            for task in tasks:
                jobs = {j.id: j for j in store.jobs(task.id)}
                for job in jobs.values():
                    assert job.state == JobState.SUCCEEDED, (task.key, job)
                    assert job.attempt == 1, (task.key, job)
                    if job.token != 1:
                        assert job.stage == Stage.DEPLOY_STAGING, (task.key, job)
                        assert MERGE_TURN in job.last_error, (task.key, job)
                runs = Counter((jobs[r.job_id].version, r.stage.value) for r in store.runs(task.id))
                assert sorted(stage for _, stage in runs) == sorted(AGENT_STAGES), task.key
                assert set(runs.values()) == {1}, (task.key, runs)
                claimed_by |= worker_owners(store, task)
        finally:
            store.close()
    assert sorted(t.key for t in tasks) == sorted(keys)
    assert {t.key: t.status for t in tasks} == {k: TaskStatus.DONE for k in keys}
    assert claimed_by == owners, "both serves must have claimed jobs"
    for log in logs:
        text = log.read_text()
        assert "write fenced" not in text, f"{log}:\n{text[-3000:]}"
    assert merges_per_task(remotes) == Counter({k: 1 for k in keys})
