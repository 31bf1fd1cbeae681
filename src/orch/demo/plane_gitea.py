"""`orch demo --scenario plane-gitea`: the demo ticket from a Plane work item to a merged Gitea
pull request, against orch's own fakes of Plane, Gitea and Telegram over real HTTP on 127.0.0.1.

A person files the work item and moves it to "To Analyse"; Plane's webhook reaches orch's real
web app (served by uvicorn), which starts the task. The plan is approved with a Telegram button,
production confirmed by moving the item to "Confirm Deploy", and the change lands through the
pull request's merge. The summary shows what each service saw, and the demo fails unless the
invariants hold: one merge, every commit status green, the item done, no request the providers'
specifications refuse."""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.table import Table

from orch.adapters.trackers import plain_text
from orch.bootstrap import App, build
from orch.config import IsolatedSettings
from orch.demo import sample
from orch.domain.errors import OrchError
from orch.domain.states import EffectKind, EffectState, EventKind, TaskStatus, is_terminal
from orch.fakes.gitea import GiteaFake, rev
from orch.fakes.gitea import git as gitea_git
from orch.fakes.plane import PlaneFake
from orch.fakes.telegram import TelegramFake, user
from orch.services.views import task_detail

NAME = "plane-gitea"
TITLE = "Add a slugify helper with tests"
# the project's states: those a person moves the item to, and those orch reports in
# fmt: off
STATES = (
    ("Backlog", "backlog"), ("To Analyse", "unstarted"), ("Analysing", "started"),
    ("In Progress", "started"), ("Needs Review", "started"), ("Approved", "started"),
    ("Rejected", "started"), ("Confirm Deploy", "started"), ("Blocked", "started"),
    ("Done", "completed"), ("STOP", "cancelled"), ("Cancelled", "cancelled"),
)
REPORT = {
    "analysis": "Analysing", "development": "In Progress", "waiting": "Needs Review",
    "needs_operator": "Blocked", "done": "Done", "cancelled": "Cancelled",
}
# fmt: on
CHAT = -1001234567890
PERSON = user(4242, "Ada", "ada")
ACTOR = f"telegram:{PERSON['id']}:{PERSON['username']}"
# the variables the settings name for each credential
ENV = {
    "plane": "PLANE_API_KEY",
    "plane_hook": "PLANE_WEBHOOK_SECRET",
    "gitea": "GITEA_TOKEN",
    "telegram": "TELEGRAM_BOT_TOKEN",
}
WORKSPACE = "demo"
# long beside the webhook, which starts the task; the reconciler still runs its rounds
POLL_INTERVAL_S = 5.0


@dataclass
class Outside:
    """The fakes of the services outside orch, as the demo set them up."""

    gitea: GiteaFake
    plane: PlaneFake
    telegram: TelegramFake
    remote: str  # the sample repository's clone URL on Gitea
    project: str  # the Plane project's id
    initial: str  # the default branch's head before the task


def start_outside(root: Path, environ: Mapping[str, str], stack: ExitStack) -> Outside:
    """Gitea with the sample repository, Plane with the project, Telegram with the chat; each
    stopped when `stack` closes."""
    gitea = stack.enter_context(GiteaFake(root / "gitea", environ[ENV["gitea"]]))
    remote = gitea.create_repo("sample", sample.FILES)
    plane = stack.enter_context(PlaneFake(environ[ENV["plane"]], workspace=WORKSPACE))
    project = plane.add_project("Sample", "DEMO", STATES)
    telegram = stack.enter_context(TelegramFake(environ[ENV["telegram"]]))
    telegram.add_chat(CHAT)
    initial = rev(gitea.bare("sample"), "refs/heads/main") or ""
    return Outside(gitea, plane, telegram, remote, project, initial)


