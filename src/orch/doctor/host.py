"""This machine: the confinement orch will put runs under, user namespaces, and the
directories orch writes to. Read from the kernel and the file system; nothing is created."""

from __future__ import annotations

import os
from pathlib import Path

from orch.adapters.sandbox.policy import LandlockSandbox
from orch.bootstrap import protected_paths
from orch.config import CodexAgentSettings, Settings
from orch.doctor.report import Check, fail, ok, warn


def check_sandbox(settings: Settings, abi: int | None = None) -> list[Check]:
    """What `orch serve` prints as its confinement, judged: Landlock missing fails when a
    repository relies on it, since its runs would refuse to start."""
    sandbox = LandlockSandbox(
        protected_paths(settings, Path(settings.logs)), settings.worker.output_cap_bytes, abi
    )
    confined = [r.name for r in settings.repos if r.sandbox == "landlock"]
    checks = []
    if sandbox.abi < 1 and confined:
        checks.append(
            fail(
                "sandbox",
                f"Landlock is not available in this kernel, and repositories"
                f" {', '.join(confined)} need it: their runs would refuse to start (run on a"
                " kernel with Landlock, or set `sandbox: none` for them)",
            )
        )
    elif sandbox.abi < 1:
        checks.append(warn("sandbox", sandbox.describe()))
    else:
        checks.append(ok("sandbox", sandbox.describe()))
    for repo in settings.repos:
        if repo.sandbox == "none":
            checks.append(warn(f"sandbox repo {repo.name}", "runs unconfined (sandbox: none)"))
    return checks


def user_namespaces(proc_sys: Path = Path("/proc/sys")) -> tuple[bool, str]:
    """Whether an unprivileged process may make a user namespace, and if not, what says no."""
    if os.geteuid() == 0:
        limit = _read_int(proc_sys / "user" / "max_user_namespaces")
        if limit == 0:
            return False, "user.max_user_namespaces is 0"
        return True, "available (running as root)"
    for rel, refuse in (
        ("user/max_user_namespaces", 0),
        ("kernel/unprivileged_userns_clone", 0),
        ("kernel/apparmor_restrict_unprivileged_userns", 1),
    ):
        if _read_int(proc_sys / rel) == refuse:
            return False, f"{rel.replace('/', '.')} is {refuse}"
    return True, "available"


def check_user_namespaces(settings: Settings, proc_sys: Path = Path("/proc/sys")) -> Check:
    """orch's own confinement is Landlock; a Codex agent outside it (a repository with
    `sandbox: none`) runs its own sandbox, bubblewrap, which needs user namespaces."""
    available, why = user_namespaces(proc_sys)
    if available:
        return ok("user namespaces", why)
    codex_agents = [
        n
        for n, a in settings.agents.items()
        if isinstance(a, CodexAgentSettings) and a.sandbox != "danger-full-access"
    ]
    unconfined = [r.name for r in settings.repos if r.sandbox == "none"]
    if codex_agents and unconfined:
        return warn(
            "user namespaces",
            f"unavailable ({why}): codex agent(s) {', '.join(codex_agents)} cannot start their"
            f" own sandbox in repositories {', '.join(unconfined)} (sandbox: none)",
        )
    return ok("user namespaces", f"unavailable ({why}); nothing configured needs them")


def check_directories(settings: Settings) -> Check:
    """The data, workspace and log directories: writable, or creatable when orch first needs
    them."""
    shown = []
    for label, path in (
        ("data", Path(settings.data_dir)),
        ("workspaces", Path(settings.workspace)),
        ("logs", Path(settings.logs)),
    ):
        problem = _unwritable(path)
        if problem:
            return fail("directories", f"{label} directory {path}: {problem}")
        shown.append(f"{label} {path}" + ("" if path.exists() else " (to be created)"))
    return ok("directories", "; ".join(shown))


def _unwritable(path: Path) -> str | None:
    if path.exists():
        if not path.is_dir():
            return "not a directory"
        return None if os.access(path, os.W_OK | os.X_OK) else "not writable"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not writable"
    return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
