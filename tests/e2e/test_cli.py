"""The CLI: tasks filed and shown, and bad input met with one clear line and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy

from orch.adapters.store.sql import SqlStore
from orch.demo import sample
from orch.domain.pipeline import Decision, Move
from orch.domain.states import Stage, TaskStatus
from orch.testing import advance

from .conftest import commit_file, orch, write_config

pytestmark = pytest.mark.slow


@pytest.fixture
def configured(tmp_path: Path) -> Path:
    _, remote = sample.create(tmp_path)
    return write_config(tmp_path, remote)


def test_task_add_files_a_ticket_and_list_and_show_report_it(configured: Path) -> None:
    added = orch("-c", str(configured), "task", "add", "sample", "Add slugify", "--json")
    assert added.returncode == 0, added.stderr
    task = json.loads(added.stdout)
    assert (task["key"], task["stage"], task["status"]) == ("SAM-1", "analysis", "active")
    listed = json.loads(orch("-c", str(configured), "task", "list", "--json").stdout)
    assert [t["key"] for t in listed["tasks"]] == ["SAM-1"]
    shown = json.loads(orch("-c", str(configured), "task", "show", "SAM-1", "--json").stdout)
    assert shown["history"][0]["actor"] == "cli"
    assert shown["history"][0]["to"] == {"stage": "analysis", "status": "active"}


def test_task_list_shows_the_dead_letters_with_why_they_were_parked(configured: Path) -> None:
    assert orch("-c", str(configured), "task", "add", "sample", "Add slugify").returncode == 0
    assert orch("-c", str(configured), "task", "add", "sample", "Add a title").returncode == 0
    store = SqlStore(f"sqlite:///{configured.parent / 'orch.db'}")
    try:
        # a worker gave up on SAM-1 after its last attempt
        c = store.claim("host:1:1:worker", 60.0, lambda _repo: 1)
        assert c is not None
        reason = "3 attempts failed; last: agent default exited 1"
        advance(store, c, Stage.ANALYSIS, pl_park(reason), "worker")
    finally:
        store.close()

    wide = {"COLUMNS": "200"}  # so the table does not wrap the reason
    listed = orch("-c", str(configured), "task", "list", "--status", "needs_operator", env=wide)
    assert listed.returncode == 0, listed.stderr
    assert "SAM-1" in listed.stdout and "SAM-2" not in listed.stdout
    assert "3 attempts failed" in listed.stdout
    as_json = orch("-c", str(configured), "task", "list", "--status", "needs_operator", "--json")
    parked = json.loads(as_json.stdout)["tasks"]
    assert [(t["key"], t["reason"]) for t in parked] == [("SAM-1", reason)]
    wrong = orch("-c", str(configured), "task", "list", "--status", "parked")
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("error: unknown status 'parked'")


def pl_park(reason: str) -> Decision:
    return Decision(Move.PARK, Stage.ANALYSIS, TaskStatus.NEEDS_OPERATOR, reason)


def test_invalid_pipeline_file_is_reported_with_file_line_and_field(
    configured: Path, tmp_path: Path
) -> None:
    commit_file(
        tmp_path,
        ".orch/pipeline.yaml",
        "stages:\n  - name: analysis\n  - name: reveiw\n",
    )
    added = orch("-c", str(configured), "task", "add", "sample", "Add slugify")
    assert added.returncode == 2
    assert added.stderr.strip().splitlines() == [
        "error: sample:.orch/pipeline.yaml:3: stages[1].name: Input should be 'analysis', "
        "'architecture', 'development', 'review', 'testing', 'deploy-staging' or 'deploy'"
    ]
    store = SqlStore(f"sqlite:///{tmp_path / 'orch.db'}")
    try:
        assert store.list_tasks() == []
        assert store.get_ticket("SAM-1") is None
    finally:
        store.close()


def test_pipeline_override_on_the_default_branch_shapes_new_tasks(
    configured: Path, tmp_path: Path
) -> None:
    commit_file(
        tmp_path,
        ".orch/pipeline.yaml",
        "replace: true\nmerge: false\n"
        "stages:\n  - name: analysis\n  - name: development\n    rework_to: null\n",
    )
    added = orch("-c", str(configured), "task", "add", "sample", "Add slugify")
    assert added.returncode == 0, added.stderr
    shown = json.loads(orch("-c", str(configured), "task", "show", "SAM-1", "--json").stdout)
    assert shown["pipeline"] == ["analysis", "development"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["task", "add", "nope", "x"], {}, "error: unknown repository 'nope'"),
        (["task", "show", "NOPE-1"], {}, "error: the store at"),
        (
            ["task", "list"],
            {"ORCH_STORE__URL": "postgresql://postgres@127.0.0.1:1/none"},
            "error: cannot open the store at",
        ),
        (["task", "list"], {"ORCH_WORKER__SLOTS": "many"}, "error: invalid setting worker.slots"),
        (["task", "list"], {"ORCH_STORE__URL": "mysql://x/y"}, "error: unsupported store URL"),
    ],
)
def test_bad_input_gets_one_error_line_and_a_nonzero_exit(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    done = orch(*args, env={"ORCH_DATA_DIR": str(tmp_path / "data"), **env})
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(message)


def test_an_unknown_key_is_one_error_line(configured: Path) -> None:
    assert orch("-c", str(configured), "migrate").returncode == 0
    done = orch("-c", str(configured), "task", "show", "nope-1")
    assert (done.returncode, done.stderr.strip().splitlines()) == (
        2,
        ["error: no task for ticket nope-1"],
    )


def test_unwritable_workspace_root_is_refused_before_anything_is_filed(
    configured: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = orch(
        "-c",
        str(configured),
        "task",
        "add",
        "sample",
        "x",
        env={"ORCH_WORKSPACE_ROOT": str(blocker / "ws")},
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: workspace root {blocker / 'ws'} cannot be written")
    assert not (tmp_path / "orch.db").exists()


def test_migrate_reports_the_store_it_migrated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    done = orch("migrate", env={"ORCH_STORE__URL": url})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"migrated {url}"
    engine = sqlalchemy.create_engine(url)
    try:
        tables = set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"tasks", "jobs", "transitions", "effects", "events", "gate_verdicts"} <= tables
