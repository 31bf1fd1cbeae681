"""How the task commands show a task to a person: the list, one task in full, and a task followed
live. Everything here reads the API's shapes (orch.services.views), whether the data came from
the store or from a running `orch serve`."""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orch.cli_common import one_line

WATCHED_TO_THE_END = ("done", "cancelled", "needs_operator")  # statuses a watch ends on


def print_list(tasks: list[dict[str, Any]], console: Console) -> None:
    """One row a task; why a parked task was parked, or what an active one that is not moving
    waits for, on one line (its first, … if there was more)."""
    table = Table()
    for col in ("key", "repo", "stage", "status", "title", "why"):
        table.add_column(col)
    for t in tasks:
        shown = f"{t['status']} ({t['waiting_for']})" if t["waiting_for"] else t["status"]
        parked = one_line(t["reason"]) if t["status"] == "needs_operator" else ""
        if t.get("held_up"):
            parked = one_line(t["held_up"]["text"])
        table.add_row(
            Text(t["key"]),
            Text(t["repo"]),
            t["stage"],
            shown,
            Text(one_line(t["title"])),
            Text(parked),
        )
    console.print(table)


def print_detail(d: dict[str, Any], console: Console) -> None:
    """One task in full: its reason whole; the tables' cells on one line each."""
    waiting = f", waiting for {d['waiting_for']}" if d["waiting_for"] else ""
    console.print(Text.assemble((d["key"], "bold"), " ", d["title"]))
    console.print(
        f"repo {d['repo']}  branch {d['branch']}  stage {d['stage']}"
        f"  status {d['status']}{waiting}",
        markup=False,
    )
    if d["reason"]:
        console.print(Text(f"reason: {d['reason']}"))
    if d.get("held_up"):
        console.print(Text(f"held up: {d['held_up']['text']}"))
    if d["cancel"]:
        c = d["cancel"]
        deferred = (
            f"; deferred until {', '.join(c['deferred_by'])} resolve" if c["deferred_by"] else ""
        )
        console.print(
            Text.assemble(
                ("stop requested", "yellow"),
                f" by {c['actor']} at {when(c['requested_at'])}{deferred}",
            )
        )
    ledger = d["ledger"]
    console.print(
        f"spent: {spent(d['cost'])}"
        + (
            f"  (budget {budget_view(ledger['task']['budget'])})"
            if ledger["task"]["budget"]
            else ""
        ),
        markup=False,
    )
    for o in ledger.get("over_time") or ():
        console.print(
            f"{o['scope']}: spent {spent(o['spent'])} of {budget_view(o['budget'])}"
            f" (resets {when(o['resets_at'])})"
            + ("  SPENT: its stages wait" if o["spent_up"] else ""),
            markup=False,
        )
    console.print(_stages(d))
    console.print(_runs(d))
    gates = Table(title="gates")
    for col in ("stage", "gate", "verdict", "reason"):
        gates.add_column(col)
    for g in d["gates"]:
        verdict = "pass" if g["passed"] else "FAIL"
        gates.add_row(g["stage"], Text(g["gate"]), verdict, Text(one_line(g["reason"])))
    console.print(gates)
    effects = Table(title="effects")
    for col in ("key", "state", "result"):
        effects.add_column(col)
    for e in d["effects"]:
        effects.add_row(Text(e["key"]), e["state"], Text(json.dumps(e["result"])))
    console.print(effects)
    if d["deploys"]:
        console.print(_deploys(d))
    console.print(_events(d))
    history = Table(title="history")
    for col in ("v", "when", "from", "to", "actor", "reason"):
        history.add_column(col)
    for h in d["history"]:
        history.add_row(
            str(h["version"]),
            when(h["at"]),
            f"{h['from']['stage']}/{h['from']['status']}",
            f"{h['to']['stage']}/{h['to']['status']}",
            Text(h["actor"]),
            Text(one_line(h["reason"])),
        )
    console.print(history)


def _stages(d: dict[str, Any]) -> Table:
    ledger = d["ledger"]
    stages = Table(title="stages")
    for col in ("stage", "agent", "working", "waiting", "visits", "tokens in/out/cache", "cost"):
        stages.add_column(col)
    for s in d["stages"]:
        u = s["usage"]
        limit = (ledger["stages"].get(s["stage"]) or {}).get("budget")
        used = bool(s.get("agent") or u["usd"] or u["tokens_in"])
        stages.add_row(
            s["stage"],
            Text(s.get("agent") or "—"),
            f"{s['active_s']:.2f}s",
            f"{s['waiting_s']:.2f}s",
            str(s["visits"]),
            f"{u['tokens_in']}/{u['tokens_out']}/{u['cache_read'] + u['cache_write']}"
            if used
            else "",
            f"${u['usd']:.4f}" + (f" of {budget_view(limit)}" if limit else "") if used else "",
        )
    return stages


