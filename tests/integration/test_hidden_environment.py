"""orch's own environment (its credentials) is not readable by the agents it starts."""

from __future__ import annotations

import os
import pwd
import subprocess
import textwrap
from pathlib import Path

import pytest

import orch.adapters.proctable as proctable

NOBODY = pwd.getpwnam("nobody")

# run as one unprivileged user: a parent holding a secret starts a child, which tries to read
# the parent's environment the way an agent's shell command would
PROBE = textwrap.dedent(
    """
    import subprocess, sys
    hide = sys.argv[1] == "hide"
    if hide:
        assert hide_environment()
    child = subprocess.run(
        [sys.executable, "-c",
         "import os\\ntry:\\n print(open(f'/proc/{os.getppid()}/environ').read())\\n"
         "except PermissionError:\\n print('refused')"],
        capture_output=True, text=True, check=True,
    )
    print(child.stdout.strip())
    """
)


def probe(mode: str) -> str:
    # the module is plain standard library: run its source as the unprivileged user's program
    source = Path(proctable.__file__).read_text(encoding="utf-8") + PROBE
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", source, mode],
        env={"PATH": "/usr/bin:/bin", "ORCH_SECRET": "forge-token-123"},
        user=NOBODY.pw_uid,
        group=NOBODY.pw_gid,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start the probe as another user")
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs the system python")
def test_a_child_of_the_same_user_cannot_read_orchs_environment() -> None:
    assert "forge-token-123" in probe("show"), "the probe must be able to see a plain parent"
    assert probe("hide") == "refused"
