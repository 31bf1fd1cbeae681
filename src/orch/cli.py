"""The command line: orch demo | serve | task add|list|show | token create|list|revoke | migrate."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from orch.chaos.command import chaos as chaos_command
from orch.cli_common import STATE as _state
from orch.cli_common import fail as _fail
from orch.cli_common import guard as _guard
from orch.cli_common import settings as _settings
from orch.token_commands import token_app

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="orch turns tracker tickets into reviewed, merged and deployed changes.",
)
task_app = typer.Typer(no_args_is_help=True, help="File, list and inspect tasks.")
app.add_typer(task_app, name="task")
app.command("chaos")(chaos_command)
app.add_typer(token_app, name="token")


def _logging(level: str) -> None:
    from orch.logs import configure

    configure(level)


@app.callback()
def main_options(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML settings file (default: $ORCH_CONFIG).", exists=False
    ),
) -> None:
    _state["config"] = config


@app.command()
def demo(
    directory: Path | None = typer.Option(
        None, "--dir", help="Where to put the demo (new or empty)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    scenario: str = typer.Option(
        "happy",
        help="happy: approve everything; stop: STOP while the development agent runs;"
        " reject: reject the plan once with a comment; crash: kill the worker with SIGKILL in"
        " the middle of the merge and restart it; landing: two tickets that pass alone and"
        " break together, confirmed for production newest first.",
    ),
    agent: str = typer.Option(
        "scripted",
        help="scripted: orch's built-in stand-in; claude or codex: the real CLI (on PATH, or at"
        " ORCH_CLAUDE_BIN / ORCH_CODEX_BIN) against orch's scripted model server, offline.",
    ),
) -> None:
    """Run one ticket through the whole pipeline on a sample project, offline."""
    from orch.demo.run import render_summary, run

    _logging("WARNING")
    console = Console(stderr=as_json)
    result = _guard(lambda: run(directory, console, scenario, agent=agent))
    if as_json:
        print(json.dumps({**result.summary, "ok": result.ok, "reason": result.reason}, indent=2))
    elif result.summary:
        render_summary(result.summary, console)
    if not result.ok:
        _fail(result.reason, 1)


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Address to listen on (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default 8077; 0 picks a free one)."),
) -> None:
    """Run the API, the dispatcher and its worker slots in one process."""
    import signal

    import uvicorn

    from orch.bootstrap import build
    from orch.web.access import loopback
    from orch.web.app import create_app

    settings = _settings()
    _logging(settings.log_level)
    _arm_crashpoint()
    orch_app = _guard(lambda: build(settings, migrate=False))
    try:
        _guard(orch_app.lock_for_serving)
        _guard(orch_app.lock_workspace)
        _guard(orch_app.store.migrate)
        listen = host or settings.api.host
        if not loopback(listen) and not _guard(orch_app.store.has_tokens):
            _fail(
                f"refusing to listen on {listen}, beyond this machine, with no API token: anyone"
                " who reached it could act; create one first (orch token create --name NAME"
                " --role admin), or listen on 127.0.0.1"
            )
        config = uvicorn.Config(
            create_app(orch_app),
            host=listen,
            port=settings.api.port if port is None else port,
            log_level="warning",
            access_log=False,
        )
        server = uvicorn.Server(config)
        _announce(server, orch_app)

        def stop(*_: object) -> None:
            server.should_exit = True

        # uvicorn re-raises the signal that stopped it once it has shut down, with the handler
        # it found: under Python's own, SIGTERM would end the process before the jobs in flight
        # are given back. This one lets it return, and the jobs go back to the queue below; a
        # signal before uvicorn runs stops it as soon as it starts
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)
        orch_app.dispatcher.start()
        server.run()
    finally:
        orch_app.close()


def _announce(server: Any, orch_app: Any) -> None:
    """Print the listening address once uvicorn has bound, so `--port 0` is usable."""
    original = server.startup

    async def startup(sockets: Any = None) -> None:
        await original(sockets=sockets)
        for s in server.servers:
            for sock in s.sockets:
                host, port = sock.getsockname()[:2]
                print(
                    f"orch serving on http://{host}:{port} (store {orch_app.store.display_url},"
                    f" incarnation {orch_app.dispatcher.owner})",
                    flush=True,
                )
        _print_confinement(orch_app)

    server.startup = startup


def _print_confinement(orch_app: Any) -> None:
    """Say which confinement agents and gates run under, and which repositories opted out."""
    print(f"confinement: {orch_app.engine.sandbox.describe()}", flush=True)
    for repo in orch_app.settings.repos:
        if repo.sandbox == "none":
            print(f"confinement: repository {repo.name} runs unconfined (sandbox: none)")


def _arm_crashpoint() -> None:
    """ORCH_CRASHPOINT=name[:nth]: SIGKILL this process at that point (for chaos testing).
    Also hides this process's environment from the agents it will start."""
    from orch import crashpoints
    from orch.adapters.proctable import hide_environment

    hide_environment()

    spec = _guard(lambda: crashpoints.arm_from_env(os.environ))
    if spec:
        Console(stderr=True).print(f"[yellow]crash point armed:[/] {spec}", highlight=False)


