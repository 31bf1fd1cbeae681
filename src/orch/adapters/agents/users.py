"""Running an agent as another (non-root) user: Claude Code refuses to bypass permissions as
root, and an agent that cannot write outside its worktree is safer whatever it is told.

orch must itself run as root to switch users. Before each run the worktree is handed to the
agent's user: everything in it becomes theirs except its top directory and its `.git` file,
which stay orch's so that orch's own git still trusts the worktree; the top directory is opened
to the agent's group so the agent can add files there. The agent's git is told to trust the
worktree too. The agent's CLI and whatever it runs must be readable and executable by that user.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orch.domain.errors import ConfigError


@dataclass(frozen=True)
class AgentUser:
    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def resolve(cls, agent: str, name: str, euid: Callable[[], int] = os.geteuid) -> AgentUser:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(
                f"agent {agent!r}: run_as names no user on this host: {name}"
            ) from None
        if entry.pw_uid == 0:
            raise ConfigError(f"agent {agent!r}: run_as must name a user other than root")
        if euid() not in (0, entry.pw_uid):
            raise ConfigError(
                f"agent {agent!r}: run_as {name} needs orch to run as root (it runs as uid"
                f" {euid()})"
            )
        return cls(name, entry.pw_uid, entry.pw_gid, entry.pw_dir)

    def env(self, home: str | None = None) -> dict[str, str]:
        """What the agent's environment says about who it is (with `home`, the one orch gave
        it, else the user's own); its git trusts the worktree, which it does not own."""
        return {
            "HOME": home or self.home,
            "USER": self.name,
            "LOGNAME": self.name,
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "safe.directory",
            "GIT_CONFIG_VALUE_0": "*",
        }

    def grant(self, worktree: Path) -> None:
        """Hand the worktree's contents to this user, keeping its top and `.git` orch's.

        The walk goes by directory descriptors and never follows a link, so a link planted by
        an earlier run cannot steer it outside the worktree; a file with other hard links is
        left alone for the same reason. The top directory is sticky: the agent may add and
        remove its own entries there, but not orch's `.git`.
        """
        if os.geteuid() != 0:
            return
        top = worktree.resolve()
        os.chown(top, -1, self.gid)
        os.chmod(top, stat.S_IMODE(top.stat().st_mode) | stat.S_IRWXG | stat.S_ISVTX)
        for dirpath, dirnames, filenames, dirfd in os.fwalk(top, follow_symlinks=False):
            if Path(dirpath) == top:
                dirnames[:] = [d for d in dirnames if d != ".git"]
                filenames = [f for f in filenames if f != ".git"]
            for entry in (*dirnames, *filenames):
                info = os.stat(entry, dir_fd=dirfd, follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                    continue
                os.chown(entry, self.uid, self.gid, dir_fd=dirfd, follow_symlinks=False)