def run_plane_gitea(root: Path, console: Console, timeout_s: float) -> dict[str, Any]:
    """Drive the ticket to done; the report says what happened and `problem` what went wrong,
    if anything did."""
    started = time.monotonic()
    (root / "playbook.json").write_text(json.dumps(sample.playbook(), indent=2), "utf-8")
    environ = {name: secrets.token_hex(16) for name in ENV.values()}
    environ[ENV["telegram"]] = f"7000001:{environ[ENV['telegram']]}"
    with ExitStack() as stack:
        out = start_outside(root, environ, stack)
        console.print(
            f"Gitea (fake) at {out.gitea.url}: repository {out.remote}\n"
            f"Plane (fake) at {out.plane.url}: workspace {WORKSPACE}, project Sample (DEMO)\n"
            f"Telegram (fake) at {out.telegram.url}: chat {CHAT}, user {ACTOR}"
        )
        app = build(demo_settings(root, out), environ=environ)
        stack.callback(_close, app)
        url = stack.enter_context(serving(app))
        console.print(f"orch serving on {url}; Plane's webhook goes to {url}/webhooks/plane")
        out.plane.subscribe(f"{url}/webhooks/plane", environ[ENV["plane_hook"]])
        app.dispatcher.start()
        app.start_listening()
        stack.callback(_stop_listening, app, out.telegram)
        drive = Drive(app, out, console)
        drive.run(timeout_s)
        report = _report(app, drive, out, root)
    report["elapsed_s"] = round(time.monotonic() - started, 2)
    report["problem"] = problem(report)
    report["notes"] = notes(report)
    return report


def demo_settings(root: Path, out: Outside) -> IsolatedSettings:
    """The happy scenario's repository and agent, on Gitea, with Plane and Telegram."""
    deploy = {
        t: {
            "command": sample.deploy_command(root, t),
            "check": sample.deploy_command(root, t, check=True),
        }
        for t in ("staging", "production")
    }
    repo: dict[str, Any] = {"name": "sample", "remote": out.remote, "key_prefix": "DEMO"}
    repo |= {"test_command": sample.test_command(), "deploy": deploy}
    project = {"id": out.project, "repo": "sample", "report": REPORT}
    tracker: dict[str, Any] = {"kind": "plane", "url": out.plane.url, "workspace": WORKSPACE}
    tracker |= {"token_env": ENV["plane"], "webhook_secret_env": ENV["plane_hook"]}
    tracker |= {"poll_interval_s": POLL_INTERVAL_S, "projects": [project]}
    forge = {"kind": "gitea", "url": out.gitea.url, "token_env": ENV["gitea"]}
    telegram: dict[str, Any] = {"kind": "telegram", "api_url": out.telegram.url}
    telegram |= {"token_env": ENV["telegram"], "chats": [CHAT], "users": [PERSON["id"]]}
    worker = {"slots": 2, "heartbeat_s": 5, "poll_interval_s": 0.5, "backoff_base_s": 0.2}
    return IsolatedSettings.model_validate(
        {
            "data_dir": root / ".orch",
            "store": {"url": f"sqlite:///{root / 'orch.db'}"},
            "workspace_root": root / "workspaces",
            "logs_dir": root / "logs",
            "repos": [repo],
            "agents": {"default": {"kind": "scripted", "playbook": root / "playbook.json"}},
            "worker": worker | {"kill_grace_s": 2},
            "tracker": tracker,
            "forge": forge | {"merge_style": "fast-forward-only"},
            "notifiers": [{"kind": "log"}, telegram | {"updates": "poll"}],
        }
    )


# -- orch's web app, as `orch serve` runs it ---------------------------------------------------


class _Server(uvicorn.Server):
    """Ends the dashboard's live streams as it shuts down, as `orch serve` does."""

    def __init__(self, config: uvicorn.Config, before_shutdown: Callable[[], object]) -> None:
        super().__init__(config)
        self._before_shutdown = before_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._before_shutdown()
        await super().shutdown(sockets)


