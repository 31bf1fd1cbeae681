"""Shared by the tests that run the real `claude` and `codex` CLIs: where they are."""

from __future__ import annotations

import os
import shutil

import pytest


def binary(env_name: str, name: str) -> str:
    """The CLI from `env_name`, else from PATH; a missing one fails the test, never skips it."""
    found = os.environ.get(env_name) or shutil.which(name)
    if not found:
        pytest.fail(
            f"the `{name}` binary is missing: run .ci/run (it installs the agents) or set "
            f"{env_name} to its path",
            pytrace=False,
        )
    return found
