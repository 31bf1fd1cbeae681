"""What one check found, and a bounded way to run the programs checks ask."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from orch.services.settings_view import redact_urls

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    """One line of `orch doctor`: a warning is worth reading but does not fail the run."""

    check: str
    level: Level
    detail: str

    @property
    def ok(self) -> bool:
        return self.level != "fail"

    def line(self) -> str:
        label = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}[self.level]
        return f"{label} {self.check}: {self.detail}"

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "ok": self.ok, "detail": self.detail, "level": self.level}


# doctor's output is pasted into bug reports: a token in a remote's URL, or in what git said
# about it, never reaches a line
def ok(check: str, detail: str) -> Check:
    return Check(check, "ok", redact_urls(detail))


def warn(check: str, detail: str) -> Check:
    return Check(check, "warn", redact_urls(detail))


def fail(check: str, detail: str) -> Check:
    return Check(check, "fail", redact_urls(detail))


@dataclass(frozen=True)
class Ran:
    code: int | None  # None: it did not end within its time
    out: str
    err: str

    def last_error(self) -> str:
        """The line that says what went wrong: git's first `fatal:` or `error:` (what follows
        is advice), else the last line printed."""
        lines = [ln.strip() for ln in (self.err or self.out).strip().splitlines() if ln.strip()]
        for line in lines:
            if line.startswith(("fatal:", "error:")):
                return line
        return lines[-1] if lines else f"exited {self.code}"


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout_s: float,
    cwd: Path | None = None,
) -> Ran:
    """Run argv in a process group of its own, killed whole when it outlasts `timeout_s`: git
    hands a remote to ssh or a helper that would keep the pipes open after git itself died."""
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return Ran(None, "", f"no answer within {timeout_s:g}s")
    return Ran(proc.returncode, out, err)


def count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"