@contextmanager
def serving(app: App, start_timeout_s: float = 10.0) -> Iterator[str]:
    """orch's FastAPI app served by uvicorn on 127.0.0.1, on a thread; its base URL."""
    from orch.web.app import create_app

    api = create_app(app)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(api, log_level="warning", access_log=False)
    server = _Server(config, api.state.close_streams)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="orch-api", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise OrchError("orch's web app did not start listening on 127.0.0.1")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _stop_listening(app: App, telegram: TelegramFake) -> None:
    """Stop orch's background loops; the Telegram bot waits in a long poll, which a message in
    the chat ends at once."""
    closer = threading.Thread(target=app.background.stop, name="orch-stop", daemon=True)
    closer.start()
    for _ in range(40):
        closer.join(timeout=0.25)
        if not closer.is_alive():
            return
        telegram.say(CHAT, PERSON, "thanks!")


def _close(app: App) -> None:
    app.close()


# -- what the people do --------------------------------------------------------------------------


class Drive:
    """Plays the people: files the item and moves it to start, presses Approve in Telegram at
    the plan, moves the item to confirm the deploy; shows the task's moves as they happen."""

    def __init__(self, app: App, out: Outside, console: Console) -> None:
        self.app = app
        self.out = out
        self.console = console
        self.item: dict[str, Any] = {}
        self.key = ""
        self.started_by = ""
        self.press: dict[str, Any] = {}
        self.confirmed = False
        self._shown = 0

    def run(self, timeout_s: float) -> None:
        plane, project = self.out.plane, self.out.project
        deadline = time.monotonic() + timeout_s
        self._wait(deadline, self._listening, "orch's reconciler never read the Plane project")
        self.item = plane.add_item(project, TITLE, f"<p>{sample.TICKET_BODY}</p>")
        ref = f"DEMO-{self.item['sequence_id']}"
        self.console.print(f"Plane: a person files [bold]{ref}[/] {TITLE!r} (in Backlog)")
        plane.person_moves(project, self.item["id"], "To Analyse")
        self.console.print(f"Plane: a person moves {ref} to [bold]To Analyse[/]")
        self._wait(deadline, self._linked, f"no task was started from the Plane item {ref}")
        self.console.print(f"  ▶ orch started [bold]{self.key}[/] ({self.started_by})")
        self._wait(deadline, self._step, "")

    def _wait(self, deadline: float, done: Callable[[], bool], why: str) -> None:
        while not done():
            if time.monotonic() > deadline:
                raise OrchError(f"the {NAME} demo timed out: {why or self._where()}")
            time.sleep(0.1)

    def _where(self) -> str:
        task = self.app.store.find_task(self.key)
        if task is None:
            return f"{self.key} is gone"
        where = f"{task.key} is at {task.stage} ({task.status}), not done"
        if task.waiting_for == "approve-plan" and not self.press:
            return f"{where}: no Telegram message asked to approve its plan"
        return f"{where}, waiting for {task.waiting_for}" if task.waiting_for else where

    def _listening(self) -> bool:
        """orch's reconciler has read the project once: it is up, and its next round is a
        poll interval away, so the webhook is what starts the task."""
        lists = (e for e in self.out.plane.exchanges if e.method == "GET")
        return any(e.path.endswith("/work-items/") for e in lists)

    def _linked(self) -> bool:
        link = self.app.store.item_link("plane", self.item["id"])
        task = self.app.store.find_task(link.key) if link is not None else None
        if task is None:
            return False
        self.key = task.key
        self.started_by = self.app.store.transitions(task.id)[0].actor
        return True

    def _step(self) -> bool:
        task = self.app.store.find_task(self.key)
        if task is None:
            raise OrchError(f"the task {self.key} is gone from the store")
        history = self.app.store.transitions(task.id)
        for tr in history[self._shown :]:
            if tr.version > 1:
                who = f" by {tr.actor}" if tr.actor.startswith(("telegram:", "plane:")) else ""
                self.console.print(f"  ▶ {tr.to_stage} ({tr.to_status}){who}: {tr.reason[:120]}")
        self._shown = len(history)
        if is_terminal(task.status) or task.status == TaskStatus.NEEDS_OPERATOR:
            return True
        if task.waiting_for == "approve-plan" and not self.press:
            self._approve_in_telegram()
        elif task.waiting_for == "confirm-deploy" and not self.confirmed:
            self.out.plane.person_moves(self.out.project, self.item["id"], "Confirm Deploy")
            self.confirmed = True
            self.console.print(f"Plane: a person moves {self.key} to [bold]Confirm Deploy[/]")
        return False

    def _approve_in_telegram(self) -> None:
        """Press Approve on the message that asks for it, once the bot has sent it."""
        asks = f"a|{self.key}|approve-plan@"
        for message in self.out.telegram.messages(CHAT):
            rows = message.get("reply_markup", {}).get("inline_keyboard", [])
            approve = [b for row in rows for b in row if b["text"] == "Approve"]
            if approve and approve[0]["callback_data"].startswith(asks):
                query = self.out.telegram.press(message, "Approve", PERSON)
                self.press = {"message_id": message["message_id"], "query": query["id"]}
                self.console.print(f"Telegram: {ACTOR} presses [bold]Approve[/]")
                return


