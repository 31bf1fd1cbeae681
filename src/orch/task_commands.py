"""`orch task add|list|show|watch|approve|reject|stop|retry|start`.

With ORCH_TOKEN set, the commands go to a running `orch serve` over its API (at ORCH_URL, or
where the settings say it listens), as the token's holder; otherwise to the store itself
(orch.task_local). `--json` prints what the API answers, the same either way."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Protocol, TypeVar

import typer
from rich.live import Live

from orch import cli_common
from orch.api_client import TOKEN_VAR, URL_VAR, ApiError, ApiTasks, Unreachable, api_url
from orch.domain.errors import StoreUnavailable
from orch.domain.states import TaskStatus
from orch.task_render import WATCHED_TO_THE_END, Follower, budget_view, print_detail, print_list

T = TypeVar("T")

task_app = typer.Typer(no_args_is_help=True, help="File, list, follow and decide on tasks.")

KEY = typer.Argument(..., help="The ticket key, e.g. APP-1 (any case).")
JSON = typer.Option(False, "--json", help="Print the API's JSON answer instead.")
INTERRUPTED = 130  # the exit status of a command ended by Ctrl-C (128 + SIGINT)
WATCH_PATIENCE_S = 60.0  # how long a watch keeps looking at a store or server that fails


class Tasks(Protocol):
    """What the task commands ask of the store or of the API; answers in the API's shapes."""

    def add(self, repo: str, title: str, body: str) -> dict[str, Any]: ...
    def tasks(self, limit: int, status: str | None) -> dict[str, Any]: ...
    def task(self, key: str) -> dict[str, Any]: ...
    def decide(self, key: str, approve: bool, comment: str) -> dict[str, Any]: ...
    def stop(self, key: str, reason: str) -> dict[str, Any]: ...
    def retry(
        self, key: str, from_stage: str | None, usd: float | None, tokens: int | None
    ) -> dict[str, Any]: ...
    def start(self, key: str) -> dict[str, Any]: ...
    def close(self) -> None: ...


@contextmanager
def _tasks() -> Iterator[Tasks]:
    tasks: Tasks
    token = os.environ.get(TOKEN_VAR, "").strip()
    if token:
        if os.environ.get(URL_VAR, "").strip():
            url = api_url(os.environ, "", 0)  # settings not needed: none may exist here
        else:
            api = cli_common.settings().api
            url = api_url(os.environ, api.host, api.port)
        tasks = ApiTasks(url, token)
    else:
        from orch.task_local import LocalTasks

        tasks = LocalTasks(cli_common.settings())
    try:
        yield tasks
    finally:
        tasks.close()


def _run(fn: Callable[[Tasks], T]) -> T:
    def go() -> T:
        with _tasks() as tasks:
            return fn(tasks)

    return cli_common.guard(go)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


@task_app.command("add")
def task_add(
    repo: str = typer.Argument(..., help="A configured repository."),
    title: str = typer.Argument(..., help="The ticket's title."),
    body: str = typer.Option("", help="The ticket's description."),
    as_json: bool = JSON,
) -> None:
    """File a ticket on the built-in board; its task starts at once."""
    task = _run(lambda t: t.add(repo, title, body))
    if as_json:
        _print_json(task)
    else:
        print(f"{task['key']} filed: {task['stage']} ({task['status']})")


@task_app.command("list")
def task_list(
    limit: int = typer.Option(50, min=1, max=1000),
    status: str = typer.Option(
        "", help="Only tasks in this status: active, waiting, needs_operator, done, cancelled."
    ),
    as_json: bool = JSON,
) -> None:
    """The most recent tasks; a parked task (needs_operator) shows why it was parked."""
    if status and status not in {s.value for s in TaskStatus}:
        cli_common.fail(
            f"unknown status {status!r} (one of {', '.join(s.value for s in TaskStatus)})"
        )
    listed = _run(lambda t: t.tasks(limit, status or None))
    if as_json:
        _print_json(listed)
    else:
        print_list(listed["tasks"], cli_common.console())


@task_app.command("show")
def task_show(key: str = KEY, as_json: bool = JSON) -> None:
    """One task: stages with timings, gate verdicts, effects, runs and history."""
    detail = _run(lambda t: t.task(key))
    if as_json:
        _print_json(detail)
    else:
        print_detail(detail, cli_common.console())


@task_app.command("watch")
def task_watch(
    key: str = KEY,
    interval: float = typer.Option(1.0, min=0.05, help="Seconds between looks at the task."),
) -> None:
    """Follow a task live until it ends: each stage, gate and checkpoint as it comes.

    Exits 0 once the task is done, 1 if it is cancelled or parked for an operator; Ctrl-C
    stops watching (the task goes on)."""
    console = cli_common.console()
    follower = Follower(console)
    try:
        final = _run(lambda t: _follow(t, key, follower, interval))
    except KeyboardInterrupt:
        cli_common.console(stderr=True).print(
            f"stopped watching {key}; the task goes on", highlight=False
        )
        raise typer.Exit(INTERRUPTED) from None
    if final["status"] != "done":
        raise typer.Exit(1)


