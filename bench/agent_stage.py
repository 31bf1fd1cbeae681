"""One stage driven by the real `claude` CLI: what orch adds around the agent.

The floor is the same CLI run bare: `claude -p` with the flags orch passes, against the scripted
model server, in a fresh git repository, timed from `Popen` to its exit. The figure is one
development stage run by orch on a SQLite store with a real bare remote: from the worker's claim
to the stage's transition, so it holds the worktree, the prompt, the agent's run with every
event read as it arrives, the commit and the push. Same script, same model server, run after
run in turn (ABBA).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from orch.bootstrap import build
from orch.config import IsolatedSettings
from orch.demo import sample
from orch.modelserver import ModelServer, Say, Script, Shell, Turn, Usage, Write

MODEL = "claude-sonnet-4-5"
TURNS = 3


def script(match: str) -> Script:
    return Script(
        match,
        (
            Turn((Write("notes.md", "# notes\n"),), Usage(1000, 200)),
            Turn((Shell("ls"),), Usage(1200, 100)),
            Turn((Say("done"),), Usage(1300, 50)),
        ),
    )


def binary() -> str | None:
    return os.environ.get("ORCH_CLAUDE_BIN") or shutil.which("claude")


@dataclass
class StageResult:
    bare_s: list[float] = field(default_factory=list)
    orch_s: list[float] = field(default_factory=list)
    events: int = 0  # stream-json lines orch read, over all its runs


def _bare(claude: str, server: ModelServer, root: Path) -> float:
    repo = root / f"bare-{uuid.uuid4().hex[:8]}"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        **server.claude_env(),
        "CLAUDE_CONFIG_DIR": str(root / "claude-home"),
    }
    argv = [
        claude, "-p", "--output-format", "stream-json", "--verbose",
        "--include-partial-messages", "--model", MODEL, "--permission-mode", "acceptEdits",
        "--max-turns", "10", "--allowedTools", "Bash Edit Read Write",
        "--session-id", str(uuid.uuid4()),
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(
        argv,
        input="Stage: development\nWrite the notes.",
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"bare claude exited {done.returncode}: {done.stderr[-300:]}")
    return elapsed


def run(rounds: int) -> StageResult | str:
    claude = binary()
    if claude is None:
        return "n/a: claude not found (set ORCH_CLAUDE_BIN, or run .ci/run to install it)"
    root = Path(tempfile.mkdtemp(prefix="orch-bench-agent-"))
    out = StageResult()
    try:
        with ModelServer([script("Stage: development")]) as server:
            work, remote = sample.create(root / "project")
            (work / ".orch").mkdir()
            (work / ".orch" / "pipeline.yaml").write_text(
                "replace: true\nmerge: false\nstages:\n  - name: development\n    gates: []\n",
                encoding="utf-8",
            )
            sample.git("add", "--all", cwd=work)
            sample.git("commit", "--quiet", "-m", "one stage", cwd=work)
            sample.git("push", "--quiet", "origin", "main", cwd=work)
            app = build(
                IsolatedSettings(
                    data_dir=root / ".orch",
                    store={"url": f"sqlite:///{root / 'orch.db'}"},
                    workspace_root=root / "workspaces",
                    logs_dir=root / "logs",
                    repos=[
                        {"name": "sample", "remote": str(remote), "key_prefix": "B"},
                    ],
                    agents={
                        "default": {
                            "kind": "claude_code",
                            "command": claude,
                            "model": MODEL,
                            "env": {
                                **server.claude_env(),
                                "CLAUDE_CONFIG_DIR": str(root / "claude-home"),
                            },
                        }
                    },
                    worker={"slots": 1},
                ),
                environ={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root)},
            )
            try:
                # the first run of each pays for cold caches (the CLI's files, git's objects)
                rounds_ = [("warm", ("bare", "orch"))] + [
                    (str(r), ("bare", "orch") if r % 2 == 0 else ("orch", "bare"))
                    for r in range(rounds)
                ]
                for r, kinds in rounds_:
                    for kind in kinds:
                        if kind == "bare":
                            elapsed = _bare(claude, server, root)
                            if r != "warm":
                                out.bare_s.append(elapsed)
                            continue
                        task = app.intake.file("sample", f"Bench {r}", "", actor="bench")
                        started = time.perf_counter()
                        app.dispatcher.run_until_idle()
                        if r != "warm":
                            out.orch_s.append(time.perf_counter() - started)
                        done = app.store.get_task(task.id)
                        if done.status.value != "done":
                            raise RuntimeError(
                                f"{done.key} ended {done.status}: {done.status_reason}"
                            )
                        for run_ in app.store.runs(task.id):
                            out.events += sum(
                                1
                                for line in Path(run_.log_path).read_text().splitlines()
                                if line.startswith("{")
                            )
            finally:
                app.close()
    except Exception as exc:  # a failed run is a row with the reason, not a crash of the bench
        return f"error: {type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out
