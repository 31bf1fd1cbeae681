"""The world the real-agent tests share: a sample repository, a scripted model server and the
orch apps built on them, all closed when the test ends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from real_agents import World

from orch.demo import sample
from orch.testing import ModelServer


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    work, remote = sample.create(tmp_path)
    with ModelServer() as server:
        w = World(tmp_path, remote, work, server, [])
        yield w
        for app in w.apps:
            app.close()