# -- what each service saw ---------------------------------------------------------------------


def _report(app: App, drive: Drive, out: Outside, root: Path) -> dict[str, Any]:
    out.plane.settle()
    _settle_deliveries(app)
    task = app.store.find_task(drive.key)
    if task is None:
        raise OrchError(f"the task {drive.key} is gone from the store")
    detail = task_detail(app.store, task)
    pulls = _pull_requests(out.gitea, task.branch, out.initial)
    return {
        "name": NAME,
        "task": {k: detail[k] for k in ("key", "title", "stage", "status", "reason")},
        "started_by": drive.started_by,
        "deliveries": _deliveries(app, out.plane),
        "pull_request": pulls[0] if pulls else {},
        "pull_requests": [{k: p[k] for k in ("number", "state", "merged", "head")} for p in pulls],
        "merge": _merge(app, task.id, out.gitea),
        "plane": _plane(out, drive),
        "telegram": _telegram(out.telegram, drive),
        "decisions": [
            {"kind": e.kind, "checkpoint": e.payload.get("checkpoint"), "actor": e.actor}
            for e in app.store.events(task.id)
            if e.kind in (EventKind.APPROVE, EventKind.REJECT)
        ],
        "violations": {
            "gitea": list(out.gitea.violations),
            "plane": list(out.plane.violations),
            "telegram": list(out.telegram.violations),
        },
        "paths": {
            "demo": str(root),
            "store": app.store.display_url,
            "gitea": str(out.gitea.root),
            "workspaces": str(app.settings.workspace),
            "logs": str(app.settings.logs),
            "deploy_log": str(root / "deploy.log"),
        },
    }


def _settle_deliveries(app: App, timeout_s: float = 10.0) -> None:
    """Every stored delivery worked (the tracker's loop works them as they arrive)."""
    deadline = time.monotonic() + timeout_s
    while app.store.pending_deliveries("plane") and time.monotonic() < deadline:
        time.sleep(0.05)


def _deliveries(app: App, plane: PlaneFake) -> list[dict[str, Any]]:
    answered = {d.headers.get("X-Plane-Delivery"): d.status for d in plane.deliveries}
    shown = []
    for d in app.store.deliveries("plane"):
        payload = json.loads(d.body)
        activity = payload.get("activity") or {}
        shown.append(
            {
                "id": d.delivery,
                "event": payload.get("event"),
                "action": payload.get("action"),
                "field": activity.get("field"),
                "http_status": answered.get(d.delivery, 0),
                "outcome": d.outcome,
            }
        )
    return shown


