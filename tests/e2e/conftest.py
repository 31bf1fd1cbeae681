"""Helpers for tests that run orch as a subprocess, the way a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from orch.demo import sample


def orch(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "orch.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def write_config(root: Path, remote: Path, **extra: object) -> Path:
    """A settings file for one repository, "sample", whose remote is `remote`."""
    config = {
        "data_dir": str(root / "data"),
        "store": {"url": f"sqlite:///{root / 'orch.db'}"},
        "repos": [
            {
                "name": "sample",
                "remote": str(remote),
                "key_prefix": "SAM",
                "test_command": sample.test_command(),
            }
        ],
        "worker": {"poll_interval_s": 0.2, "backoff_base_s": 0.1},
        **extra,
    }
    path = root / "orch.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def one_error(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command says: exit 2, one `error:` line, no traceback."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def commit_file(root: Path, rel: str, content: str) -> None:
    """Commit `content` at `rel` in the sample project and push it to its remote's main."""
    work = root / "sample"
    (work / rel).parent.mkdir(parents=True, exist_ok=True)
    (work / rel).write_text(content)
    sample.git("add", "--all", cwd=work)
    sample.git("commit", "--quiet", "-m", f"add {rel}", cwd=work)
    sample.git("push", "--quiet", "origin", "main", cwd=work)
