"""The command line: orch demo | serve | worker | migrate | chaos | doctor, orch task
add|list|show|watch|approve|reject|stop|retry|start (orch.task_commands), orch token
create|list|revoke (orch.token_commands); `orch --version`, and shell completion
(`--install-completion`, `--show-completion`). Commands that print data take `--json`, in the
API's shapes. With ORCH_TOKEN set, the task commands go to a running `orch serve` over its API."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from orch import doctor_commands
from orch.chaos.command import chaos as chaos_command
from orch.cli_common import STATE as _state
from orch.cli_common import fail as _fail
from orch.cli_common import guard as _guard
from orch.cli_common import settings as _settings
from orch.task_commands import task_app
from orch.token_commands import token_app

PROG = "orch"  # the name completion is installed for, however the CLI was started

app = typer.Typer(
    no_args_is_help=True,
    help="orch turns tracker tickets into reviewed, merged and deployed changes.",
)
app.add_typer(task_app, name="task")
app.command("chaos")(chaos_command)
app.add_typer(token_app, name="token")
doctor_commands.register(app)


def _logging(level: str) -> None:
    from orch.logs import configure

    configure(level)


def _logging_as_set(settings: Any) -> None:
    from orch.logs import configure_from

    configure_from(settings.log)


def _version(asked: bool) -> None:
    if asked:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"orch {version('orch')}")
        except PackageNotFoundError:
            _fail("orch is not installed as a package: no version to tell")
        raise typer.Exit()


@app.callback()
def main_options(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML settings file (default: $ORCH_CONFIG).", exists=False
    ),
    _show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print orch's version."
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
        " break together, confirmed for production newest first; plane-gitea: a Plane work"
        " item to a merged Gitea pull request, against orch's built-in fakes over real HTTP,"
        " the plan approved with a Telegram button.",
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
    _logging_as_set(settings)
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
        api = create_app(orch_app)
        config = uvicorn.Config(
            api,
            host=listen,
            port=settings.api.port if port is None else port,
            log_level="warning",
            access_log=False,
        )
        server = _uvicorn_server(config, api.state.close_streams)
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
        orch_app.start_listening()
        server.run()
    finally:
        orch_app.close()


def _uvicorn_server(config: Any, before_shutdown: Any) -> Any:
    """uvicorn's server, which ends the dashboard's live streams as it shuts down: it waits for
    every response to finish, and those never would."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            before_shutdown()
            await super().shutdown(sockets)

    return Server(config)


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
    _logging_as_set(settings)
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


def main() -> None:
    app(prog_name=PROG)


if __name__ == "__main__":
    main()
