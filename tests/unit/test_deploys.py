"""Deploys move forward: a release older than what a target runs is superseded, not deployed, and
a deploy that fails its check is rolled back to the release before it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orch.adapters.agents.scripted import ScriptedAgent
from orch.adapters.process import LocalRunner, ProcessGroup
from orch.adapters.store import schema as tables
from orch.domain import naming
from orch.domain.model import Task
from orch.domain.states import EffectState, Stage, TaskStatus
from orch.ports import DeployTarget, RepoSettings, Store
from orch.services.views import task_detail
from orch.testing import Rig, rig, sql_memory_store


@pytest.fixture
def prod(tmp_path: Path) -> Path:
    return tmp_path / "production"


@pytest.fixture
def r(tmp_path: Path, prod: Path) -> Iterator[Rig]:
    made = production_rig(tmp_path, prod)
    yield made
    made.close()


def production_rig(tmp_path: Path, prod: Path, store: Store | None = None) -> Rig:
    broken = tmp_path / "broken"
    # the target keeps the release it runs in a file; its check fails while `broken` exists
    deploy = DeployTarget(
        f'echo "$ORCH_RELEASE" > {prod}; echo "$ORCH_RELEASE" >> {prod}.log',
        check=f'grep -qx "$ORCH_RELEASE" {prod} && ! test -e {broken}',
    )
    repo = RepoSettings(
        name="app",
        test_command="true",
        deploy={"staging": DeployTarget("true"), "production": deploy},
    )
    return rig({"default": ScriptedAgent()}, repo=repo, store=store)


def to_confirm_deploy(r: Rig, title: str) -> Task:
    task = r.intake.file("app", title, "")
    r.run_until_idle()
    assert r.intake.decide(task.key, True, "alice")
    r.run_until_idle()
    waiting = r.store.get_task(task.id)
    assert waiting.waiting_for == "confirm-deploy", waiting.status_reason
    return waiting


def confirm(r: Rig, task: Task) -> Task:
    assert r.intake.decide(task.key, True, "bob")
    r.run_until_idle()
    return r.store.get_task(task.id)


def release_of(r: Rig, task: Task) -> str:
    [merge] = [e for e in r.store.effects(task.id) if e.kind == "merge"]
    return str(merge.result["merge_sha"])


def test_confirming_the_newer_release_first_leaves_production_on_it(r: Rig, prod: Path) -> None:
    older = to_confirm_deploy(r, "First change")
    newer = to_confirm_deploy(r, "Second change")
    assert r.forge.is_ancestor("app", release_of(r, older), release_of(r, newer))

    assert confirm(r, newer).status == TaskStatus.DONE
    done = confirm(r, older)
    assert done.status == TaskStatus.DONE
    assert prod.read_text().strip() == release_of(r, newer)
    # the older release never ran in production
    assert Path(f"{prod}.log").read_text().split() == [release_of(r, newer)]
    deploys = task_detail(r.store, done)["deploys"]
    assert [(d["target"], d["outcome"]) for d in deploys] == [
        ("staging", "deployed"),
        ("production", "superseded"),
    ]
    assert deploys[1]["superseded_by"] == release_of(r, newer)


def test_a_deploy_settles_an_unknown_deploy_to_its_target_first_and_never_moves_it_back(
    tmp_path: Path, prod: Path
) -> None:
    store = sql_memory_store()
    r = production_rig(tmp_path, prod, store)
    try:
        older = to_confirm_deploy(r, "First change")
        newer = to_confirm_deploy(r, "Second change")
        assert confirm(r, newer).status == TaskStatus.DONE
        # the newer release's deploy ran, but its worker died before recording it: unknown
        key = naming.deploy_key("app", "production", release_of(r, newer))
        with store.engine.begin() as conn:
            conn.execute(
                tables.effects.update().where(tables.effects.c.key == key).values(state="UNKNOWN")
            )
        done = confirm(r, older)
        assert done.status == TaskStatus.DONE
        # the check said production runs the newer release: the older one is not deployed
        assert prod.read_text().strip() == release_of(r, newer)
        assert Path(f"{prod}.log").read_text().split() == [release_of(r, newer)]
        settled = r.store.get_effect(key)
        assert settled is not None
        assert (settled.state, settled.result["resolved_by"]) == (EffectState.SUCCEEDED, "check")
        deploys = task_detail(r.store, done)["deploys"]
        assert [(d["target"], d["outcome"]) for d in deploys] == [
            ("staging", "deployed"),
            ("production", "superseded"),
        ]
    finally:
        r.close()


def test_confirming_in_order_deploys_each_release_forward(r: Rig, prod: Path) -> None:
    older = to_confirm_deploy(r, "First change")
    newer = to_confirm_deploy(r, "Second change")
    confirm(r, older)
    confirm(r, newer)
    assert Path(f"{prod}.log").read_text().split() == [release_of(r, older), release_of(r, newer)]


def test_a_deploy_that_fails_its_check_is_rolled_back_once_and_the_task_parks(
    r: Rig, prod: Path, tmp_path: Path
) -> None:
    good = confirm(r, to_confirm_deploy(r, "First change"))
    assert good.status == TaskStatus.DONE
    bad = to_confirm_deploy(r, "Second change")
    (tmp_path / "broken").touch()
    parked = confirm(r, bad)
    assert (parked.stage, parked.status) == (Stage.DEPLOY, TaskStatus.NEEDS_OPERATOR)
    assert "failed its check" in parked.status_reason
    assert f"rolled back to {release_of(r, good)[:12]}" in parked.status_reason
    assert prod.read_text().strip() == release_of(r, good)
    effects = {e.kind: e for e in r.store.effects(bad.id)}
    assert effects["deploy:production"].result["check"] == "failed"
    assert effects["rollback:production"].state == EffectState.SUCCEEDED
    assert effects["rollback:production"].precondition == release_of(r, good)
    # the deploy held the target's one deploy slot until its rollback was done
    assert effects["deploy:production"].updated_at >= effects["rollback:production"].updated_at
    deploys = task_detail(r.store, parked)["deploys"]
    assert [d["outcome"] for d in deploys if d["target"] == "production"] == [
        "check failed",
        "rolled back",
    ]

    # what production runs is the release it was rolled back to: a later deploy builds on it
    newest = to_confirm_deploy(r, "Third change")
    (tmp_path / "broken").unlink()
    assert confirm(r, newest).status == TaskStatus.DONE
    production = [d for d in task_detail(r.store, newest)["deploys"] if d["target"] == "production"]
    assert [d["outcome"] for d in production] == ["deployed"]
    (tmp_path / "broken").touch()

    # an operator's retry neither deploys the bad release again nor rolls back twice
    (tmp_path / "broken").unlink()
    assert r.intake.retry(bad.key, None, "carol")
    r.run_until_idle()
    again = confirm(r, r.store.get_task(bad.id))  # the retry waits at confirm-deploy again
    assert again.status == TaskStatus.NEEDS_OPERATOR
    assert "rolled back to" in again.status_reason
    assert Path(f"{prod}.log").read_text().split() == [
        release_of(r, good),
        release_of(r, bad),
        release_of(r, good),
        release_of(r, newest),
    ]


def test_a_first_deploy_that_fails_its_check_has_nothing_to_roll_back_to(
    r: Rig, prod: Path, tmp_path: Path
) -> None:
    task = to_confirm_deploy(r, "First change")
    (tmp_path / "broken").touch()
    parked = confirm(r, task)
    assert parked.status == TaskStatus.NEEDS_OPERATOR
    assert "no earlier release to roll back to" in parked.status_reason


class RecordingRunner(LocalRunner):
    """Starts commands as orch does, and notes the latest start each may make."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: list[tuple[str, float | None, float]] = []

    def start(self, command: str, *args: Any, **kwargs: Any) -> ProcessGroup:
        self.starts.append((command, kwargs.get("not_after"), time.time()))
        return super().start(command, *args, **kwargs)


def test_a_deploy_command_is_started_only_within_its_freshly_renewed_lease(
    tmp_path: Path, prod: Path
) -> None:
    runner = RecordingRunner()
    deploy = DeployTarget(f'echo "$ORCH_RELEASE" >> {prod}.log', check=f"test -e {prod}.log")
    repo = RepoSettings(
        name="app", test_command="true", deploy={"staging": deploy, "production": deploy}
    )
    made = rig({"default": ScriptedAgent()}, repo=repo, runner=runner)
    try:
        confirm(made, to_confirm_deploy(made, "Ship it"))
    finally:
        made.close()
    deploys = [(n, at) for command, n, at in runner.starts if command == deploy.command]
    assert len(deploys) == 2  # staging, then production
    ttl = made.engine.settings.lease_ttl_s
    for not_after, at in deploys:
        # renewed just before the start: the lease holds for about its ttl from then
        assert not_after is not None and at < not_after <= at + ttl
    # what may run again (a gate, a check) is started with no such bound
    assert all(n is None for command, n, _ in runner.starts if command != deploy.command)
