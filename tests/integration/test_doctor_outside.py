"""`orch doctor`'s checks of Plane, Gitea and Telegram, against the built-in fakes: a credential
that is not set, one that is refused, and (Plane) a state orch relies on that does not exist
each fail with what to do; a setup that works passes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orch.config import Settings
from orch.doctor import outside
from orch.fakes.gitea import GiteaFake
from orch.fakes.plane import PlaneFake
from orch.fakes.telegram import TelegramFake

STATES = (
    ("Backlog", "backlog"),
    ("To Analyse", "unstarted"),
    ("Approved", "started"),
    ("Rejected", "started"),
    ("Confirm Deploy", "started"),
    ("Done", "completed"),
    ("STOP", "cancelled"),
)


@pytest.fixture
def plane() -> Iterator[PlaneFake]:
    with PlaneFake("plane-key") as fake:
        yield fake


def plane_settings(fake: PlaneFake, project: str, **more: object) -> Settings:
    projects = [{"id": project, "repo": "app", **more}]
    tracker = {"kind": "plane", "url": fake.url, "workspace": fake.slug, "projects": projects}
    return Settings(
        tracker=tracker, repos=[{"name": "app", "remote": "/srv/app.git"}], data_dir=Path("/tmp")
    )


def test_plane_with_every_state_and_its_secret_passes(plane: PlaneFake) -> None:
    settings = plane_settings(plane, plane.add_project("App", "APP", STATES))
    assert settings.tracker is not None
    env = {"PLANE_API_KEY": "plane-key", "PLANE_WEBHOOK_SECRET": "s"}
    checks = outside.plane(settings.tracker, env, 5.0)
    assert [c.level for c in checks] == ["ok", "ok", "ok"], [c.line() for c in checks]
    assert plane.violations == []


def test_a_state_orch_relies_on_that_plane_lacks_fails_closed_naming_it(plane: PlaneFake) -> None:
    without_stop = tuple(s for s in STATES if s[0] != "STOP")
    settings = plane_settings(
        plane, plane.add_project("App", "APP", without_stop), report={"done": "Shipped"}
    )
    assert settings.tracker is not None
    checks = outside.plane(settings.tracker, {"PLANE_API_KEY": "plane-key"}, 5.0)
    [project] = [c for c in checks if c.check.startswith("tracker project")]
    assert project.level == "fail"
    assert "stop ('STOP')" in project.detail and "report done ('Shipped')" in project.detail
    assert [c.level for c in checks if c.check == "tracker webhook"] == ["warn"]


def test_a_plane_key_unset_or_refused_fails(plane: PlaneFake) -> None:
    settings = plane_settings(plane, plane.add_project("App", "APP", STATES))
    assert settings.tracker is not None
    [unset] = outside.plane(settings.tracker, {}, 5.0)
    assert unset.level == "fail" and "$PLANE_API_KEY" in unset.detail
    [refused] = outside.plane(settings.tracker, {"PLANE_API_KEY": "wrong"}, 5.0)
    assert refused.level == "fail" and "refused" in refused.detail
    assert "wrong" not in refused.detail


def test_gitea_with_push_access_passes_and_a_wrong_token_fails(tmp_path: Path) -> None:
    with GiteaFake(tmp_path / "gitea", "gitea-token") as gitea:
        remote = gitea.create_repo("app", {"README.md": "hi\n"})
        settings = Settings(
            forge={"kind": "gitea", "url": gitea.url},
            repos=[{"name": "app", "remote": remote}],
            data_dir=tmp_path,
        )
        checks = outside.gitea(settings, {"GITEA_TOKEN": "gitea-token"}, 5.0)
        levels = {c.check: c.level for c in checks}
        assert levels == {"forge": "ok", "forge repo app": "ok", "forge webhook": "warn"}
        [refused] = outside.gitea(settings, {"GITEA_TOKEN": "nope"}, 5.0)
        assert refused.level == "fail" and "refused" in refused.detail
        # the fake remembers the refused request, which only the wrong token made
        assert gitea.violations == ["GET /api/v1/user: not authenticated"]


def test_telegram_names_its_bot_and_warns_when_nobody_may_act() -> None:
    with TelegramFake("123:bot-token") as telegram:
        settings = Settings(notifiers=[{"kind": "telegram", "api_url": telegram.url, "chats": [1]}])
        channel = settings.notifiers[0]
        checks = outside.telegram(channel, {"TELEGRAM_BOT_TOKEN": "123:bot-token"}, 5.0)  # type: ignore[arg-type]
        assert [c.level for c in checks] == ["ok", "warn"]
        [refused] = outside.telegram(channel, {"TELEGRAM_BOT_TOKEN": "123:other"}, 5.0)  # type: ignore[arg-type]
        assert refused.level == "fail" and "123:other" not in refused.detail
