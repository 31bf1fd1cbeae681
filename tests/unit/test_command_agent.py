"""The command agent: any command line, confined to its worktree and an allowlisted environment."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from orch.adapters.agents.command import CommandAgent
from orch.domain import pipeline as pl
from orch.domain.states import Stage, TaskStatus
from orch.testing import rig

SECRETS = {
    "GITEA_TOKEN": "gitea-secret",
    "PLANE_API_KEY": "plane-secret",
    "TELEGRAM_BOT_TOKEN": "telegram-secret",
    "ORCH_STORE__URL": "postgresql://orch:pw@db/orch",
}


def analysis_only() -> pl.Pipeline:
    base = pl.default_pipeline()
    return replace(base, stages=(replace(base.stages[0], gates=()),), checkpoints=())


def test_the_command_agent_sees_its_ticket_and_prompt_and_no_credentials(tmp_path: Path) -> None:
    script = (
        'env > "$HOME/seen.env"; '
        'echo "$ORCH_TICKET $ORCH_STAGE $ORCH_ATTEMPT {workdir}"; '
        'cp "{prompt_file}" "$HOME/prompt.copy"; pwd'
    )
    agent = CommandAgent("default", ["sh", "-c", script])
    environ = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LC_ALL": "C.UTF-8", **SECRETS}
    r = rig({"default": agent}, pipeline=analysis_only(), environ=environ)
    try:
        task = r.intake.file("app", "Add a greeting")
        r.run_until_idle()
        assert r.store.get_task(task.id).status == TaskStatus.DONE
        [run] = r.store.runs(task.id)
        log = Path(run.log_path)
        prompt = log.with_suffix(".prompt.md")
        home = r.logs / "homes" / f"{task.key}-{task.id}"
        seen = dict(
            line.split("=", 1)
            for line in (home / "seen.env").read_text().splitlines()
            if "=" in line
        )
        assert seen["HOME"] == str(home)  # a home of its own, not orch's
        assert not set(SECRETS) & set(seen)
        assert (seen["ORCH_TICKET"], seen["ORCH_STAGE"], seen["ORCH_ATTEMPT"]) == (
            task.key,
            "analysis",
            "1",
        )
        assert seen["ORCH_PROMPT"] == prompt.read_text().splitlines()[0]  # env prints line by line
        assert seen["LC_ALL"] == "C.UTF-8"
        assert (home / "prompt.copy").read_text() == prompt.read_text()
        assert "Add a greeting" in prompt.read_text()
        first, cwd = log.read_text().splitlines()
        workdir = r.forge.prepare_worktree("app", task.branch)
        assert first == f"{task.key} analysis 1 {workdir}"
        assert Path(cwd) == workdir
    finally:
        r.close()


def test_a_prompt_too_large_for_the_environment_reaches_the_agent_in_its_file_only(
    tmp_path: Path,
) -> None:
    # one environment string over 128 KiB would make every start fail with E2BIG
    script = 'test -z "${ORCH_PROMPT+set}" && wc -c < "$ORCH_PROMPT_FILE"'
    agent = CommandAgent("default", ["sh", "-c", script])
    r = rig({"default": agent}, pipeline=analysis_only())
    try:
        task = r.intake.file("app", "Add a greeting", "a pasted log line\n" * 12_000)
        r.run_until_idle()
        assert r.store.get_task(task.id).status == TaskStatus.DONE
        [run] = r.store.runs(task.id)
        size = int(Path(run.log_path).read_text().strip())
        assert size == len(Path(run.log_path).with_suffix(".prompt.md").read_bytes()) > 200_000
    finally:
        r.close()


def test_a_command_that_cannot_start_fails_the_attempt_with_the_reason(tmp_path: Path) -> None:
    agent = CommandAgent("default", [str(tmp_path / "no-such-agent")])
    r = rig({"default": agent}, pipeline=analysis_only(), max_attempts=1)
    try:
        task = r.intake.file("app", "Add a greeting")
        r.run_until_idle()
        parked = r.store.get_task(task.id)
        assert parked.status == TaskStatus.NEEDS_OPERATOR
        assert parked.stage == Stage.ANALYSIS
        assert "could not start" in parked.status_reason
        assert "no-such-agent" in parked.status_reason
    finally:
        r.close()