def _pull_requests(gitea: GiteaFake, branch: str, initial: str) -> list[dict[str, Any]]:
    """The pull requests of the task's branch, merged first, read from Gitea's API as a person
    would: with the statuses on its head, and the latest status of each context on the commits
    it brought (since `initial`, the default branch's head before the task)."""
    auth = {"Authorization": f"token {gitea.token}"}
    base = f"{gitea.url}/api/v1/repos/{gitea.owner}/sample"
    found = []
    with httpx.Client(base_url=base, headers=auth) as api:
        main = _ok(api.get("/branches/main"))["commit"]["id"]
        for pr in _ok(api.get("/pulls", params={"state": "all"})):
            if pr["head"]["ref"] != branch:
                continue
            head = pr["head"]["sha"]
            statuses: dict[str, str] = {}
            for commit in _commits(gitea, initial, head):
                for s in reversed(_ok(api.get(f"/commits/{commit}/statuses"))):
                    statuses[s["context"]] = s["status"]  # oldest first: the latest stays
            on_head = _ok(api.get(f"/commits/{head}/status"))["statuses"]
            found.append(
                {
                    "number": pr["number"],
                    "url": pr["html_url"],
                    "title": pr["title"],
                    "state": pr["state"],
                    "merged": pr["merged"],
                    "head": pr["head"]["sha"],
                    "merge_commit": pr["merge_commit_sha"],
                    "statuses": statuses,
                    "head_statuses": {s["context"]: s["status"] for s in on_head},
                    "default_branch_head": main,
                }
            )
    return sorted(found, key=lambda p: (not p["merged"], p["number"]))


def _ok(answer: httpx.Response) -> Any:
    answer.raise_for_status()
    return answer.json()


def _commits(gitea: GiteaFake, base: str, head: str) -> list[str]:
    """The commits a pull request brought, oldest first."""
    listed = gitea_git(gitea.bare("sample"), "rev-list", "--reverse", f"{base}..{head}")
    return listed.split()


def _merge(app: App, task_id: int, gitea: GiteaFake) -> dict[str, Any]:
    effects = [e for e in app.store.effects(task_id) if e.kind == EffectKind.MERGE]
    merged = [e for e in effects if e.state == EffectState.SUCCEEDED]
    asked = [e.status for e in gitea.exchanges if e.method == "POST" and e.path.endswith("/merge")]
    return {
        "effects": [{"state": e.state.value, "result": e.result} for e in effects],
        "succeeded": len(merged),
        "merge_sha": str(merged[-1].result.get("merge_sha", "")) if merged else "",
        "merge_requests": asked,  # the HTTP status Gitea answered each merge request with
    }


def _plane(out: Outside, drive: Drive) -> dict[str, Any]:
    plane = out.plane
    comments = plane.comments_of(out.project, drive.item["id"])
    return {
        "item": drive.key,
        "state": plane.state_of(out.project, drive.item["id"]),
        "done_state": REPORT["done"],
        "comments": [
            {"external_id": c["external_id"], "text": _lines(plain_text(c["comment_html"]))[0]}
            for c in comments
            if c["created_by"] == plane.me["id"]
        ],
    }


def _telegram(telegram: TelegramFake, drive: Drive) -> dict[str, Any]:
    messages = []
    for m in telegram.messages(CHAT):
        rows = m.get("reply_markup", {}).get("inline_keyboard", [])
        lines = [*_lines(str(m["text"])), ""]
        buttons = [b["text"] for row in rows for b in row]
        messages.append({"text": lines[0], "detail": lines[1], "buttons": buttons})
    query = drive.press.get("query")
    answers = [a for a in telegram.answers if a["callback_query_id"] == query]
    return {
        "chat": CHAT,
        "user": ACTOR,
        "messages": messages,
        "press": {"button": "Approve", "answer": answers[0].get("text") if answers else None},
    }


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()] or [""]


