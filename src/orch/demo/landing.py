"""`orch demo --scenario landing`: two tickets whose changes pass their tests alone and break
together, then confirmed for production newest first.

What it shows: the second merge's candidate (its branch merged onto a main that has the first)
is red, so it goes back to development instead of landing; and the older release, confirmed
last, is recorded as superseded instead of taking production backwards."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from orch.bootstrap import App, build
from orch.demo import sample
from orch.domain.errors import OrchError
from orch.domain.model import Task
from orch.domain.states import EffectKind, TaskStatus, is_terminal
from orch.services.views import task_detail

AGENT = Path(__file__).with_name("landing_agent.py")
ACTOR = "demo (landing)"
TICKETS = (
    ("Rename word_count to count_words", "Rename the helper everywhere it is used."),
    ("Add a total word count", "Add `sample.stats.total_words(texts)` using the word counter."),
)
PIPELINE = "stages:\n  - name: development\n    agent: landing\n"


def run_landing(root: Path, console: Console, settings: Any, timeout_s: float) -> dict[str, Any]:
    """Drive both tickets to done; the summary says what happened and `problem` what went
    wrong, if anything did."""
    app = build(settings)
    try:
        tasks = [app.intake.file("sample", t, b, actor="demo") for t, b in TICKETS]
        for t in tasks:
            console.print(f"filed [bold]{t.key}[/]: {t.title}")
        app.dispatcher.start()
        order = _drive(app, tasks, console, timeout_s)
        return _report(app, tasks, order, root)
    finally:
        app.close()


def prepare_sample(work: Path) -> None:
    """The sample's pipeline: the landing developer in the development stage."""
    (work / ".orch").mkdir()
    (work / ".orch" / "pipeline.yaml").write_text(PIPELINE, encoding="utf-8")
    sample.git("add", "--all", cwd=work)
    sample.git("commit", "--quiet", "-m", "The landing scenario's pipeline", cwd=work)
    sample.git("push", "--quiet", "origin", "main", cwd=work)


def agent_settings() -> dict[str, Any]:
    return {"kind": "command", "command": [sys.executable, "-I", str(AGENT)]}


def _drive(app: App, tasks: list[Task], console: Console, timeout_s: float) -> list[str]:
    """Approve every plan; when both wait at confirm-deploy, confirm the newer release first
    and the older once the newer is done. Returns the keys in the order confirmed."""
    started = time.monotonic()
    shown = {t.id: 0 for t in tasks}
    confirmed: list[str] = []
    while True:
        now = [app.store.get_task(t.id) for t in tasks]
        for t in now:
            history = app.store.transitions(t.id)
            for tr in history[shown[t.id] :]:
                if tr.version > 1:
                    console.print(f"  {t.key} ▶ {tr.to_stage} ({tr.to_status}): {tr.reason[:160]}")
            shown[t.id] = len(history)
            if t.waiting_for == "approve-plan" and app.intake.decide(t.key, True, ACTOR):
                console.print(f"  {t.key} ⏸ approve-plan: approved by the demo")
        if all(is_terminal(t.status) or t.status == TaskStatus.NEEDS_OPERATOR for t in now):
            return confirmed
        at_deploy = [t for t in now if t.waiting_for == "confirm-deploy"]
        if not confirmed and len(at_deploy) == 2:
            newer = max(at_deploy, key=lambda t: _merged_at(app, t))
            if app.intake.decide(newer.key, True, ACTOR):
                confirmed.append(newer.key)
                console.print(f"  {newer.key} ⏸ confirm-deploy: confirmed first (newer release)")
        elif len(confirmed) == 1 and len(at_deploy) == 1:
            older = at_deploy[0]
            done = [t for t in now if t.key == confirmed[0] and t.status == TaskStatus.DONE]
            if done and app.intake.decide(older.key, True, ACTOR):
                confirmed.append(older.key)
                console.print(f"  {older.key} ⏸ confirm-deploy: confirmed last (older release)")
        if time.monotonic() - started > timeout_s:
            raise OrchError(f"the landing demo did not finish within {timeout_s:g}s")
        time.sleep(0.1)


def _merged_at(app: App, task: Task) -> float:
    merges = [e for e in app.store.effects(task.id) if e.kind == EffectKind.MERGE]
    return max((e.updated_at for e in merges), default=0.0)


def _report(app: App, tasks: list[Task], order: list[str], root: Path) -> dict[str, Any]:
    remote = root / "sample.git"
    details = [task_detail(app.store, app.store.get_task(t.id)) for t in tasks]
    red = [
        {"key": d["key"], "reason": g["reason"]}
        for d in details
        for g in d["gates"]
        if g["gate"] == "merge-candidate" and not g["passed"]
    ]
    production = [
        {"key": d["key"], **dep}
        for d in details
        for dep in d["deploys"]
        if dep["target"] == "production"
    ]
    log = root / "deploy.log"
    lines = log.read_text().splitlines() if log.exists() else []
    clone = root / "main-check"
    sample.git("clone", "--quiet", str(remote), str(clone), cwd=root)
    green = subprocess.run(sample.test_command(), shell=True, cwd=clone, capture_output=True)
    release = (root / "prod" / "RELEASE").read_text().strip() if (root / "prod").exists() else ""
    report: dict[str, Any] = {
        "name": "landing",
        "tasks": [
            {k: d[k] for k in ("key", "title", "stage", "status", "reason")} for d in details
        ],
        "red_candidates": red,
        "confirmed_in_order": order,
        "production": production,
        "production_runs": release,
        "production_deploys": [ln.split()[2] for ln in lines if ln.split()[1:2] == ["production"]],
        "main_tests_pass": green.returncode == 0,
    }
    report["problem"] = _problem(report)
    return report


def _problem(r: dict[str, Any]) -> str:
    not_done = [t["key"] for t in r["tasks"] if t["status"] != "done"]
    if not_done:
        return f"{', '.join(not_done)} did not finish: {r['tasks']}"
    if len(r["red_candidates"]) != 1:
        return f"expected one red merge candidate, found {len(r['red_candidates'])}"
    if not r["main_tests_pass"]:
        return "main's tests fail after both merges"
    outcomes = sorted(p["outcome"] for p in r["production"])
    if outcomes != ["deployed", "superseded"]:
        return f"production deploys were {outcomes}, not one deployed and one superseded"
    newer = next(p for p in r["production"] if p["outcome"] == "deployed")
    if r["production_runs"] != newer["release"] or r["production_deploys"] != [newer["release"]]:
        return f"production runs {r['production_runs'][:12]}, not the newer {newer['release'][:12]}"
    return ""


def render(report: dict[str, Any], console: Console) -> None:
    for t in report["tasks"]:
        console.print(f"{t['key']} {t['title']}: {t['status']}")
    for red in report["red_candidates"]:
        console.print(f"red merge candidate of {red['key']}, sent back: ...{red['reason'][-300:]}")
    for p in report["production"]:
        note = f" (superseded by {p['superseded_by'][:12]})" if p["superseded_by"] else ""
        console.print(f"production: {p['key']} release {p['release'][:12]} {p['outcome']}{note}")
    console.print(
        f"production runs {report['production_runs'][:12]}; main's tests pass:"
        f" {report['main_tests_pass']}"
    )
