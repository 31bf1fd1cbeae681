"""`orch demo`: one ticket through the whole default pipeline, offline, on a sample project."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orch.bootstrap import App, build
from orch.config import IsolatedSettings
from orch.demo import agents as real_agents
from orch.demo import landing, plane_gitea, sample
from orch.demo.crash import CRASH_POINT, WorkerProcess, merges_of
from orch.domain.errors import OrchError
from orch.domain.states import EffectKind, Stage, TaskStatus, is_terminal
from orch.services.views import task_detail

ACTOR = "demo (auto-approve)"


@dataclass
class DemoResult:
    ok: bool
    reason: str
    summary: dict[str, Any] = field(default_factory=dict)


def prepare(root: Path | None) -> Path:
    if root is None:
        return Path(tempfile.mkdtemp(prefix="orch-demo-"))
    root = root.expanduser().resolve()
    if root.exists() and any(root.iterdir()):
        raise OrchError(f"demo directory {root} is not empty; pass a new or empty --dir")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OrchError(f"cannot create demo directory {root}: {exc.strerror or exc}") from exc
    return root


def demo_settings(
    root: Path,
    remote: Path,
    playbook: Path,
    agent: dict[str, Any] | None = None,
    more_agents: dict[str, Any] | None = None,
    max_active: int = 1,
) -> Any:
    target = {
        t: {
            "command": sample.deploy_command(root, t),
            "check": sample.deploy_command(root, t, check=True),
        }
        for t in ("staging", "production")
    }
    return IsolatedSettings(
        data_dir=root / ".orch",
        store={"url": f"sqlite:///{root / 'orch.db'}"},
        workspace_root=root / "workspaces",
        logs_dir=root / "logs",
        repos=[
            {
                "name": "sample",
                "remote": str(remote),
                "key_prefix": "DEMO",
                "test_command": sample.test_command(),
                "deploy": target,
                "max_active": max_active,
            }
        ],
        agents={
            "default": agent or {"kind": "scripted", "playbook": str(playbook)},
            **(more_agents or {}),
        },
        worker={
            "slots": 2,
            "heartbeat_s": 5,
            "poll_interval_s": 0.5,
            "backoff_base_s": 0.2,
            "kill_grace_s": 2,
        },
    )


SCENARIOS = ("happy", "stop", "reject", "crash", "landing", plane_gitea.NAME)
REJECTION = "Also say how accents are handled: 'Crème brûlée' must become 'creme-brulee'."


class Scenario:
    """What the demo does as the task goes: approve every checkpoint, or press STOP while the
    development agent runs, or reject the plan once with a comment, or kill the worker in the
    middle of the merge and start it again."""

    def __init__(self, name: str, console: Console) -> None:
        if name not in SCENARIOS:
            raise OrchError(f"unknown scenario {name!r} (choose from {', '.join(SCENARIOS)})")
        self.name = name
        self.console = console
        self.stopped_pid: int | None = None
        self.rejected = False
        self.worker: WorkerProcess | None = None
        self.crash: dict[str, Any] = {}
        # the waits answered, by the task's version: a worker in another process may not have
        # read the answer yet when the task is looked at again, and it is given once
        self.answered: set[tuple[int, int]] = set()

    def playbook(self) -> dict[str, Any]:
        book = sample.playbook()
        if self.name == "stop":
            # an agent that hangs and ignores SIGTERM: only the supervisor's KILL ends it
            book["stages"]["development"] = {"mode": "stubborn"}
        return book

    def start_workers(self, app: App, root: Path) -> None:
        if self.name != "crash":
            app.dispatcher.start()
            return
        self.worker = WorkerProcess(app.settings, root)
        pid = self.worker.start(CRASH_POINT)
        self.console.print(
            f"orch worker started as a separate process (pid {pid}), armed to die with SIGKILL"
            f" in the middle of the merge (ORCH_CRASHPOINT={CRASH_POINT})"
        )

    def stop_workers(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def _watch_worker(self, app: App, task: Any) -> None:
        assert self.worker is not None
        code = self.worker.exited()
        if code is None:
            return
        if self.crash:
            raise OrchError(f"the restarted orch worker exited {code}; see {self.worker.starts}")
        merge = [e for e in app.store.effects(task.id) if e.kind == EffectKind.MERGE]
        self.crash = {
            "crash_point": CRASH_POINT,
            "killed_pid": self.worker.starts[-1]["pid"],
            "exit": code,
            "effect_after_crash": merge[-1].state.value if merge else None,
        }
        self.console.print(
            f"  [red]✖ orch worker (pid {self.crash['killed_pid']}) killed with"
            f" {_signal_name(code)}[/] in the middle of the merge; the merge's effect is"
            f" {self.crash['effect_after_crash']}, and the remote may or may not have it"
        )
        pid = self.worker.start(None)
        self.crash["restarted_pid"] = pid
        self.console.print(
            f"  [cyan]↻ orch worker restarted[/] (pid {pid}): it voids the dead worker's lease"
            " and asks the forge about the merge before doing anything again"
        )

    def step(self, app: App, task: Any) -> None:
        if self.name == "crash":
            self._watch_worker(app, task)
        if self.name == "stop" and self.stopped_pid is None and task.stage == Stage.DEVELOPMENT:
            runs = [r for r in app.store.runs(task.id) if r.stage == Stage.DEVELOPMENT]
            if runs and runs[-1].pid:
                self.stopped_pid = runs[-1].pid
                app.intake.stop(task.key, "demo", "stopped by the demo while development ran")
                self.console.print(
                    f"  [red]■ STOP[/] pressed while the development agent (pid"
                    f" {self.stopped_pid}) is running; it ignores SIGTERM"
                )
            return
        if task.status != TaskStatus.WAITING or not task.waiting_for:
            return
        if (task.id, task.version) in self.answered:
            return
        self.answered.add((task.id, task.version))
        if self.name == "reject" and not self.rejected and task.waiting_for == "approve-plan":
            if app.intake.decide(task.key, False, ACTOR, REJECTION):
                self.rejected = True
                self.console.print(
                    f"  [red]✘ checkpoint {task.waiting_for}[/]: rejected by the demo: {REJECTION}"
                )
            return
        if app.intake.decide(task.key, True, ACTOR, "approved by the demo"):
            self.console.print(
                f"  [yellow]⏸  checkpoint {task.waiting_for}[/]: approved automatically by the demo"
            )


def run(
    root: Path | None,
    console: Console,
    scenario: str = "happy",
    timeout_s: float = 120.0,
    agent: str = "scripted",
) -> DemoResult:
    started = time.monotonic()
    plan = Scenario(scenario, console)
    real_agents.check_name(agent)
    if scenario in ("landing", plane_gitea.NAME) and agent != "scripted":
        raise OrchError(f"the {scenario} scenario runs with the scripted agent only")
    if agent != "scripted":
        real_agents.find(agent, os.environ)  # a missing CLI is said before anything is made
    root = prepare(root)
    console.print(f"[bold]orch demo[/] ({scenario}, agent {agent}) in {root}")
    if scenario == plane_gitea.NAME:
        report = plane_gitea.run_plane_gitea(root, console, timeout_s)
        summary = {"scenario": report, "agent": agent, "elapsed_s": report["elapsed_s"]}
        return DemoResult(not report["problem"], report["problem"] or "done", summary)
    real = real_agents.start(agent, root, os.environ) if agent != "scripted" else None
    try:
        return _run(root, console, plan, started, timeout_s, real)
    finally:
        if real is not None:
            real.close()


def _run(
    root: Path,
    console: Console,
    plan: Scenario,
    started: float,
    timeout_s: float,
    real: real_agents.RealAgent | None,
) -> DemoResult:
    _, remote = sample.create(root)
    initial_main = _git(remote, "rev-parse", "refs/heads/main")
    playbook = root / "playbook.json"
    playbook.write_text(json.dumps(plan.playbook(), indent=2), encoding="utf-8")
    if plan.name == "landing":
        landing.prepare_sample(root / "sample")
        settings = demo_settings(
            root, remote, playbook, more_agents={"landing": landing.agent_settings()}, max_active=2
        )
        report = landing.run_landing(root, console, settings, timeout_s)
        summary = {
            "scenario": report,
            "agent": "scripted",
            "elapsed_s": round(time.monotonic() - started, 2),
            "paths": {"demo": str(root), "remote": str(remote), "store": str(root / "orch.db")},
        }
        return DemoResult(not report["problem"], report["problem"] or "done", summary)
    console.print(f"sample project: {root / 'sample'} (remote {remote})")
    if real is not None:
        console.print(
            f"agent: the real {real.name} CLI ({real.binary}) against orch's scripted model"
            f" server at {real.server.url}: offline and free"
        )
    app = build(demo_settings(root, remote, playbook, real.settings() if real else None))
    try:
        task = app.intake.file("sample", sample.TICKET_TITLE, sample.TICKET_BODY, actor="demo")
        console.print(f"filed [bold]{task.key}[/] on the built-in board: {task.title}")
        if real is not None:
            real.play(task.key, hang_in="development" if plan.name == "stop" else None)
        plan.start_workers(app, root)
        task = _watch(app, task.key, console, started, timeout_s, plan)
        summary = _summary(app, task.key, root, remote, time.monotonic() - started)
        summary["scenario"] = _scenario_report(app, task, plan, remote, initial_main)
        summary["agent"] = real.name if real else "scripted"
        check = _verify(summary, task, plan)
        return DemoResult(not check, check or "done", summary)
    finally:
        plan.stop_workers()
        app.close()


def _watch(
    app: App, key: str, console: Console, started: float, timeout_s: float, plan: Scenario
) -> Any:
    shown = 0
    task = app.intake.task(key)
    with Live(console=console, refresh_per_second=8, transient=True) as live:
        while True:
            task = app.intake.task(key)
            history = app.store.transitions(task.id)
            for tr in history[shown:]:
                _print_transition(app, task.id, tr, console)
            shown = len(history)
            plan.step(app, task)
            if is_terminal(task.status) or task.status == TaskStatus.NEEDS_OPERATOR:
                return task
            if time.monotonic() - started > timeout_s:
                raise OrchError(f"the demo did not finish within {timeout_s:g}s (at {task.stage})")
            live.update(_status_line(app, task, started))
            time.sleep(0.1)


def _scenario_report(
    app: App, task: Any, plan: Scenario, remote: Path, initial_main: str
) -> dict[str, Any]:
    report: dict[str, Any] = {"name": plan.name}
    if plan.name == "crash":
        merge = [e for e in app.store.effects(task.id) if e.kind == EffectKind.MERGE]
        head = merge[-1].precondition if merge else ""
        report.update(
            plan.crash,
            merge_effect=(
                {"state": merge[-1].state.value, "result": merge[-1].result} if merge else None
            ),
            merges_on_main=merges_of(remote, head) if head else 0,
            head=head,
        )
    if plan.name == "stop":
        report.update(
            agent_pid=plan.stopped_pid,
            agent_alive=_alive(plan.stopped_pid),
            branch_on_remote=bool(_git(remote, "ls-remote", ".", f"refs/heads/{task.branch}")),
            main_untouched=_git(remote, "rev-parse", "refs/heads/main") == initial_main,
        )
    if plan.name == "reject":
        prompts = sorted(
            Path(app.settings.logs).glob(f"{task.key}-{task.id}/v*-analysis-*.prompt.md"),
            key=lambda p: int(p.name.split("-")[0][1:]),
        )
        report.update(
            comment=REJECTION,
            analysis_rounds=len(prompts),
            comment_in_next_prompt=bool(prompts) and REJECTION in prompts[-1].read_text(),
        )
    return report


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _status_line(app: App, task: Any, started: float) -> Text:
    agent = ""
    for s in task.pipeline["stages"]:
        if s["stage"] == task.stage.value:
            agent = s["agent"] or "no agent"
    return Text.assemble(
        ("  ⟳ ", "cyan"),
        (f"{task.stage}", "bold"),
        f"  agent: {agent}  status: {task.status}  elapsed {time.monotonic() - started:5.1f}s",
    )


def _print_transition(app: App, task_id: int, tr: Any, console: Console) -> None:
    if tr.version == 1:
        console.print(f"  ▶ [bold]{tr.to_stage}[/] started")
        return
    if tr.from_status == TaskStatus.ACTIVE:
        # the gates the job that made this transition recorded
        for g in app.store.gate_records(task_id):
            if g.version == tr.version - 1:
                mark = "[green]✔[/]" if g.passed else "[red]✘[/]"
                console.print(f"    {mark} gate {g.gate}: {g.reason}")
    if tr.to_status == TaskStatus.WAITING:
        console.print(f"  [yellow]⏸[/]  {tr.reason}; waiting before [bold]{tr.to_stage}[/]")
    elif tr.to_status == TaskStatus.CANCELLED:
        console.print(f"  [red]■[/] [bold red]cancelled[/]: {tr.reason}")
    elif tr.to_status == TaskStatus.DONE:
        console.print(f"  [green]■[/] {tr.reason}: [bold green]done[/]")
    elif tr.from_stage == tr.to_stage:
        console.print(f"  ▶ [bold]{tr.to_stage}[/] resumes ({tr.reason})")
    else:
        console.print(f"  ▶ [bold]{tr.to_stage}[/] started ({tr.reason})")


def _git(remote: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=remote, capture_output=True, text=True, check=False
    ).stdout.strip()


def _summary(app: App, key: str, root: Path, remote: Path, elapsed: float) -> dict[str, Any]:
    task = app.intake.task(key)
    detail = task_detail(app.store, task)
    merges = [e for e in detail["effects"] if e["kind"] == "merge"]
    main_head = _git(remote, "rev-parse", "refs/heads/main")
    deploy_log = root / "deploy.log"
    return {
        "ok": task.status == TaskStatus.DONE,
        "task": detail,
        "elapsed_s": round(elapsed, 2),
        "merge": {
            "commit": merges[-1]["result"].get("merge_sha") if merges else None,
            "remote_main": main_head,
            "subject": _git(remote, "log", "-1", "--format=%s", "refs/heads/main"),
            "effects": merges,
        },
        "deploys": detail["deploys"],
        "deploy_log": deploy_log.read_text().splitlines() if deploy_log.exists() else [],
        "paths": {
            "demo": str(root),
            "remote": str(remote),
            "sample": str(root / "sample"),
            "store": app.store.display_url,
            "workspaces": str(app.settings.workspace),
            "logs": str(app.settings.logs),
            "staging": str(root / "staging"),
            "production": str(root / "prod"),
            "deploy_log": str(deploy_log),
        },
    }


def _verify(summary: dict[str, Any], task: Any, plan: Scenario) -> str:
    """The one-line reason the demo failed, or "" when it showed what it set out to."""
    report = summary["scenario"]
    if plan.name == "crash":
        if report.get("exit") != -signal.SIGKILL:
            return f"the worker was not killed at the merge (exit {report.get('exit')})"
        effect = report.get("merge_effect") or {}
        if effect.get("result", {}).get("resolved_by") != "forge":
            return f"the merge after the crash was not resolved against the forge: {effect}"
        if report["merges_on_main"] != 1:
            return f"{report['head'][:12]} was merged {report['merges_on_main']} times, not once"
    if plan.name == "stop":
        if task.status != TaskStatus.CANCELLED:
            return f"{task.key} was not cancelled: {task.status} ({task.status_reason})"
        if report["agent_alive"]:
            return f"the development agent (pid {report['agent_pid']}) is still alive"
        if report["branch_on_remote"]:
            return f"{task.branch} is still on the remote"
        if not report["main_untouched"]:
            return "main moved although the task was stopped"
        return ""
    if task.status != TaskStatus.DONE:
        reason = task.status_reason or f"task ended {task.status}"
        return f"{task.key} stopped at {task.stage} ({task.status}): {reason}"
    merge = summary["merge"]
    succeeded = [e for e in merge["effects"] if e["state"] == "SUCCEEDED"]
    if len(succeeded) != 1:
        return f"expected one merge, found {len(succeeded)}"
    if merge["commit"] != merge["remote_main"]:
        return f"the remote's main is at {merge['remote_main']}, not the merge {merge['commit']}"
    if plan.name == "reject" and not report["comment_in_next_prompt"]:
        return "the rejection's comment did not reach the next analysis prompt"
    if summary["agent"] != "scripted":
        unrecorded = [
            row["stage"]
            for row in summary["task"]["stages"]
            if row.get("agent") and not row["usage"]["tokens_in"]
        ]
        if unrecorded:
            return f"no usage was recorded for {', '.join(unrecorded)}"
    return ""


def render_summary(summary: dict[str, Any], console: Console) -> None:
    if summary.get("scenario", {}).get("name") == "landing":
        landing.render(summary["scenario"], console)
        console.print(f"finished in {summary['elapsed_s']:.1f}s")
        return
    if summary.get("scenario", {}).get("name") == plane_gitea.NAME:
        plane_gitea.render(summary["scenario"], console)
        console.print(f"finished in {summary['elapsed_s']:.1f}s")
        return
    task = summary["task"]
    table = Table(title=f"{task['key']}: {task['title']}", title_justify="left")
    table.add_column("stage")
    table.add_column("agent")
    table.add_column("working", justify="right")
    table.add_column("waiting", justify="right")
    table.add_column("tokens in/out/cache", justify="right")
    table.add_column("cost", justify="right")
    table.add_column("gates")
    gates: dict[str, dict[str, Any]] = {}
    for g in task["gates"]:
        gates.setdefault(g["stage"], {})[g["gate"]] = g
    for row in task["stages"]:
        if row["stage"] == "done":
            continue
        verdicts = ", ".join(
            f"{name} {'✔' if g['passed'] else '✘'}"
            for name, g in gates.get(row["stage"], {}).items()
        )
        u = row["usage"]
        spent = u["tokens_in"] or u["tokens_out"] or u["usd"]
        table.add_row(
            row["stage"],
            row["agent"] or "—",
            f"{row['active_s']:.2f}s",
            f"{row['waiting_s']:.2f}s" if row["waiting_s"] else "",
            "/".join(_k(u[f]) for f in ("tokens_in", "tokens_out", "cache_read")) if spent else "",
            f"${u['usd']:.4f}" if spent else "",
            verdicts or "—",
        )
    console.print(table)
    total = task["cost"]
    if total["tokens_in"] or total["usd"]:
        console.print(
            f"spent by the {summary.get('agent', 'scripted')} agent: ${total['usd']:.4f};"
            f" tokens in {total['tokens_in']}, out {total['tokens_out']}, cache read"
            f" {total['cache_read']}, cache write {total['cache_write']}"
        )
    merge = summary["merge"]
    if merge["commit"]:
        console.print(f"merge commit on main: [bold]{merge['commit']}[/] ({merge['subject']})")
    else:
        console.print(f"no merge: main is at {merge['remote_main']} ({merge['subject']})")
    for d in summary["deploys"]:
        note = f", superseded by {d['superseded_by'][:12]}" if d["superseded_by"] else ""
        if d["rolled_back_from"]:
            note = f", back from {d['rolled_back_from'][:12]}"
        console.print(f"deploy {d['target']}: {d['outcome']} release {d['release'][:12]}{note}")
    for line in summary["deploy_log"]:
        console.print(f"  deploy.log: {line}")
    report = summary.get("scenario", {})
    if report.get("name") == "stop":
        console.print(
            f"STOP: agent pid {report['agent_pid']} alive: {report['agent_alive']};"
            f" branch on the remote: {report['branch_on_remote']};"
            f" main untouched: {report['main_untouched']}"
        )
    if report.get("name") == "crash":
        effect = report.get("merge_effect") or {}
        console.print(
            f"crash: orch worker pid {report.get('killed_pid')} was killed with SIGKILL at"
            f" {report.get('crash_point')} and restarted as pid {report.get('restarted_pid')};"
            f" the merge's effect was {report.get('effect_after_crash')}, was marked UNKNOWN and"
            f" resolved against the forge ({effect.get('state')}, merge"
            f" {str(effect.get('result', {}).get('merge_sha', ''))[:12]});"
            f" merges of {report.get('head', '')[:12]} on main: {report.get('merges_on_main')}"
        )
    if report.get("name") == "reject":
        console.print(
            f"plan rejected once; analysis ran {report['analysis_rounds']} times; the comment"
            f" reached the next prompt: {report['comment_in_next_prompt']}"
        )
    console.print("where everything lives:")
    for name, path in summary["paths"].items():
        console.print(f"  {name:<11} {path}")
    console.print(f"finished in {summary['elapsed_s']:.1f}s")


def _k(n: int) -> str:
    return str(n) if n < 1000 else f"{n / 1000:.1f}k"


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name if code < 0 else f"exit {code}"
    except ValueError:
        return f"exit {code}"
