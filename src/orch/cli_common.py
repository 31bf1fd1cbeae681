"""What every command of the command line shares: the settings file it was given, one way to
end on an error, and a console that does not cut what it prints into a pipe. A module of its
own, so `python -m orch.cli` (which runs the CLI as `__main__`) and the command groups kept in
other modules see the same state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from orch.config import Settings, load_settings
from orch.domain.errors import OrchError

T = TypeVar("T")

STATE: dict[str, Path | None] = {"config": None}  # set by the --config option

# wide enough that Rich never folds or cuts a table row written to a pipe or a file
_UNBOUNDED = 1_000_000
CUT = "…"


def fail(message: str, code: int = 2) -> None:
    """End the command with one `error:` line and `code`."""
    Console(stderr=True).print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def guard(fn: Callable[[], T]) -> T:
    """Run fn; orch's own errors, and a database's that reached this far (a file that is not a
    database, say), end the command as `fail` does."""
    try:
        return fn()
    except OrchError as exc:
        fail(str(exc))
        raise  # unreachable: fail raises
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        fail(f"the store failed: {one_line(str(orig)) or type(orig).__name__}")
        raise


def settings() -> Settings:
    return guard(lambda: load_settings(STATE["config"]))


def console(stderr: bool = False) -> Console:
    """A console for the command's output: as wide as the terminal, or, written to a pipe or a
    file, unbounded, so no line is folded or cut at 80 columns."""
    shown = Console(stderr=stderr)
    if shown.is_terminal:
        return shown
    return Console(stderr=stderr, width=_UNBOUNDED, soft_wrap=True)


def one_line(text: str | None) -> str:
    """The first line of text, ending in … when more was cut: a reason as a list shows it."""
    if not text:
        return ""
    lines = text.strip().splitlines()
    if not lines:
        return ""
    first = lines[0].rstrip()
    return first + CUT if len(lines) > 1 else first