@app.command()
def worker() -> None:
    """Run worker slots without the API. Several workers (and one serve) may share a store."""
    import signal
    import threading

    from orch.bootstrap import build

    settings = _settings()
    _logging(settings.log_level)
    _arm_crashpoint()
    orch_app = _guard(lambda: build(settings))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    try:
        _guard(orch_app.lock_workspace)
        orch_app.dispatcher.start()
        print(
            f"orch worker running (store {orch_app.store.display_url},"
            f" incarnation {orch_app.dispatcher.owner})",
            flush=True,
        )
        _print_confinement(orch_app)
        done.wait()
    finally:
        orch_app.close()


@app.command()
def migrate() -> None:
    """Apply the store's migrations."""
    from orch.bootstrap import open_store

    settings = _settings()

    def go() -> str:
        store = open_store(settings)
        try:
            store.migrate()
            return store.display_url
        finally:
            store.close()

    print(f"migrated {_guard(go)}")


def _app():
    from orch.bootstrap import build

    return _guard(lambda: build(_settings()))


@task_app.command("add")
def task_add(
    repo: str = typer.Argument(..., help="A configured repository."),
    title: str = typer.Argument(..., help="The ticket's title."),
    body: str = typer.Option("", help="The ticket's description."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """File a ticket on the built-in board; its task starts at once."""
    from orch.services.views import task_summary

    orch_app = _app()
    try:
        task = _guard(lambda: orch_app.intake.file(repo, title, body, actor="cli"))
        if as_json:
            print(json.dumps(task_summary(task), indent=2))
        else:
            print(f"{task.key} filed: {task.stage} ({task.status})")
    finally:
        orch_app.close()


@task_app.command("list")
def task_list(
    limit: int = typer.Option(50, min=1, max=1000),
    status: str = typer.Option(
        "", help="Only tasks in this status: active, waiting, needs_operator, done, cancelled."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The most recent tasks; a parked task (needs_operator) shows why it was parked."""
    from orch.domain.states import TaskStatus
    from orch.services.views import task_summary

    try:
        wanted = TaskStatus(status) if status else None
    except ValueError:
        _fail(f"unknown status {status!r} (one of {', '.join(s.value for s in TaskStatus)})")
    orch_app = _app()
    try:
        tasks = _guard(lambda: orch_app.store.list_tasks(limit, wanted))
        if as_json:
            print(json.dumps([task_summary(t) for t in tasks], indent=2))
            return
        table = Table()
        for col in ("key", "repo", "stage", "status", "title", "why parked"):
            table.add_column(col)
        for t in tasks:
            shown = f"{t.status} ({t.waiting_for})" if t.waiting_for else t.status.value
            parked = t.status_reason if t.status == TaskStatus.NEEDS_OPERATOR else ""
            table.add_row(t.key, t.repo, t.stage.value, shown, t.title, parked)
        Console().print(table)
    finally:
        orch_app.close()


@task_app.command("show")
def task_show(
    key: str = typer.Argument(..., help="The ticket key, e.g. APP-1."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One task: stages with timings, gate verdicts, effects, runs and history."""
    from orch.services.views import task_detail

    orch_app = _app()
    try:
        detail = _guard(lambda: task_detail(orch_app.store, orch_app.intake.task(key)))
        if as_json:
            print(json.dumps(detail, indent=2))
        else:
            _print_detail(detail)
    finally:
        orch_app.close()


def _decide(key: str, approve: bool, comment: str) -> None:
    orch_app = _app()
    try:
        task = _guard(lambda: orch_app.intake.task(key))
        recorded = _guard(lambda: orch_app.intake.decide(key, approve, "cli", comment))
        verb = "approval" if approve else "rejection"
        if recorded:
            print(f"{verb} of {task.waiting_for} recorded for {key}")
        else:
            print(f"{verb} of {task.waiting_for} for {key} was already recorded")
    finally:
        orch_app.close()


@task_app.command("approve")
def task_approve(
    key: str = typer.Argument(..., help="The ticket key."),
    comment: str = typer.Option("", help="A note kept in the history."),
) -> None:
    """Approve the checkpoint a task waits at."""
    _decide(key, True, comment)


@task_app.command("reject")
def task_reject(
    key: str = typer.Argument(..., help="The ticket key."),
    comment: str = typer.Option("", help="Why; it reaches the next prompt."),
) -> None:
    """Reject the checkpoint a task waits at; it goes back to the stage the pipeline names."""
    _decide(key, False, comment)


@task_app.command("stop")
def task_stop(
    key: str = typer.Argument(..., help="The ticket key."),
    reason: str = typer.Option("", help="Why; kept in the history."),
) -> None:
    """Stop a task: its agent is killed, its branch deleted, and it ends cancelled."""
    orch_app = _app()
    try:
        task, recorded = _guard(lambda: orch_app.intake.stop(key, "cli", reason))
        if task.status.value in ("done", "cancelled"):
            print(f"{key} is already {task.status}; nothing to stop")
        elif recorded:
            print(f"stop of {key} recorded; it is cancelled as soon as its worker sees it")
        else:
            print(f"stop of {key} was already recorded")
    finally:
        orch_app.close()


@task_app.command("retry")
def task_retry(
    key: str = typer.Argument(..., help="The ticket key."),
    from_stage: str = typer.Option("", "--from", help="The stage to run again from."),
    budget_usd: float | None = typer.Option(
        None, "--budget-usd", min=0.000001, help="Raise the budget that stopped it to this, in USD."
    ),
    budget_tokens: int | None = typer.Option(
        None, "--budget-tokens", min=1, help="Raise the budget that stopped it to this many tokens."
    ),
) -> None:
    """Run a task that needs an operator again, from a stage (default: where it stopped).

    A task parked by a budget runs again once the budget is raised: --budget-usd or
    --budget-tokens raise whichever budget it used up, its stage's or its own."""
    from orch.domain.ledger import Budget

    orch_app = _app()
    try:
        budget = Budget(budget_usd, budget_tokens)
        recorded = _guard(lambda: orch_app.intake.retry(key, from_stage or None, "cli", budget))
        where = from_stage or "where it stopped"
        raised = (
            ""
            if budget.unlimited
            else f" with the budget raised to {_budget_view(budget.as_dict())}"
        )
        print(
            f"retry of {key} from {where}{raised} "
            + ("recorded" if recorded else "already recorded")
        )
    finally:
        orch_app.close()


@task_app.command("start")
def task_start(key: str = typer.Argument(..., help="A ticket on the built-in board.")) -> None:
    """Start a ticket again from scratch, after its task was cancelled."""
    orch_app = _app()
    try:
        task = _guard(lambda: orch_app.intake.start(key, actor="cli"))
        print(f"{task.key} started: {task.stage} ({task.status})")
    finally:
        orch_app.close()


def _print_detail(d: dict[str, Any]) -> None:
    console = Console()
    waiting = f", waiting for {d['waiting_for']}" if d["waiting_for"] else ""
    console.print(f"[bold]{d['key']}[/] {d['title']}")
    console.print(
        f"repo {d['repo']}  branch {d['branch']}  stage {d['stage']}  status {d['status']}{waiting}"
    )
    if d["reason"]:
        console.print(f"reason: {d['reason']}")
    if d["cancel"]:
        c = d["cancel"]
        deferred = (
            f"; deferred until {', '.join(c['deferred_by'])} resolve" if c["deferred_by"] else ""
        )
        console.print(
            f"[yellow]stop requested[/] by {c['actor']} at {_when(c['requested_at'])}{deferred}"
        )
    ledger = d["ledger"]
    console.print(
        f"spent: {_spent(d['cost'])}"
        + (
            f"  (budget {_budget_view(ledger['task']['budget'])})"
            if ledger["task"]["budget"]
            else ""
        )
    )
    stages = Table(title="stages")
    for col in ("stage", "agent", "working", "waiting", "visits", "tokens in/out/cache", "cost"):
        stages.add_column(col)
    for s in d["stages"]:
        u = s["usage"]
        limit = (ledger["stages"].get(s["stage"]) or {}).get("budget")
        spent = bool(s.get("agent") or u["usd"] or u["tokens_in"])
        stages.add_row(
            s["stage"],
            s.get("agent") or "—",
            f"{s['active_s']:.2f}s",
            f"{s['waiting_s']:.2f}s",
            str(s["visits"]),
            f"{u['tokens_in']}/{u['tokens_out']}/{u['cache_read'] + u['cache_write']}"
            if spent
            else "",
            f"${u['usd']:.4f}" + (f" of {_budget_view(limit)}" if limit else "") if spent else "",
        )
    console.print(stages)
    runs = Table(title="agent runs")
    for col in (
        "stage",
        "try",
        "agent",
        "outcome",
        "exit",
        "tokens in/out",
        "cost",
        "tools",
        "detail",
    ):
        runs.add_column(col)
    for r in d["runs"]:
        u = r["usage"]
        runs.add_row(
            r["stage"],
            str(r["attempt"]),
            r["agent"],
            r["outcome"] or "running",
            "" if r["exit_code"] is None else str(r["exit_code"]),
            f"{u['tokens_in']}/{u['tokens_out']}",
            f"${u['usd']:.4f}",
            str(len(r["tools"])),
            (r["detail"] or "")[:60],
        )
    console.print(runs)
    gates = Table(title="gates")
    for col in ("stage", "gate", "verdict", "reason"):
        gates.add_column(col)
    for g in d["gates"]:
        gates.add_row(g["stage"], g["gate"], "pass" if g["passed"] else "FAIL", g["reason"][:100])
    console.print(gates)
    effects = Table(title="effects")
    for col in ("key", "state", "result"):
        effects.add_column(col)
    for e in d["effects"]:
        effects.add_row(e["key"], e["state"], json.dumps(e["result"])[:100])
    console.print(effects)
    if d["deploys"]:
        deploys = Table(title="deploys")
        for col in ("target", "release", "outcome", "detail"):
            deploys.add_column(col)
        for dep in d["deploys"]:
            detail = ""
            if dep["superseded_by"]:
                detail = f"{dep['target']} already ran {dep['superseded_by'][:12]}, newer"
            elif dep["rolled_back_from"]:
                detail = f"back from {dep['rolled_back_from'][:12]}, which failed its check"
            deploys.add_row(dep["target"], dep["release"][:12], dep["outcome"], detail)
        console.print(deploys)
    events = Table(title="decisions and requests")
    for col in ("when", "kind", "actor", "detail", "handled"):
        events.add_column(col)
    for e in d["events"]:
        detail = e["payload"].get("reason") or e["payload"].get("comment") or ""
        detail = detail or e["payload"].get("stage") or e["payload"].get("checkpoint") or ""
        events.add_row(
            _when(e["created_at"]),
            e["kind"],
            e["actor"],
            str(detail)[:60],
            "yes" if e["processed_at"] else "no",
        )
    console.print(events)
    history = Table(title="history")
    for col in ("v", "when", "from", "to", "actor", "reason"):
        history.add_column(col)
    for h in d["history"]:
        history.add_row(
            str(h["version"]),
            _when(h["at"]),
            f"{h['from']['stage']}/{h['from']['status']}",
            f"{h['to']['stage']}/{h['to']['status']}",
            h["actor"],
            h["reason"][:80],
        )
    console.print(history)


def _spent(u: dict[str, Any]) -> str:
    return (
        f"${u['usd']:.4f}, tokens in {u['tokens_in']} out {u['tokens_out']}"
        f" cache read {u['cache_read']} write {u['cache_write']}"
    )


def _budget_view(b: dict[str, Any]) -> str:
    parts = []
    if b.get("usd") is not None:
        parts.append(f"${b['usd']:.4f}")
    if b.get("tokens") is not None:
        parts.append(f"{b['tokens']} tokens")
    return " and ".join(parts)


def _when(epoch: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
