"""The hostile suite's project: see world.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orch.adapters.sandbox.launcher import landlock_abi
from orch.demo import sample

from .world import ONE_STAGE, Project


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    if landlock_abi() < 1:
        pytest.fail("these tests need Landlock (Linux 5.13 or newer, with landlock in its LSMs)")
    work, remote = sample.create(tmp_path)
    sample.git("push", "--quiet", "origin", "main:refs/heads/keep", cwd=work)
    p = Project(tmp_path, work, remote)
    p.use_pipeline(ONE_STAGE)
    yield p
    for app in p.apps:
        app.close()
