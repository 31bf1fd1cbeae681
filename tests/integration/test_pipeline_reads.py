"""`orch serve` files a ticket with the pipeline it holds for the repository's default-branch
head: no git runs in the request, so a forge that cannot be reached (or a repository lock held
by a long fetch) never delays it; a pipeline pushed later is held once the forge says so."""

from __future__ import annotations

import time
from pathlib import Path

from orch.bootstrap import build
from orch.config import IsolatedSettings, RepoSettingsModel, StoreSettings
from orch.demo import sample
from orch.domain import pipeline as pl

WAIT_S = 60.0
FIRST = (
    "replace: true\nmerge: false\n"
    "stages:\n  - name: analysis\n  - name: development\ncheckpoints: []\n"
)
SECOND = (
    "replace: true\nmerge: false\nstages:\n  - name: analysis\ncheckpoints: []\nmax_attempts: 5\n"
)


def push_pipeline(work: Path, text: str, message: str) -> None:
    (work / ".orch").mkdir(exist_ok=True)
    (work / ".orch" / "pipeline.yaml").write_text(text, encoding="utf-8")
    sample.git("add", "--all", cwd=work)
    sample.git("commit", "--quiet", "-m", message, cwd=work)
    sample.git("push", "--quiet", "origin", "main", cwd=work)


def test_a_ticket_is_filed_from_the_held_pipeline_and_a_pushed_one_is_held_next(
    tmp_path: Path,
) -> None:
    work, remote = sample.create(tmp_path / "alpha")
    push_pipeline(work, FIRST, "A pipeline")
    repo = RepoSettingsModel.model_validate(
        {"name": "alpha", "remote": str(remote), "test_command": sample.test_command()}
    )
    settings = IsolatedSettings(
        data_dir=tmp_path / "data",
        store=StoreSettings.model_validate({"url": f"sqlite:///{tmp_path / 'orch.db'}"}),
        repos=[repo],
        pipeline_refresh_s=3600.0,
    )
    app = build(settings)
    app.background.start()
    away = remote.with_name("gone")
    try:
        deadline = time.monotonic() + WAIT_S
        while not app.pipelines.current and time.monotonic() < deadline:
            time.sleep(0.02)
        remote.rename(away)  # any git against the forge fails from here
        try:
            filed = app.intake.file("alpha", "Tidy")
        finally:
            away.rename(remote)
        push_pipeline(work, SECOND, "A shorter pipeline")
        app.pipelines.moved("alpha")
        held = app.pipeline_for("alpha")
        while held.max_attempts != 5 and time.monotonic() < deadline:
            time.sleep(0.02)
            held = app.pipeline_for("alpha")
    finally:
        app.close()

    stages = [s.stage.value for s in pl.from_dict(filed.pipeline).stages]
    assert stages == ["analysis", "development"]
    assert [s.stage.value for s in held.stages] == ["analysis"]