def _follow(tasks: Tasks, key: str, follower: Follower, interval: float) -> dict[str, Any]:
    detail = tasks.task(key)
    follower.update(detail)
    # the status line only where it can be redrawn in place: a pipe gets the steps alone
    live = (
        Live(follower.status_line(detail), console=follower.console, transient=True)
        if follower.console.is_terminal
        else None
    )
    with live or nullcontext():
        failed_since: float | None = None
        while detail["status"] not in WATCHED_TO_THE_END:
            time.sleep(interval)
            try:
                detail = tasks.task(detail["key"])
            except (StoreUnavailable, Unreachable, ApiError) as exc:
                # a store busy for a moment, a server restarting: look again, for a while
                if isinstance(exc, ApiError) and exc.status != 503:
                    raise
                failed_since = failed_since or time.monotonic()
                if time.monotonic() - failed_since > WATCH_PATIENCE_S:
                    raise
                continue
            failed_since = None
            follower.update(detail)
            if live is not None:
                live.update(follower.status_line(detail))
    return detail


@task_app.command("approve")
def task_approve(
    key: str = KEY,
    comment: str = typer.Option("", help="A note kept in the history."),
    as_json: bool = JSON,
) -> None:
    """Approve the checkpoint a task waits at."""
    _decide(key, True, comment, as_json)


@task_app.command("reject")
def task_reject(
    key: str = KEY,
    comment: str = typer.Option("", help="Why; it reaches the next prompt."),
    as_json: bool = JSON,
) -> None:
    """Reject the checkpoint a task waits at; it goes back to the stage the pipeline names."""
    _decide(key, False, comment, as_json)


def _decide(key: str, approve: bool, comment: str, as_json: bool) -> None:
    done = _run(lambda t: t.decide(key, approve, comment))
    if as_json:
        _print_json(done)
        return
    verb = "approval" if approve else "rejection"
    if done["recorded"]:
        print(f"{verb} of {done['checkpoint']} recorded for {done['key']}")
    else:
        print(f"{verb} of {done['checkpoint']} for {done['key']} was already recorded")


@task_app.command("stop")
def task_stop(
    key: str = KEY,
    reason: str = typer.Option("", help="Why; kept in the history."),
    as_json: bool = JSON,
) -> None:
    """Stop a task: its agent is killed, its branch deleted, and it ends cancelled."""
    done = _run(lambda t: t.stop(key, reason))
    if as_json:
        _print_json(done)
    elif done["status"] in ("done", "cancelled"):
        print(f"{done['key']} is already {done['status']}; nothing to stop")
    elif done["recorded"]:
        print(f"stop of {done['key']} recorded; it is cancelled as soon as its worker sees it")
    else:
        print(f"stop of {done['key']} was already recorded")


@task_app.command("retry")
def task_retry(
    key: str = KEY,
    from_stage: str = typer.Option("", "--from", help="The stage to run again from."),
    budget_usd: float | None = typer.Option(
        None, "--budget-usd", min=0.000001, help="Raise the budget that stopped it to this, in USD."
    ),
    budget_tokens: int | None = typer.Option(
        None, "--budget-tokens", min=1, help="Raise the budget that stopped it to this many tokens."
    ),
    as_json: bool = JSON,
) -> None:
    """Run a task that needs an operator again, from a stage (default: where it stopped).

    A task parked by a budget runs again once the budget is raised: --budget-usd or
    --budget-tokens raise whichever budget it used up, its stage's or its own."""
    done = _run(lambda t: t.retry(key, from_stage or None, budget_usd, budget_tokens))
    if as_json:
        _print_json(done)
        return
    where = from_stage or "where it stopped"
    raised = {"usd": budget_usd, "tokens": budget_tokens}
    shown = (
        f" with the budget raised to {budget_view(raised)}"
        if budget_usd is not None or budget_tokens is not None
        else ""
    )
    print(
        f"retry of {done['key']} from {where}{shown} "
        + ("recorded" if done["recorded"] else "already recorded")
    )


@task_app.command("start")
def task_start(
    key: str = typer.Argument(..., help="A ticket on the built-in board (any case)."),
    as_json: bool = JSON,
) -> None:
    """Start a ticket again from scratch, after its task was cancelled."""
    task = _run(lambda tasks: tasks.start(key))
    if as_json:
        _print_json(task)
    else:
        print(f"{task['key']} started: {task['stage']} ({task['status']})")
