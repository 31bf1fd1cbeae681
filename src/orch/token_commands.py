"""`orch token create|list|revoke`: who may use the API (orch.domain.access)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.table import Table

from orch import cli_common
from orch.domain import access
from orch.domain.access import Role
from orch.ports import Store
from orch.services.tokens import create_token, token_view

T = TypeVar("T")

token_app = typer.Typer(
    no_args_is_help=True,
    help="API tokens: a viewer reads, an operator decides, stops and retries, an admin also"
    " manages tokens.",
)


def _with_store(fn: Callable[[Store], T], *, reads_only: bool = False) -> T:
    """fn on the settings' store: migrated first for a change, refused unmigrated for a read
    (which makes neither a file nor a table)."""
    from orch.bootstrap import open_migrated_store, open_store

    settings = cli_common.settings()

    def go() -> T:
        store = open_migrated_store(settings) if reads_only else open_store(settings)
        try:
            if not reads_only:
                store.migrate()
            return fn(store)
        finally:
            store.close()

    return cli_common.guard(go)


@token_app.command("create")
def create(
    name: str = typer.Option(..., help="Who holds it: their decisions are recorded as theirs."),
    role: Role = typer.Option(Role.VIEWER, help="viewer, operator or admin."),
    as_json: bool = typer.Option(False, "--json", help="Print name, role and secret as JSON."),
) -> None:
    """Make a token and print its secret, once: only its digest is kept."""
    cli_common.guard(lambda: access.check_name(name))  # before the store is opened
    _, secret = _with_store(lambda store: create_token(store, name, role))
    if as_json:
        print(json.dumps({"name": name, "role": role.value, "secret": secret}, indent=2))
        return
    Console(stderr=True).print(
        f"token {name} ({role}) created; its secret is shown this once:", highlight=False
    )
    print(secret)


@token_app.command("list")
def list_tokens(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every token, live or revoked; never a secret."""
    tokens = _with_store(lambda store: store.tokens(), reads_only=True)
    rows = [token_view(t) for t in tokens]
    if as_json:
        print(json.dumps({"tokens": rows}, indent=2))
        return
    table = Table("name", "role", "state")
    for t in tokens:
        table.add_row(t.name, t.role.value, "live" if t.live else "revoked")
    cli_common.console().print(table)


@token_app.command("revoke")
def revoke(name: str = typer.Argument(..., help="The token's name.")) -> None:
    """Revoke a token at once: requests carrying it are refused from now on."""
    revoked = _with_store(lambda store: store.revoke_token(name))
    print(f"token {name} revoked" if revoked else f"token {name} was revoked already")