def problem(r: Mapping[str, Any]) -> str:
    """The one-line reason the demo failed, or "" when every invariant holds."""
    task, pull, merge = r["task"], r["pull_request"], r["merge"]
    if task["status"] != "done":
        return f"{task['key']} ended {task['status']} at {task['stage']}: {task['reason']}"
    if merge["succeeded"] != 1 or merge["merge_requests"].count(200) != 1:
        return (
            f"expected one merge, found {merge['succeeded']} (Gitea answered the merge"
            f" requests {merge['merge_requests']})"
        )
    if not pull.get("merged"):
        return f"no pull request of {task['key']} is merged: {r['pull_requests']}"
    heads = {pull["merge_commit"], pull["default_branch_head"]}
    if heads != {merge["merge_sha"]}:
        return (
            f"main is at {pull['default_branch_head']}, the pull request's merge commit is"
            f" {pull['merge_commit']} and orch's merge {merge['merge_sha']}"
        )
    failing = {k: v for k, v in pull["statuses"].items() if v != "success"}
    if not pull["statuses"] or failing:
        return f"not every commit status is a success: {failing or 'none was posted'}"
    if r["plane"]["state"] != r["plane"]["done_state"]:
        return f"the Plane item is in {r['plane']['state']!r}, not {r['plane']['done_state']!r}"
    approvals = [d for d in r["decisions"] if d["checkpoint"] == "approve-plan"]
    if [d["actor"] for d in approvals] != [ACTOR]:
        return f"the plan's approval was not recorded as {ACTOR}'s: {approvals}"
    refused = {k: v for k, v in r["violations"].items() if v}
    if refused:
        return f"requests the providers' specifications refuse: {refused}"
    return ""


def notes(r: Mapping[str, Any]) -> list[str]:
    """What a person would notice that the invariants do not cover."""
    found = []
    pull = r["pull_request"]
    for other in r["pull_requests"][1:]:
        found.append(
            f"pull request #{other['number']} was opened for the task's branch besides"
            f" #{pull['number']}; it is {other['state']}, merged: {other['merged']}"
        )
    if pull and not pull["head_statuses"]:
        found.append(
            f"the head of #{pull['number']} ({pull['head'][:12]}), the commit that landed,"
            " carries no commit status: Gitea shows the pull request without checks"
        )
    return found


def render(r: Mapping[str, Any], console: Console) -> None:
    task = r["task"]
    console.print(
        f"[bold]{task['key']}[/] {task['title']}: {task['status']} (started by {r['started_by']})"
    )
    table = Table(title="Plane's webhook deliveries to orch", title_justify="left")
    for col in ("delivery", "event", "field", "HTTP", "what orch did"):
        table.add_column(col)
    for d in r["deliveries"]:
        field = d["field"] or d["action"]
        table.add_row(d["id"][:8], d["event"], field, str(d["http_status"]), d["outcome"])
    console.print(table)
    pull = r["pull_request"]
    if pull:
        console.print(
            f"Gitea pull request #{pull['number']} {pull['url']}: {pull['state']}, merged:"
            f" {pull['merged']}, merge commit {pull['merge_commit']}"
        )
        for context, state in pull["statuses"].items():
            console.print(f"  {'✔' if state == 'success' else '✘'} {context}: {state}")
        console.print(f"  main is at {pull['default_branch_head']}")
    merge = r["merge"]
    console.print(
        f"merges: {merge['succeeded']} recorded by orch; Gitea answered the merge requests"
        f" {merge['merge_requests']}"
    )
    plane = r["plane"]
    console.print(f"Plane item {plane['item']} is in {plane['state']!r}; orch's comments on it:")
    for c in plane["comments"]:
        console.print(f"  · {c['text']}")
    tg = r["telegram"]
    console.print(f"Telegram chat {tg['chat']}, the bot's messages:")
    for m in tg["messages"]:
        buttons = f"  [{' | '.join(m['buttons'])}]" if m["buttons"] else ""
        said = ": ".join(part for part in (m["text"], m["detail"]) if part)
        console.print(f"  · {said}{buttons}")
    console.print(
        f"{tg['user']} pressed {tg['press']['button']}; the bot answered: {tg['press']['answer']}"
    )
    for d in r["decisions"]:
        console.print(f"{d['checkpoint']}: {d['kind']} by {d['actor']}")
    refused = {k: v for k, v in r["violations"].items() if v}
    console.print(
        f"requests the fakes found against the providers' specifications: {refused or 'none'}"
    )
    for note in r.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")
    console.print("where everything lives:")
    for name, path in r["paths"].items():
        console.print(f"  {name:<11} {path}")
