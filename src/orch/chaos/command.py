"""`orch chaos`: the command, its options, and the table it prints.

Importing this module is cheap (the harness is imported when the command runs), so the CLI can
register the command without slowing every other command down.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from orch.chaos.run import ChaosResult


def chaos(
    directory: Path | None = typer.Option(
        None, "--dir", help="Where to put the run (new or empty; default: a new temp dir)."
    ),
    store_url: str | None = typer.Option(
        None, "--store-url", help="An empty store (postgresql://...); default: SQLite in --dir."
    ),
    tickets: int = typer.Option(12, "--tickets", min=1, help="Tickets filed per batch."),
    repos: int = typer.Option(2, "--repos", min=1, max=9, help="Sample repositories."),
    max_active: int = typer.Option(2, "--max-active", min=1, help="Active tasks per repository."),
    kills: int = typer.Option(50, "--kills", min=0, help="SIGKILLs to inflict before settling."),
    seed: int | None = typer.Option(None, "--seed", help="Fixes every choice (not the timing)."),
    lease_ttl: float = typer.Option(4.0, "--lease-ttl", min=0.5, help="Lease TTL, seconds."),
    heartbeat: float = typer.Option(1.0, "--heartbeat", min=0.1, help="Lease heartbeat, seconds."),
    sweep: float = typer.Option(1.0, "--sweep", min=0.1, help="Sweep interval, seconds."),
    stop_share: float = typer.Option(
        0.1, "--stop-share", min=0.0, max=1.0, help="Share of tasks STOPped at a random moment."
    ),
    pause_share: float = typer.Option(
        0.1, "--pause-share", min=0.0, max=1.0, help="Share of faults that are a SIGSTOP."
    ),
    crashpoint_share: float = typer.Option(
        0.6, "--crashpoint-share", min=0.0, max=1.0, help="Share of starts given a crash point."
    ),
    settle: float = typer.Option(
        120.0, "--settle", min=1.0, help="Seconds to wait for convergence after the last fault."
    ),
    world: str = typer.Option(
        "local",
        "--world",
        help="local: tickets through the API, plain git remotes. plane-gitea: tickets are work"
        " items of a fake Plane, answered and STOPped through its states, landed through a fake"
        " Gitea, both injecting faults, with webhooks duplicated, reordered and replayed.",
    ),
    fault_rate: float = typer.Option(
        0.1, "--fault-rate", min=0.0, max=1.0, help="plane-gitea: share of requests faulted."
    ),
    webhook_share: float = typer.Option(
        0.3,
        "--webhook-share",
        min=0.0,
        max=1.0,
        help="plane-gitea: share of deliveries duplicated and of items given a reorder.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON too."),
) -> None:
    """Kill orch (SIGKILL at crash points and at random, SIGSTOP past the lease) while it works
    through tickets, then check the invariants I1-I10. Exits 1 if any broke."""
    from orch.chaos.harness import run_chaos
    from orch.chaos.run import ChaosOptions
    from orch.domain.errors import OrchError

    if world not in WORLDS:
        raise typer.BadParameter(f"one of {', '.join(WORLDS)}", param_hint="--world")
    options = ChaosOptions(
        directory=directory,
        store_url=store_url,
        tickets=tickets,
        repos=repos,
        max_active=max_active,
        kills=kills,
        seed=seed,
        lease_ttl_s=lease_ttl,
        heartbeat_s=heartbeat,
        sweep_s=sweep,
        stop_share=stop_share,
        pause_share=pause_share,
        crashpoint_share=crashpoint_share,
        settle_s=settle,
        world=world,
        fault_rate=fault_rate,
        webhook_share=webhook_share,
    )
    progress = Console(stderr=True, highlight=False)
    # a SIGTERM (a CI timeout, say) unwinds like Ctrl-C, so every process started is ended
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_chaos(options, lambda text: progress.print(f"[dim]chaos:[/] {text}"))
    except OrchError as exc:
        progress.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        progress.print("interrupted; no process of the run is left")
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 110)
    render(result, out)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
    for reason in result.reasons:
        progress.print(f"[red]✘[/] {reason}")
    print(result.summary_line(), flush=True)
    if not result.ok:
        raise typer.Exit(1)


WORLDS = ("local", "plane-gitea")


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def render(result: ChaosResult, console: Console) -> None:
    from orch.chaos.run import T_RECLAIM_S, T_RECOVER_S

    f = result.figures
    table = Table(title=f"orch chaos: seed {result.seed}, {f['elapsed_s']:.0f} s")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("expected")
    tasks: dict[str, Any] = f["tasks"]
    points = "\n".join(f"{k} {v}" for k, v in f["kills_by_point"].items()) or "none"
    rows = [
        ("runs (process starts)", str(f["runs"]), ""),
        ("kills", str(f["kills"]), f"≥ {result.asked_kills}"),
        ("  at crash points", str(f["kills_at_crash_points"]), ""),
        ("  at random moments", str(f["kills_random"]), ""),
        ("  by crash point", points, ""),
        ("pauses past the lease (SIGSTOP)", str(f["pauses"]), ""),
        ("  jobs reclaimed from paused", str(f["paused_jobs_reclaimed"]), ""),
        ("tasks", "\n".join(f"{k} {v}" for k, v in sorted(tasks.items())), "terminal/parked"),
        ("duplicate effects", str(f["duplicates"]), "0"),
        ("lost tasks", str(f["lost"]), "0"),
        ("zombies", str(f["zombies"]), "0"),
        ("longest re-drive after a restart", _s(f["longest_redrive_s"]), f"≤ {T_RECOVER_S:g} s"),
        (
            "longest reclaim of a paused worker's job",
            _s(f["longest_reclaim_s"]),
            f"≤ {T_RECLAIM_S:g} s",
        ),
        ("writes rejected by fencing", str(f["fenced_writes"]), "> 0 after a reclaim,"),
        ("leases seen expired, nothing tried", str(f["leases_given_up"]), "or this"),
    ]
    for row in rows:
        table.add_row(*row)
    table.add_section()
    for finding in result.findings:
        verdict = "ok" if finding.ok else f"[red]BROKEN ({len(finding.violations)})[/]"
        table.add_row(f"{finding.name} {finding.title}", verdict, "")
    console.print(table)
    if result.outside is not None:
        console.print(outside_table(result))
    console.print(f"run directory: {result.root} (store, logs of every process, remotes)")
    for finding in result.findings:
        for violation in finding.violations[:10]:
            console.print(f"[red]{finding.name}[/] {violation}")


def _lines(counts: dict[str, Any]) -> str:
    return "\n".join(f"{k} {v}" for k, v in counts.items() if v) or "none"


def outside_table(result: ChaosResult) -> Table:
    """What the world outside orch went through: the faults Plane and Gitea injected, and what
    became of the webhook deliveries."""
    o: dict[str, Any] = result.outside or {}
    table = Table(title=f"the world outside: Plane and Gitea, fault rate {o['fault_rate']:g}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for side in ("forge", "tracker"):
        faults = o["faults"][side]
        table.add_row(f"faults injected on the {side}", str(faults["injected"]))
        table.add_row("  by kind", _lines(faults["by_kind"]))
        targets = {t: sum(k.values()) for t, k in faults["by_target"].items()}
        table.add_row("  by request", _lines(targets))
    w = o["webhooks"]
    table.add_section()
    rows = [
        ("webhook deliveries of changes", w["originals"]),
        ("  sent again, same id (x5 in all)", w["duplicates"]),
        ("  sent again, new id", w["renamed"]),
        ("  held, then released reversed", w["reversed"]),
        ("  answers held until asked", w["late"]),
        ("  reorder episodes", w["reorder_episodes"]),
        ("  stale starts after a STOP", w["stale_starts"]),
        ("  dropped", w["dropped"]),
        ("  replayed at the end, same id", w["replayed"]),
        ("  replayed at the end, new id", w["replayed_renamed"]),
        ("  not received (serve down)", w["not_received"]),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    table.add_row("what orch did with them", _lines(w["worked_by_orch"]))
    table.add_section()
    table.add_row("the person's moves in Plane", _lines(o["person"]))
    return table
