"""What every command of the command line shares: the settings file it was given, and one way
to end on an error. A module of its own, so `python -m orch.cli` (which runs the CLI as
`__main__`) and the command groups kept in other modules see the same state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console

from orch.config import Settings, load_settings
from orch.domain.errors import OrchError

T = TypeVar("T")

STATE: dict[str, Path | None] = {"config": None}  # set by the --config option


def fail(message: str, code: int = 2) -> None:
    """End the command with one `error:` line and `code`."""
    Console(stderr=True).print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def guard(fn: Callable[[], T]) -> T:
    """Run fn; orch's own errors end the command as `fail` does."""
    try:
        return fn()
    except OrchError as exc:
        fail(str(exc))
        raise  # unreachable: fail raises


def settings() -> Settings:
    return guard(lambda: load_settings(STATE["config"]))
