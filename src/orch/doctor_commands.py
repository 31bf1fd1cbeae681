"""`orch doctor` and `orch pipeline check`: a setup, and a pipeline file, checked before they
are relied on (the checks themselves are in orch.doctor)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import typer

from orch import cli_common

pipeline_app = typer.Typer(no_args_is_help=True, help="Check pipeline files.")


def doctor(
    as_json: bool = typer.Option(
        False, "--json", help="Print the checks as JSON: a list of {check, ok, detail, level}."
    ),
    timeout: float = typer.Option(
        20.0, min=1, help="Seconds each remote and database is given to answer."
    ),
) -> None:
    """Check a setup: settings, store, sandbox, services, repositories and agents.

    One line per check; exits 1 if any fails. Nothing is created or migrated."""
    from orch.doctor import run_all

    settings = cli_common.settings()
    checks = run_all(settings, os.environ, timeout)
    if as_json:
        print(json.dumps([c.as_dict() for c in checks], indent=2))
    else:
        for c in checks:
            print(c.line())
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


@pipeline_app.command("check")
def pipeline_check(
    file: Path = typer.Argument(..., help="A pipeline file, e.g. .orch/pipeline.yaml."),
) -> None:
    """Validate a pipeline file before it is pushed, as orch reads `.orch/pipeline.yaml`, and
    print the pipeline in force: the built-in one as the file changes it.

    No repository is needed. Given settings (--config or $ORCH_CONFIG), the agents its stages
    name, and the units of its budgets, are checked against them too."""
    from orch.doctor.agents import build_one
    from orch.doctor.pipelines import describe, problems, summary
    from orch.domain.errors import OrchError
    from orch.ports import Agent

    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        cli_common.fail(f"cannot read {file}: {exc.strerror or exc}")
    except UnicodeDecodeError:
        cli_common.fail(f"{file} is not UTF-8 text")
    names: list[str] | None = None
    agents: dict[str, Agent] | None = None
    if cli_common.STATE["config"] is not None or os.environ.get("ORCH_CONFIG"):
        settings = cli_common.settings()
        names = list(settings.agents)
        agents = {}
        for name in names:
            # an agent that cannot be built is doctor's to report; its stages' budgets go
            # unchecked here
            with contextlib.suppress(OrchError):
                agents[name] = build_one(settings, name, os.environ)
    pipeline, found = problems(text, str(file), names, agents)
    if pipeline is None:
        for line in found:
            print(line)
        raise typer.Exit(1)
    print(f"ok: {summary(pipeline)}")
    for line in describe(pipeline):
        print(line)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
    app.add_typer(pipeline_app, name="pipeline")
