"""`orch doctor` and `orch pipeline check` as a user runs them: one line per check, the exit
code saying whether anything failed, and nothing created or migrated on the way."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from orch.demo import sample

from .conftest import orch, write_config

pytestmark = pytest.mark.slow

KEY = {"ANTHROPIC_API_KEY": "sk-doctor-test"}


def fake_claude(root: Path) -> Path:
    path = root / "bin" / "claude"
    path.parent.mkdir()
    path.write_text('#!/bin/sh\necho "2.1.328 (Claude Code)"\n')
    path.chmod(0o755)
    return path


def push_pipeline(root: Path, text: str) -> None:
    work = root / "sample"
    (work / ".orch").mkdir()
    (work / ".orch" / "pipeline.yaml").write_text(text)
    sample.git("add", "--all", cwd=work)
    sample.git("commit", "--quiet", "-m", "add a pipeline", cwd=work)
    sample.git("push", "--quiet", "origin", "main", cwd=work)


def test_doctor_on_a_good_setup_prints_an_ok_line_per_check_and_exits_0(tmp_path: Path) -> None:
    _, remote = sample.create(tmp_path)
    push_pipeline(
        tmp_path,
        "replace: true\nmerge: false\n"
        "stages:\n  - name: analysis\n  - name: review\n    agent: reviewer\n",
    )
    agents = {
        "default": {"kind": "scripted"},
        "reviewer": {"kind": "claude_code", "command": str(fake_claude(tmp_path))},
    }
    config = write_config(tmp_path, remote, agents=agents)
    assert orch("-c", str(config), "migrate").returncode == 0

    done = orch("-c", str(config), "doctor", env=KEY)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert all(line.startswith("ok   ") for line in lines), lines
    checks = [line[5:].split(":")[0] for line in lines]
    assert checks == [
        "settings",
        "store",
        "sandbox",
        "user namespaces",
        "directories",
        "tracker",
        "forge",
        "notifier",
        "repo sample remote",
        "repo sample branch",
        "repo sample pipeline",
        "agent default",
        "agent reviewer",
    ]
    assert f"ok   settings: {config}" in lines[0]
    assert (
        "ok   repo sample pipeline: .orch/pipeline.yaml on main (2 stages: analysis, review)"
        in lines
    )
    assert any("2.1.328 (Claude Code)" in line for line in lines)

    as_json = orch("-c", str(config), "doctor", "--json", env=KEY)
    assert as_json.returncode == 0
    results = json.loads(as_json.stdout)
    assert [r["check"] for r in results] == checks
    assert all(r["ok"] is True and r["detail"] for r in results)


def test_doctor_on_a_broken_setup_names_each_failure_exits_1_and_creates_no_store(
    tmp_path: Path,
) -> None:
    agents = {
        "default": {"kind": "scripted"},
        "reviewer": {"kind": "claude_code", "command": str(tmp_path / "missing" / "claude")},
    }
    config = write_config(tmp_path, tmp_path / "no-such-remote.git", agents=agents)

    done = orch("-c", str(config), "doctor", env=KEY)
    assert done.returncode == 1, done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert failed == [
        f"FAIL store: no database at {tmp_path / 'orch.db'}: run `orch migrate`",
        f"FAIL repo sample remote: {tmp_path / 'no-such-remote.git'} cannot be reached: fatal:"
        f" '{tmp_path / 'no-such-remote.git'}' does not appear to be a git repository",
        f"FAIL agent reviewer: claude_code: {tmp_path / 'missing' / 'claude'} not found on PATH"
        " (install it, or set ORCH_CLAUDE_BIN)",
    ]
    assert not (tmp_path / "orch.db").exists()
    assert not (tmp_path / "data").exists()

    results = json.loads(orch("-c", str(config), "doctor", "--json", env=KEY).stdout)
    assert [r["check"] for r in results if not r["ok"]] == [
        "store",
        "repo sample remote",
        "agent reviewer",
    ]


def test_doctor_does_not_migrate_a_store_that_has_no_schema(tmp_path: Path) -> None:
    _, remote = sample.create(tmp_path)
    config = write_config(tmp_path, remote)
    sqlite3.connect(tmp_path / "orch.db").close()

    done = orch("-c", str(config), "doctor")
    assert done.returncode == 1
    assert (
        f"FAIL store: sqlite:///{tmp_path / 'orch.db'} has no orch schema: run `orch migrate`"
        in (done.stdout.splitlines())
    )
    with sqlite3.connect(tmp_path / "orch.db") as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


def test_doctor_with_settings_that_do_not_load_ends_with_one_error_line(tmp_path: Path) -> None:
    config = tmp_path / "orch.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nworker: {{slots: many}}\n")
    done = orch("-c", str(config), "doctor")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: {config}: invalid setting worker.slots: Input should be a valid integer, unable"
        " to parse string as an integer"
    ]


def test_pipeline_check_accepts_a_valid_file_and_names_its_stages(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "replace: true\nmerge: false\n"
        "stages:\n  - name: analysis\n  - name: development\n    rework_to: null\n"
    )
    done = orch("pipeline", "check", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "ok: 2 stages: analysis, development\n"
        "  analysis: agent default; gates spec (artifact); failed: retry\n"
        "  development: agent default; gates tests (command); failed: retry\n"
        "  max_attempts 3; max_rework_rounds 3; merges nothing (merge: false)\n"
    )


def test_pipeline_check_prints_the_built_in_pipeline_as_the_file_changes_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "budget: {usd: 5}\nstages:\n  - {name: architecture, remove: true}\n"
        "  - name: development\n    budget: {usd: 2, tokens: 1000}\n"
    )
    done = orch("pipeline", "check", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "ok: 6 stages: analysis, development, review, testing, deploy-staging, deploy",
        "  analysis: agent default; gates spec (artifact); failed: retry",
        "  development: agent default; gates tests (command); failed: retry;"
        " budget $2 and 1000 tokens",
        "  review: agent default; gates review (verdict); failed: back to development",
        "  testing: agent default; gates tests (command), test-report (verdict);"
        " failed: back to development",
        "  deploy-staging: no agent; then merge, deploy:staging; failed: back to development",
        "  wait confirm-deploy: a person decides; rejected: back to development",
        "  deploy: no agent; then deploy:production",
        "  max_attempts 3; max_rework_rounds 3; task budget $5",
    ]


def test_pipeline_check_lists_every_problem_with_its_line_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "stages:\n  - name: analysis\n  - name: reveiw\n  - name: testing\n    timeout_s: 0\n"
    )
    done = orch("pipeline", "check", str(path))
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"{path}:3: stages[1].name: Input should be 'analysis', 'architecture', 'development',"
        " 'review', 'testing', 'deploy-staging' or 'deploy'",
        f"{path}:5: stages[2].timeout_s: Input should be greater than 0",
    ]


def test_pipeline_check_with_settings_refuses_an_agent_that_is_not_configured(
    tmp_path: Path,
) -> None:
    _, remote = sample.create(tmp_path)
    config = write_config(tmp_path, remote)
    path = tmp_path / "pipeline.yaml"
    path.write_text("stages:\n  - name: analysis\n    agent: nobody\n")
    assert orch("pipeline", "check", str(path)).returncode == 0  # no settings: any agent goes
    done = orch("-c", str(config), "pipeline", "check", str(path))
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"{path}:3: stages[0].agent: stage analysis needs agent 'nobody', which is not configured"
    ]
    assert not (tmp_path / "orch.db").exists()


def test_pipeline_check_on_a_missing_file_is_an_error(tmp_path: Path) -> None:
    done = orch("pipeline", "check", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: cannot read {tmp_path / 'nope.yaml'}: No such file or directory"
    )
