"""orch doctor's checks as plain functions: each judges one part of a setup and changes none."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory

from orch.adapters.store.revisions import alembic_config
from orch.adapters.store.sql import SqlStore
from orch.config import Settings
from orch.doctor import host, services
from orch.doctor.agents import check_agent
from orch.doctor.pipelines import problems
from orch.doctor.report import fail, ok, warn
from orch.doctor.store import check_store


def settings(tmp_path: Path, **fields: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", **fields)


def fake_program(bin_dir: Path, name: str, script: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def tables(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]


# -- the store ----------------------------------------------------------------------------------


def test_a_missing_sqlite_store_fails_and_is_not_created(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "orch.db"
    check = check_store(f"sqlite:///{db}", 5)
    assert check == fail("store", f"no database at {db}: run `orch migrate`")
    assert not db.parent.exists()


def test_a_migrated_store_is_ok_at_the_latest_revision(tmp_path: Path) -> None:
    db = tmp_path / "orch.db"
    store = SqlStore(f"sqlite:///{db}")
    store.migrate()
    store.close()
    check = check_store(f"sqlite:///{db}", 5)
    [head] = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert check.ok and f"revision {head}, the latest" in check.detail
    assert not db.with_name("orch.db-shm").exists()


def test_an_empty_database_needs_migrating_and_gets_no_tables(tmp_path: Path) -> None:
    db = tmp_path / "orch.db"
    sqlite3.connect(db).close()
    check = check_store(f"sqlite:///{db}", 5)
    assert not check.ok and check.detail.endswith("has no orch schema: run `orch migrate`")
    assert tables(db) == []


def test_a_store_behind_the_latest_migration_needs_orch_migrate(tmp_path: Path) -> None:
    db = tmp_path / "orch.db"
    store = SqlStore(f"sqlite:///{db}")
    store.migrate()
    store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0001'")
    check = check_store(f"sqlite:///{db}", 5)
    assert not check.ok
    assert "at revision 0001, behind" in check.detail and "run `orch migrate`" in check.detail


def test_a_store_from_a_newer_orch_is_named_as_such(tmp_path: Path) -> None:
    db = tmp_path / "orch.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES ('9999')")
    check = check_store(f"sqlite:///{db}", 5)
    assert not check.ok and "which this orch does not know" in check.detail


def test_a_corrupt_sqlite_file_fails_with_one_line(tmp_path: Path) -> None:
    db = tmp_path / "orch.db"
    db.write_bytes(b"not a database" * 512)
    check = check_store(f"sqlite:///{db}", 5)
    assert not check.ok and "file is not a database" in check.detail
    assert "\n" not in check.detail


def test_an_unreachable_postgresql_store_fails_and_hides_its_password(tmp_path: Path) -> None:
    check = check_store("postgresql://orch:secret@127.0.0.1:1/orch", 2)
    assert not check.ok and "cannot be read" in check.detail
    assert "secret" not in check.detail


def test_an_unsupported_store_url_fails(tmp_path: Path) -> None:
    assert check_store("mysql://x/y", 2) == fail("store", "unsupported store URL scheme: mysql")


# -- the sandbox and the host -------------------------------------------------------------------


def repo(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "remote": "/nowhere.git", **fields}


def test_without_landlock_a_repository_that_needs_it_fails(tmp_path: Path) -> None:
    s = settings(tmp_path, repos=[repo("app"), repo("loose", sandbox="none")])
    [sandbox, loose] = host.check_sandbox(s, abi=0)
    assert not sandbox.ok and "repositories app need it" in sandbox.detail
    assert loose == warn("sandbox repo loose", "runs unconfined (sandbox: none)")


def test_without_landlock_and_no_repository_needing_it_the_sandbox_only_warns(
    tmp_path: Path,
) -> None:
    [check] = host.check_sandbox(settings(tmp_path), abi=0)
    assert check.level == "warn" and "Landlock unavailable" in check.detail


def test_with_landlock_the_sandbox_says_what_runs_may_write(tmp_path: Path) -> None:
    [check] = host.check_sandbox(settings(tmp_path, repos=[repo("app")]), abi=3)
    assert check.ok and check.detail.startswith("Landlock ABI 3: runs write only in")


def test_user_namespaces_switched_off_warn_only_where_codex_needs_its_own_sandbox(
    tmp_path: Path,
) -> None:
    proc = tmp_path / "proc"
    (proc / "user").mkdir(parents=True)
    (proc / "user" / "max_user_namespaces").write_text("0\n")
    assert host.user_namespaces(proc) == (False, "user.max_user_namespaces is 0")
    plain = host.check_user_namespaces(settings(tmp_path, repos=[repo("app")]), proc)
    assert plain.level == "ok" and "nothing configured needs them" in plain.detail
    needing = settings(
        tmp_path,
        repos=[repo("loose", sandbox="none")],
        agents={"coder": {"kind": "codex"}},
    )
    check = host.check_user_namespaces(needing, proc)
    assert check.level == "warn" and "coder" in check.detail and "loose" in check.detail


def test_directories_to_be_created_are_reported_and_not_made(tmp_path: Path) -> None:
    check = host.check_directories(settings(tmp_path))
    assert check.ok and "(to be created)" in check.detail
    assert not (tmp_path / "data").exists()


def test_a_data_directory_that_is_a_file_fails(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    check = host.check_directories(settings(tmp_path))
    assert check == fail("directories", f"data directory {tmp_path / 'data'}: not a directory")


def test_a_git_too_old_for_the_local_forge_fails(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_program(bin_dir, "git", 'echo "git version 2.30.1"')
    [check] = services.forge(settings(tmp_path), {"PATH": str(bin_dir)}, 5)
    assert check == fail("forge", "local git: git 2.30.1 is older than 2.38, which merges need")
    fake_program(bin_dir, "git", 'echo "git version 2.45.0"')
    [check] = services.forge(settings(tmp_path), {"PATH": str(bin_dir)}, 5)
    assert check.ok and "git 2.45.0" in check.detail


def test_every_service_is_checked_in_order(tmp_path: Path) -> None:
    names = [
        c.check
        for fn in services.SERVICES
        for c in fn(settings(tmp_path), {"PATH": "/usr/bin:/bin"}, 5)
    ]
    assert names == ["tracker", "forge", "notifier"]


# -- agents -------------------------------------------------------------------------------------


def test_a_claude_agent_without_credentials_fails_naming_the_variables(tmp_path: Path) -> None:
    claude = fake_program(tmp_path / "bin", "claude", 'echo "2.1.328 (Claude Code)"')
    s = settings(tmp_path, agents={"cc": {"kind": "claude_code", "command": str(claude)}})
    check, agent = check_agent(s, "cc", {"PATH": "/usr/bin:/bin"})
    assert agent is not None and not check.ok
    assert "2.1.328 (Claude Code)" in check.detail
    assert "ANTHROPIC_API_KEY" in check.detail and "ANTHROPIC_AUTH_TOKEN" in check.detail


def test_a_claude_agent_with_its_key_and_version_is_ok(tmp_path: Path) -> None:
    claude = fake_program(tmp_path / "bin", "claude", 'echo "2.1.328 (Claude Code)"')
    s = settings(tmp_path, agents={"cc": {"kind": "claude_code", "command": str(claude)}})
    check, _ = check_agent(s, "cc", {"PATH": "/usr/bin:/bin", "ANTHROPIC_API_KEY": "sk-test"})
    assert check == ok(
        "agent cc",
        f"claude_code: {claude} (2.1.328 (Claude Code)); credentials in ANTHROPIC_API_KEY,"
        " held by orch's metering proxy",
    )


def test_behind_the_proxy_a_claude_login_without_a_key_fails_and_says_how_to_go_on(
    tmp_path: Path,
) -> None:
    claude = fake_program(tmp_path / "bin", "claude", 'echo "2.1.328 (Claude Code)"')
    environ = {"PATH": "/usr/bin:/bin", "CLAUDE_CONFIG_DIR": str(tmp_path / "login")}
    s = settings(tmp_path, agents={"cc": {"kind": "claude_code", "command": str(claude)}})
    check, _ = check_agent(s, "cc", environ)
    assert not check.ok and "no key for orch's metering proxy" in check.detail
    assert "`proxy: off`" in check.detail
    own = settings(
        tmp_path, agents={"cc": {"kind": "claude_code", "command": str(claude), "proxy": False}}
    )
    check, _ = check_agent(own, "cc", environ)
    assert check.ok and check.detail.endswith("credentials: the login in CLAUDE_CONFIG_DIR")


def test_an_agent_whose_model_has_no_price_is_a_warning(tmp_path: Path) -> None:
    codex = fake_program(tmp_path / "bin", "codex", 'echo "codex-cli 0.169.0"')
    environ = {"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "k"}
    unknown = {"kind": "codex", "command": str(codex), "model": "gpt-of-tomorrow"}
    check, _ = check_agent(settings(tmp_path, agents={"cx": unknown}), "cx", environ)
    assert check.level == "warn"
    assert "model gpt-of-tomorrow has no price" in check.detail and "`prices`" in check.detail
    priced = {**unknown, "prices": {"input": 1, "output": 2}}
    check, _ = check_agent(settings(tmp_path, agents={"cx": priced}), "cx", environ)
    assert check.level == "ok"
    listed = {**unknown, "model": "gpt-5.5"}
    check, _ = check_agent(settings(tmp_path, agents={"cx": listed}), "cx", environ)
    assert check.level == "ok", check.detail


def test_the_claude_binary_is_found_through_orch_claude_bin(tmp_path: Path) -> None:
    claude = fake_program(tmp_path / "bin", "claude-2", 'echo "2.1.328"')
    s = settings(tmp_path, agents={"cc": {"kind": "claude_code"}})
    environ = {"PATH": "/usr/bin:/bin", "ORCH_CLAUDE_BIN": str(claude), "ANTHROPIC_AUTH_TOKEN": "t"}
    check, _ = check_agent(s, "cc", environ)
    assert check.ok and str(claude) in check.detail


def test_a_missing_agent_binary_fails_with_how_to_point_at_it(tmp_path: Path) -> None:
    s = settings(tmp_path, agents={"cx": {"kind": "codex", "command": str(tmp_path / "codex")}})
    check, _ = check_agent(s, "cx", {"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "k"})
    assert check == fail(
        "agent cx",
        f"codex: {tmp_path / 'codex'} not found on PATH (install it, or set ORCH_CODEX_BIN)",
    )


def test_an_agent_whose_version_fails_is_reported_with_its_error(tmp_path: Path) -> None:
    codex = fake_program(tmp_path / "bin", "codex", 'echo "error: broken install" >&2; exit 3')
    s = settings(tmp_path, agents={"cx": {"kind": "codex", "command": str(codex)}})
    check, _ = check_agent(s, "cx", {"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "k"})
    assert not check.ok and check.detail.endswith("--version` failed: error: broken install")


def test_a_codex_provider_needs_the_key_variable_it_names(tmp_path: Path) -> None:
    codex = fake_program(tmp_path / "bin", "codex", 'echo "codex-cli 0.169.0"')
    provider = {"name": "lab", "base_url": "http://127.0.0.1:9/v1", "env_key": "LAB_KEY"}
    s = settings(
        tmp_path, agents={"cx": {"kind": "codex", "command": str(codex), "provider": provider}}
    )
    missing, _ = check_agent(s, "cx", {"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "k"})
    assert not missing.ok and "reads its key from LAB_KEY, which is not set" in missing.detail
    given = settings(
        tmp_path,
        agents={
            "cx": {
                "kind": "codex",
                "command": str(codex),
                "provider": provider,
                "env": {"LAB_KEY": "k"},
            }
        },
    )
    check, _ = check_agent(given, "cx", {"PATH": "/usr/bin:/bin"})
    assert check.ok and "codex-cli 0.169.0" in check.detail and "LAB_KEY" in check.detail


def test_a_command_agent_must_name_a_program_that_exists(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        agents={
            "gone": {"kind": "command", "command": "no-such-program --flag"},
            "sh": {"kind": "command", "command": ["sh", "-c", "true"]},
        },
    )
    gone, _ = check_agent(s, "gone", {"PATH": "/usr/bin:/bin"})
    assert gone == fail("agent gone", "command: no-such-program is not on PATH or not executable")
    sh, _ = check_agent(s, "sh", {"PATH": "/usr/bin:/bin"})
    assert sh.ok and sh.detail in ("command: /usr/bin/sh", "command: /bin/sh")


def test_a_scripted_agent_is_ok_unless_its_playbook_is_missing(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        agents={
            "default": {"kind": "scripted"},
            "lost": {"kind": "scripted", "playbook": str(tmp_path / "missing.json")},
        },
    )
    assert check_agent(s, "default", {})[0] == ok("agent default", "scripted (built in)")
    lost, _ = check_agent(s, "lost", {})
    assert not lost.ok and "missing.json is not a readable file" in lost.detail


# -- pipeline files -----------------------------------------------------------------------------


def test_every_schema_problem_of_a_pipeline_file_is_listed_with_its_line() -> None:
    text = (
        "stages:\n"
        "  - name: analysis\n"
        "  - name: reveiw\n"
        "  - name: development\n"
        "    timeout_s: -1\n"
        "max_attempts: 0\n"
    )
    pipeline, found = problems(text, "p.yaml")
    assert pipeline is None
    assert [line.split(": ")[0:2] for line in found] == [
        ["p.yaml:3", "stages[1].name"],
        ["p.yaml:5", "stages[2].timeout_s"],
        ["p.yaml:6", "max_attempts"],
    ]


def test_a_pipeline_naming_an_agent_that_is_not_configured_is_refused() -> None:
    text = "stages:\n  - name: analysis\n    agent: nobody\n"
    assert problems(text, "p.yaml")[1] == []  # no settings: any agent name goes
    _, found = problems(text, "p.yaml", ["default"])
    assert found == [
        "p.yaml:3: stages[0].agent: stage analysis needs agent 'nobody', which is not configured"
    ]


def test_a_budget_in_a_unit_the_agent_does_not_report_is_refused(tmp_path: Path) -> None:
    s = settings(tmp_path)
    _, agent = check_agent(s, "default", {})
    assert agent is not None
    text = "replace: true\nmerge: false\nstages:\n  - name: analysis\n    budget: {usd: 1}\n"
    pipeline, found = problems(text, "p.yaml", ["default"], {"default": agent})
    assert pipeline is None and found == [
        "p.yaml: the stage analysis budget is in usd, which agent 'default' of stage analysis"
        " does not report"
    ]


# -- reporting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://ann:tok@git.example/app.git", "https://ann:<redacted>@git.example/app.git"),
        ("https://ghp_tok@github.com/o/r.git", "https://<redacted>@github.com/o/r.git"),
        ("https://git.example/app.git", "https://git.example/app.git"),
        ("/srv/git/app.git", "/srv/git/app.git"),
        ("git@git.example:app.git", "git@git.example:app.git"),
    ],
)
def test_a_remote_is_printed_without_its_password_or_token(url: str, shown: str) -> None:
    for check in (ok, warn, fail):
        assert check("repo app remote", f"{url} cannot be reached").detail == (
            f"{shown} cannot be reached"
        )


def test_each_level_prints_as_one_aligned_line() -> None:
    assert ok("store", "fine").line() == "ok   store: fine"
    assert warn("sandbox", "hm").line() == "warn sandbox: hm"
    assert fail("agent x", "gone").line() == "FAIL agent x: gone"
    assert fail("agent x", "gone").as_dict() == {
        "check": "agent x",
        "ok": False,
        "detail": "gone",
        "level": "fail",
    }


def test_an_agent_cli_asked_its_version_sees_no_credential_of_orch(tmp_path: Path) -> None:
    claude = fake_program(tmp_path / "bin", "claude", 'echo "2.1.328 gitea=[$GITEA_TOKEN]"')
    s = settings(tmp_path, agents={"cc": {"kind": "claude_code", "command": str(claude)}})
    environ = {"PATH": "/usr/bin:/bin", "ANTHROPIC_API_KEY": "k", "GITEA_TOKEN": "gitea-secret"}
    check, _ = check_agent(s, "cc", environ)
    assert check.ok and "2.1.328 gitea=[]" in check.detail
