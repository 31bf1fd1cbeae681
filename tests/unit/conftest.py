"""Fixtures the unit tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orch.testing import Rig


@pytest.fixture
def made() -> Iterator[list[Rig]]:
    """Rigs a test builds, closed when it ends."""
    rigs: list[Rig] = []
    yield rigs
    for r in rigs:
        r.close()