def _runs(d: dict[str, Any]) -> Table:
    runs = Table(title="agent runs")
    for col in ("stage", "try", "agent", "outcome", "exit", "tokens in/out", "cost", "tools"):
        runs.add_column(col)
    runs.add_column("detail")
    for r in d["runs"]:
        u, source = r["usage"], r.get("usage_from") or {}
        tokens_from = f" ({source['tokens']})" if source.get("tokens") else ""
        usd_from = f" ({source['usd']})" if source.get("usd") else ""
        runs.add_row(
            r["stage"],
            str(r["attempt"]),
            Text(r["agent"]),
            r["outcome"] or "running",
            "" if r["exit_code"] is None else str(r["exit_code"]),
            f"{u['tokens_in']}/{u['tokens_out']}{tokens_from}",
            f"${u['usd']:.4f}{usd_from}",
            str(len(r["tools"])),
            Text(one_line(r["detail"])),
        )
    return runs


def _deploys(d: dict[str, Any]) -> Table:
    deploys = Table(title="deploys")
    for col in ("target", "release", "outcome", "detail"):
        deploys.add_column(col)
    for dep in d["deploys"]:
        detail = ""
        if dep["superseded_by"]:
            detail = f"{dep['target']} already ran {dep['superseded_by'][:12]}, newer"
        elif dep["rolled_back_from"]:
            detail = f"back from {dep['rolled_back_from'][:12]}, which failed its check"
        deploys.add_row(dep["target"], dep["release"][:12], dep["outcome"], Text(detail))
    return deploys


def _events(d: dict[str, Any]) -> Table:
    events = Table(title="decisions and requests")
    for col in ("when", "kind", "actor", "detail", "handled"):
        events.add_column(col)
    for e in d["events"]:
        detail = e["payload"].get("reason") or e["payload"].get("comment") or ""
        detail = detail or e["payload"].get("stage") or e["payload"].get("checkpoint") or ""
        events.add_row(
            when(e["created_at"]),
            e["kind"],
            Text(e["actor"]),
            Text(one_line(str(detail))),
            "yes" if e["processed_at"] else "no",
        )
    return events


class Follower:
    """A task followed live, the way `orch demo` shows its ticket: a line for each step it takes
    (the gates that let it move on, a checkpoint it waits at, how it ended), and, on a terminal,
    a status line that stays below them."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.shown = 0  # history entries printed so far
        self.started = time.monotonic()

    def update(self, d: dict[str, Any]) -> None:
        """Print what happened to the task since the last update."""
        history = d["history"]
        if self.shown == 0:
            self.console.print(Text.assemble("watching ", (d["key"], "bold"), f": {d['title']}"))
        for h in history[self.shown :]:
            self._step(d, h)
        self.shown = len(history)

    def status_line(self, d: dict[str, Any]) -> Text:
        agent = next((s.get("agent") for s in d["stages"] if s["stage"] == d["stage"]), None)
        status = f"{d['status']} ({d['waiting_for']})" if d["waiting_for"] else d["status"]
        return Text.assemble(
            ("  ⟳ ", "cyan"),
            (d["stage"], "bold"),
            f"  agent: {agent or 'none'}  status: {status}"
            f"  watched {time.monotonic() - self.started:5.1f}s",
        )

    def _step(self, d: dict[str, Any], h: dict[str, Any]) -> None:
        to, came = h["to"], h["from"]
        reason = one_line(h["reason"])
        if h["version"] == 1:
            self.console.print(Text.assemble("  ▶ ", (to["stage"], "bold"), " started"))
            return
        if came["status"] == "active":
            # the gates the job that made this step recorded
            for g in d["gates"]:
                if g["version"] == h["version"] - 1:
                    mark = ("✔", "green") if g["passed"] else ("✘", "red")
                    self.console.print(
                        Text.assemble("    ", mark, f" gate {g['gate']}: {one_line(g['reason'])}")
                    )
        if to["status"] == "waiting":
            self.console.print(
                Text.assemble(
                    ("  ⏸  ", "yellow"),
                    f"{reason}; waiting before ",
                    (to["stage"], "bold"),
                    f" (orch task approve {d['key']})",
                )
            )
        elif to["status"] == "cancelled":
            self.console.print(
                Text.assemble(("  ■ ", "red"), ("cancelled", "bold red"), f": {reason}")
            )
        elif to["status"] == "done":
            self.console.print(
                Text.assemble(("  ■ ", "green"), f"{reason}: ", ("done", "bold green"))
            )
        elif to["status"] == "needs_operator":
            self.console.print(
                Text.assemble(("  ■ ", "red"), ("needs an operator", "bold red"), f": {reason}")
            )
        elif came["stage"] == to["stage"]:
            self.console.print(Text.assemble("  ▶ ", (to["stage"], "bold"), f" resumes ({reason})"))
        else:
            self.console.print(Text.assemble("  ▶ ", (to["stage"], "bold"), f" started ({reason})"))


def spent(u: dict[str, Any]) -> str:
    return (
        f"${u['usd']:.4f}, tokens in {u['tokens_in']} out {u['tokens_out']}"
        f" cache read {u['cache_read']} write {u['cache_write']}"
    )


def budget_view(b: dict[str, Any]) -> str:
    parts = []
    if b.get("usd") is not None:
        parts.append(f"${b['usd']:.4f}")
    if b.get("tokens") is not None:
        parts.append(f"{b['tokens']} tokens")
    return " and ".join(parts)


def when(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
