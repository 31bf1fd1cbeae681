"""The CLI as a person meets it, on the store itself: its version, shell completion, a task
followed live, reasons on one line in lists and whole in `task show`, output to a pipe never cut,
`--json` in the API's shapes, keys in any case, reads that never migrate, and a store that cannot
be opened met with one `error:` line."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from orch.adapters.store.sql import SqlStore
from orch.demo import sample
from orch.domain.pipeline import Decision, Move
from orch.domain.states import Stage, TaskStatus
from orch.testing import advance

from .conftest import one_error, orch, write_config

pytestmark = pytest.mark.slow

LONG = "test_slugify_handles_accents failed: " + "expected 'creme-brulee' " * 12
REASON = f"{LONG}\nTraceback (most recent call last):\n  File 'x.py', line 3\nAssertionError"


@pytest.fixture
def configured(tmp_path: Path) -> Path:
    _, remote = sample.create(tmp_path)
    return write_config(tmp_path, remote)


@pytest.fixture
def store(configured: Path) -> Iterator[SqlStore]:
    s = SqlStore(f"sqlite:///{configured.parent / 'orch.db'}")
    try:
        yield s
    finally:
        s.close()


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return orch("-c", str(config), *args)


def move(store: SqlStore, decision: Decision) -> None:
    """Move the one queued task as a worker would."""
    claim = store.claim("host:1:1:worker", 60.0, lambda _repo: 1)
    assert claim is not None
    advance(store, claim, Stage.ANALYSIS, decision, "worker")


def park(store: SqlStore, reason: str) -> None:
    move(store, Decision(Move.PARK, Stage.ANALYSIS, TaskStatus.NEEDS_OPERATOR, reason))


def test_version_prints_the_installed_package_version() -> None:
    done = orch("--version")
    assert (done.returncode, done.stdout) == (0, f"orch {version('orch')}\n")


def test_shell_completion_is_offered_and_completes_commands() -> None:
    assert "--install-completion" in orch("--help", env={"COLUMNS": "200"}).stdout
    script = orch("--show-completion", "bash")
    assert script.returncode == 0, script.stderr
    assert "_ORCH_COMPLETE=complete_bash" in script.stdout
    completed = orch(
        env={"_ORCH_COMPLETE": "complete_bash", "COMP_WORDS": "orch task wa", "COMP_CWORD": "2"}
    )
    assert completed.stdout.split() == ["watch"]


def test_reads_refuse_a_store_that_was_never_migrated_and_create_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "none" / "orch.db"
    url = f"sqlite:///{missing}"
    for args in (["task", "list"], ["task", "show", "A-1"], ["task", "watch", "A-1"]):
        line = one_error(orch(*args, env={"ORCH_STORE__URL": url}))
        assert line == f"error: the store at {url} needs `orch migrate`"
    one_error(orch("token", "list", env={"ORCH_STORE__URL": url}))
    assert not missing.parent.exists()

    # a database of something else: orch's tables are not made in it
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE theirs (x INTEGER)")
    url = f"sqlite:///{other}"
    assert one_error(orch("task", "list", "--json", env={"ORCH_STORE__URL": url})) == (
        f"error: the store at {url} needs `orch migrate`"
    )
    with sqlite3.connect(other) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        journal = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert tables == ["theirs"]
    assert journal == "delete"  # not switched to WAL, as orch's own stores are
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]

    # once migrated, the same read answers
    assert orch("migrate", env={"ORCH_STORE__URL": url}).returncode == 0
    listed = orch("task", "list", "--json", env={"ORCH_STORE__URL": url})
    assert (listed.returncode, json.loads(listed.stdout)) == (0, {"tasks": []})


@pytest.mark.parametrize("kind", ["random bytes", "a directory"])
@pytest.mark.parametrize(
    "args",
    [["task", "list"], ["task", "add", "sample", "x"], ["token", "list"], ["migrate"]],
)
def test_a_corrupt_or_unreadable_sqlite_store_is_one_error_line(
    tmp_path: Path, kind: str, args: list[str]
) -> None:
    path = tmp_path / "orch.db"
    if kind == "a directory":
        path.mkdir()
    else:
        path.write_bytes(bytes(range(256)) * 20)
    url = f"sqlite:///{path}"
    line = one_error(orch(*args, env={"ORCH_STORE__URL": url, "ORCH_DATA_DIR": str(tmp_path)}))
    assert line.startswith(f"error: cannot open the store at {url}: ")


def test_an_unreachable_postgresql_store_is_one_error_line_through_psycopg_3(
    tmp_path: Path,
) -> None:
    env = {"ORCH_STORE__URL": "postgresql://orch@127.0.0.1:1/orch", "ORCH_DATA_DIR": str(tmp_path)}
    for args in (["task", "list"], ["migrate"]):
        line = one_error(orch(*args, env=env))
        assert line.startswith("error: cannot open the store at postgresql+psycopg://orch@")


def test_lists_show_a_reason_on_one_line_uncut_and_show_gives_it_whole(
    configured: Path, store: SqlStore
) -> None:
    assert cli(configured, "task", "add", "sample", "Add slugify").returncode == 0
    park(store, REASON)

    listed = cli(configured, "task", "list")  # stdout is a pipe here, not a terminal
    assert listed.returncode == 0, listed.stderr
    assert f"{LONG.rstrip()}…" in listed.stdout  # the whole first line, marked as cut
    assert "Traceback" not in listed.stdout
    assert len([line for line in listed.stdout.splitlines() if "SAM-1" in line]) == 1

    shown = cli(configured, "task", "show", "sam-1")  # a key typed in lower case
    assert shown.returncode == 0, shown.stderr
    assert f"reason: {LONG}" in shown.stdout
    assert "AssertionError" in shown.stdout
    as_json = json.loads(cli(configured, "task", "show", "sam-1", "--json").stdout)
    assert (as_json["key"], as_json["reason"]) == ("SAM-1", REASON)


def test_every_command_that_prints_data_prints_the_apis_json(
    configured: Path, store: SqlStore
) -> None:
    added = json.loads(cli(configured, "task", "add", "sample", "Add slugify", "--json").stdout)
    assert (added["key"], added["history"][0]["actor"]) == ("SAM-1", "cli")
    assert {"stages", "gates", "runs", "effects", "history", "ledger"} <= added.keys()
    move(
        store,
        Decision(
            Move.ADVANCE, Stage.ARCHITECTURE, TaskStatus.WAITING, "plan", waiting_for="approve-plan"
        ),
    )
    assert cli(configured, "task", "add", "sample", "Add a title").returncode == 0
    park(store, "3 attempts failed")

    listed = json.loads(cli(configured, "task", "list", "--json").stdout)
    assert [(t["key"], t["status"]) for t in listed["tasks"]] == [
        ("SAM-2", "needs_operator"),
        ("SAM-1", "waiting"),
    ]
    approved = cli(configured, "task", "approve", "sam-1", "--json")
    assert json.loads(approved.stdout) == {
        "key": "SAM-1",
        "checkpoint": "approve-plan",
        "recorded": True,
    }
    stopped = cli(configured, "task", "stop", "sam-1", "--reason", "not now", "--json")
    assert json.loads(stopped.stdout) == {"key": "SAM-1", "status": "waiting", "recorded": True}
    retried = cli(configured, "task", "retry", "sam-2", "--budget-usd", "2", "--json")
    assert json.loads(retried.stdout) == {"key": "SAM-2", "recorded": True}

    made = json.loads(cli(configured, "token", "create", "--name", "ann", "--json").stdout)
    assert (made["name"], made["role"], made["secret"].startswith("orch_")) == (
        "ann",
        "viewer",
        True,
    )
    tokens = json.loads(cli(configured, "token", "list", "--json").stdout)["tokens"]
    assert [(t["name"], t["role"], t["revoked_at"]) for t in tokens] == [("ann", "viewer", None)]


def watch(config: Path, key: str) -> subprocess.Popen[str]:
    env = {"PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "orch.cli", "-c", str(config), "task", "watch", key],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**clean_env(), **env},
    )


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}


def test_watch_follows_a_task_until_it_is_done_and_exits_0(
    configured: Path, store: SqlStore
) -> None:
    assert cli(configured, "task", "add", "sample", "Add slugify").returncode == 0
    proc = watch(configured, "sam-1")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("watching SAM-1: Add slugify")
        assert "analysis started" in proc.stdout.readline()
        # the task moves while it is watched
        move(store, Decision(Move.ADVANCE, Stage.DONE, TaskStatus.DONE, "merged and deployed"))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "merged and deployed: done" in out


def test_watch_of_a_parked_task_shows_why_and_exits_nonzero(
    configured: Path, store: SqlStore
) -> None:
    assert cli(configured, "task", "add", "sample", "Add slugify").returncode == 0
    park(store, REASON)
    done = cli(configured, "task", "watch", "SAM-1")
    assert done.returncode == 1
    assert f"needs an operator: {LONG.rstrip()}…" in done.stdout


def test_ctrl_c_ends_a_watch_cleanly(configured: Path) -> None:
    assert cli(configured, "task", "add", "sample", "Add slugify").returncode == 0
    proc = watch(configured, "SAM-1")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("watching SAM-1")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["stopped watching SAM-1; the task goes on"]
