"""Agents that try to get around orch: each runs as a real process under the launcher and
Landlock, and each test proves what it tried did not happen."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest

from orch.domain.states import TaskStatus

from .world import SECRET, Project, alive, read_pid


def _q(path: Path) -> str:
    return shlex.quote(str(path))


@pytest.mark.parametrize(
    "attack",
    [
        "git push -f origin HEAD:main",
        'git push -f "$(git config remote.origin.url)" HEAD:main',
        # from a clone of its own, with a commit of its own
        "cd $HOME/clone && git push -f {remote} HEAD:main",
        "cd $HOME/clone && git push {remote} HEAD:refs/heads/evil",
        "cd $HOME/clone && git push {remote} --delete keep",
        "cd $HOME/clone && git --git-dir={remote} update-ref refs/heads/main HEAD",
        "echo 0000000000000000000000000000000000000000 > {remote}/refs/heads/main",
        "rm -rf {remote}/refs/heads/keep {remote}/objects",
    ],
    ids=[
        "push-origin",
        "push-configured-url",
        "push-remote-path",
        "create-branch",
        "delete-branch",
        "update-ref",
        "write-ref-file",
        "remove-objects",
    ],
)
def test_an_agent_cannot_move_create_or_delete_anything_on_the_remote(
    project: Project, attack: str
) -> None:
    before = project.refs()
    script = (
        "echo 'def hello(): return 1' > hello.py;"
        f" git clone -q {_q(project.remote)} $HOME/clone && echo evil > $HOME/clone/evil"
        " && git -C $HOME/clone add -A"
        " && git -C $HOME/clone -c user.name=a -c user.email=a@b commit -qm evil;"
        + attack.format(remote=_q(project.remote))
        + " > $HOME/attack.log 2>&1; echo exit=$? >> $HOME/attack.log; true"
    )
    task = project.run(script)
    after = project.refs()
    assert task.status == TaskStatus.DONE, task.status_reason
    # the only change on the remote is the task branch orch itself pushed
    assert {k: v for k, v in after.items() if k != f"refs/heads/{task.branch}"} == before
    home = project.root / "data" / "homes" / f"{task.key}-{task.id}"
    assert "exit=0" not in (home / "attack.log").read_text()


def test_no_remote_url_is_anywhere_the_agent_can_read(project: Project) -> None:
    script = (
        "git config --list --show-origin > $HOME/config.txt 2>&1;"
        ' cat "$(sed -n "s/^gitdir: //p" .git)/../../config" >> $HOME/config.txt 2>&1;'
        " git remote -v >> $HOME/config.txt 2>&1; true"
    )
    task = project.run(script)
    assert task.status == TaskStatus.DONE, task.status_reason
    seen = (project.root / "data" / "homes" / f"{task.key}-{task.id}" / "config.txt").read_text()
    assert str(project.remote) not in seen
    assert "remote.origin" not in seen


def test_a_test_that_pushes_when_the_gate_runs_it_reaches_nothing(project: Project) -> None:
    before = project.refs()
    remote = str(project.remote)
    evil_test = (
        "import subprocess, unittest\n"
        f"R = {remote!r}\n"
        "subprocess.run(['git', 'push', '-f', R, 'HEAD:main'])\n"
        "subprocess.run(['git', 'push', R, 'HEAD:refs/heads/from-a-test'])\n"
        "class T(unittest.TestCase):\n"
        "    def test_ok(self):\n"
        "        pass\n"
    )
    script = f"cat > tests/test_push.py <<'PY'\n{evil_test}PY\n"
    task = project.run(script)
    assert task.status == TaskStatus.DONE, task.status_reason
    after = project.refs()
    assert {k: v for k, v in after.items() if k != f"refs/heads/{task.branch}"} == before
    [gate_log] = (project.root / "data" / "logs").glob("EVIL-1-*/v*-development-gate-tests.log")
    # the test ran, and its pushes were refused: the remote cannot be written from the gate
    assert "remote unpack failed" in gate_log.read_text()


def test_hooks_and_git_config_an_agent_writes_never_run_as_orch(project: Project) -> None:
    marker = project.root / "hook-ran"
    evil = f"touch {_q(marker)}"
    script = (
        # the worktree's record in orch's mirror: hooks and config there
        'admin="$(sed -n "s/^gitdir: //p" .git)";'
        f' mkdir -p "$admin/hooks"; printf "#!/bin/sh\\n{evil}\\n" > "$admin/hooks/pre-commit";'
        f' printf "[core]\\n\\tfsmonitor = {evil}\\n" >> "$admin/../../config";'
        # a .git of its own in the worktree, with hooks, config and a filter
        " rm -f .git; mkdir -p .git/hooks;"
        f' printf "#!/bin/sh\\n{evil}\\n" > .git/hooks/pre-commit; chmod +x .git/hooks/pre-commit;'
        f' printf "[core]\\n\\tfsmonitor = {evil}\\n\\thooksPath = .git/hooks\\n'
        f'[filter \\"x\\"]\\n\\tclean = {evil}\\n" > .git/config;'
        " echo '* filter=x' > .gitattributes; echo change > changed.txt; true"
    )
    task = project.run(script)
    assert task.status == TaskStatus.DONE, task.status_reason
    assert not marker.exists()
    mirror = next((project.root / "workspaces").glob("sample/.mirror.git"))
    assert "fsmonitor" not in (mirror / "config").read_text()
    assert not list(mirror.glob("worktrees/*/hooks/pre-commit"))


def test_a_daemon_the_agent_starts_dies_when_its_stage_ends(project: Project) -> None:
    # a new session, a cleared environment, its parent gone: only the subreaper still sees it
    script = (
        'setsid env -i /bin/sh -c \'echo $$ > "$0/daemon.pid"; exec sleep 300\' "$HOME" &'
        " sleep 0.5; true"
    )
    task = project.run(script)
    assert task.status == TaskStatus.DONE, task.status_reason
    pid = read_pid(project.root / "data" / "homes" / f"{task.key}-{task.id}" / "daemon.pid")
    assert not alive(pid)


def test_a_daemon_the_agent_starts_dies_when_the_task_is_stopped(project: Project) -> None:
    app = project.app(
        'setsid env -i /bin/sh -c \'echo $$ > "$0/daemon.pid"; exec sleep 300\' "$HOME" &'
        " exec sleep 300"
    )
    task = app.intake.file("sample", "Start a daemon", "", actor="test")
    pid_file = project.root / "data" / "homes" / f"{task.key}-{task.id}" / "daemon.pid"
    app.dispatcher.start()
    try:
        for _ in range(200):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            time.sleep(0.05)
        pid = read_pid(pid_file)
        assert alive(pid)
        app.intake.stop(task.key, actor="test", reason="enough")
        for _ in range(200):
            if app.store.get_task(task.id).status == TaskStatus.CANCELLED:
                break
            time.sleep(0.05)
    finally:
        app.dispatcher.stop()
    assert app.store.get_task(task.id).status == TaskStatus.CANCELLED
    assert not alive(pid)


def test_a_flood_of_output_is_capped_and_its_tail_kept(project: Project) -> None:
    cap = 8 * 1024 * 1024
    script = "head -c 1073741824 /dev/zero | tr '\\0' 'x'; echo; echo THE-END"
    task = project.run(script, output_cap_bytes=cap)
    assert task.status == TaskStatus.DONE, task.status_reason
    app = project.apps[-1]
    [run] = app.store.runs(task.id)
    log = Path(run.log_path)
    assert log.stat().st_size <= cap
    assert log.read_bytes().rstrip().endswith(b"THE-END")
    assert "bytes dropped, the tail kept" in run.detail
    # the store took every write after the flood
    assert app.store.transitions(task.id)[-1].to_status == TaskStatus.DONE


def test_an_agent_cannot_read_orchs_environment_settings_or_store(project: Project) -> None:
    import os

    script = (
        f"cat /proc/{os.getpid()}/environ > $HOME/environ.txt 2>&1;"
        f" cat {_q(project.config)} > $HOME/settings.txt 2>&1;"
        f" cat {_q(project.store)} > $HOME/store.txt 2>&1;"
        f" ls {_q(project.root / 'data' / 'logs')} > $HOME/logs.txt 2>&1; true"
    )
    task = project.run(script)
    assert task.status == TaskStatus.DONE, task.status_reason
    home = project.root / "data" / "homes" / f"{task.key}-{task.id}"
    environ = (home / "environ.txt").read_text(errors="replace")
    assert "PATH=" not in environ and "denied" in environ
    assert SECRET not in (home / "settings.txt").read_text(errors="replace")
    assert "SQLite format" not in (home / "store.txt").read_text(errors="replace")
    assert "denied" in (home / "logs.txt").read_text()
