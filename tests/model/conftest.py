"""Fixtures the model tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import World, build_world


@pytest.fixture
def world() -> Iterator[World]:
    w = build_world()
    try:
        yield w
    finally:
        w.close()
