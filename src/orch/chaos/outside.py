"""`orch chaos --world plane-gitea`: the chaos run with the world outside orch in it.

Tickets are Plane work items a person moves to the start state, and orch hears of them through
Plane's webhooks and its reconciler; the person approves, confirms and STOPs by moving the items
through Plane's states; every change lands through Gitea's pull requests. Plane and Gitea are
the fakes orch ships (orch.fakes), on 127.0.0.1, and while the faults last they answer a share of
orch's requests with a fault (orch.chaos.hazards) and the webhook deliveries are duplicated,
reordered and dropped (orch.chaos.deliveries); once everything has settled, deliveries are sent
again (up to 1000 of them), as replays much later. The kills and pauses of the default run go
on meanwhile. The checks of I1-I10 run as in the default run, on Gitea's repositories, and those
of pull requests, starts and answers beside them (orch.chaos.outside_checks).
"""

from __future__ import annotations

import json
import random
import re
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import yaml

from orch.chaos import checks
from orch.chaos import outside_checks as oc
from orch.chaos.checks import Remote, git
from orch.chaos.deliveries import ChaosPlane, Conductor
from orch.chaos.harness import Harness, settled
from orch.chaos.hazards import FORGE_TARGETS, TRACKER_TARGETS, RandomFaults
from orch.chaos.lab import Lab, RepoLab, prepare_dir, repo_name, repo_settings
from orch.chaos.person import Api
from orch.chaos.plane_person import EPISODES, Item, PlanePerson, States
from orch.chaos.processes import orch_argv, orch_env
from orch.chaos.run import ChaosOptions, Say
from orch.demo import sample
from orch.domain.errors import OrchError
from orch.fakes.gitea import GiteaFake

TIMEOUT_S = 2.0  # orch's timeout for Plane and Gitea: a slow answer takes longer
POLL_S = 2.0  # the reconciler's round
OWNER = "orch"  # the Gitea user owning the repositories
LATE_S = 0.5  # how near a slow write's expected landing a change must be to be that write
# the project's states (group as Plane has them), and where orch reports a task's moves
PLANE_STATES = (
    ("Backlog", "backlog"),
    ("To Analyse", "unstarted"),
    ("Analysing", "started"),
    ("In Progress", "started"),
    ("Needs Review", "started"),
    ("Approved", "started"),
    ("Rejected", "started"),
    ("Confirm Deploy", "started"),
    ("Done", "completed"),
    ("Blocked", "started"),
    ("Cancelled", "cancelled"),
    ("STOP", "cancelled"),
)
REPORT = {
    "analysis": "Analysing",
    "development": "In Progress",
    "waiting": "Needs Review",
    "done": "Done",
    "cancelled": "Cancelled",
    "needs_operator": "Blocked",
}
ENV_NAMES = {"plane": "PLANE_API_KEY", "hook": "PLANE_WEBHOOK_SECRET", "gitea": "GITEA_TOKEN"}


def free_port() -> int:
    """A port free now on 127.0.0.1: serve keeps it over its restarts, as Plane's webhook
    points at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OutsideHarness(Harness):
    def __init__(self, options: ChaosOptions, say: Say) -> None:
        super().__init__(options, say)
        self.rng_file = random.Random(f"{self.seed}:file")
        self.states = States()
        # credentials made for this run, given to orch through its environment only
        self.secrets = {name: secrets.token_urlsafe(18) for name in ENV_NAMES}
        self.plane: ChaosPlane | None = None
        self.gitea: GiteaFake | None = None
        self.faults: dict[str, RandomFaults] = {}
        self.conductor: Conductor | None = None
        self.plane_person: PlanePerson | None = None
        self.projects: dict[str, str] = {}  # repository -> its Plane project's id
        self.items: dict[str, Item] = {}
        self.port = 0
        self.offset = 0.0  # the store's clock less this process's
        self._found: list[checks.Finding] = []

    # -- the world -------------------------------------------------------------------------------

    def _build_lab(self) -> Lab:
        o = self.o
        root = prepare_dir(o.directory)
        url = o.store_url or f"sqlite:///{root / 'orch.db'}"
        plane = self.plane = ChaosPlane(self.secrets["plane"])
        gitea = self.gitea = GiteaFake(root / "gitea", self.secrets["gitea"], owner=OWNER)
        for fake in (plane, gitea):
            fake.start()
        slow = TIMEOUT_S + 1.0
        for name, fake, targets in (
            ("tracker", plane, TRACKER_TARGETS),
            ("forge", gitea, FORGE_TARGETS),
        ):
            rng = random.Random(f"{self.seed}:faults:{name}")
            clock = self._store_clock
            faults = RandomFaults(targets, o.fault_rate, rng, slow, clock)
            self.faults[name] = fake.faults = faults
        self.port = free_port()
        plane.subscribe(f"http://127.0.0.1:{self.port}/webhooks/plane", self.secrets["hook"])
        repos, clones = [], {}
        for i in range(o.repos):
            name, prefix = repo_name(i)
            home = root / name
            home.mkdir(parents=True)
            clones[name] = gitea.create_repo(name, sample.FILES)
            bare = gitea.bare(name)
            initial = git(bare, "rev-parse", "refs/heads/main")
            remote = Remote(name, bare, "main", initial)
            repos.append(RepoLab(name, prefix, home, remote, home / "deploy.log", o.max_active))
            self.projects[name] = plane.add_project(name, prefix, PLANE_STATES)
        configs = {}
        for role in ("serve", "worker"):
            path = root / f"{role}.yaml"
            text = yaml.safe_dump(self._settings(root, url, role, repos, clones), sort_keys=False)
            path.write_text(text, encoding="utf-8")
            configs[role] = path
        return Lab(root, url, root / "logs", tuple(repos), configs)

    def _settings(
        self, root: Any, url: str, role: str, repos: list[RepoLab], clones: dict[str, str]
    ) -> dict[str, Any]:
        assert self.plane is not None and self.gitea is not None
        projects = [{"id": self.projects[r.name], "repo": r.name, "report": REPORT} for r in repos]
        return {
            "data_dir": str(root / role),
            "workspace_root": str(root / role / "workspaces"),
            "logs_dir": str(root / "logs"),
            "store": {"url": url},
            "api": {"host": "127.0.0.1", "port": 0},
            "repos": [{**repo_settings(r), "remote": clones[r.name]} for r in repos],
            "agents": {"default": {"kind": "scripted"}},
            "worker": self.o.tuning().as_settings(),
            "tracker": {
                "kind": "plane",
                "url": self.plane.url,
                "workspace": self.plane.slug,
                "token_env": ENV_NAMES["plane"],
                "webhook_secret_env": ENV_NAMES["hook"],
                "poll_interval_s": POLL_S,
                "timeout_s": TIMEOUT_S,
                "projects": projects,
            },
            "forge": {
                "kind": "gitea",
                "url": self.gitea.url,
                "token_env": ENV_NAMES["gitea"],
                "timeout_s": TIMEOUT_S,
            },
            "log_level": "INFO",
        }

    def _argv(self, role: str) -> list[str]:
        argv = orch_argv(role)
        if role == "serve":
            argv[argv.index("--port") + 1] = str(self.port)
        return argv

    def _env(self, role: str) -> dict[str, str]:
        assert self.lab is not None
        env = orch_env(self.lab.configs[role])
        env.update({ENV_NAMES[name]: value for name, value in self.secrets.items()})
        return env

    def _make_person(self, api: Api) -> PlanePerson:
        assert self.plane is not None and self.probe is not None
        self.offset = self.probe.store.now() - time.time()
        rng = random.Random(f"{self.seed}:webhooks")
        self.conductor = Conductor(self.plane, rng, self.o.webhook_share)
        self.conductor.start()
        self.plane_person = PlanePerson(
            api,
            self.plane,
            self.conductor,
            self.rng_person,
            states=self.states,
            stop_share=self.o.stop_share,
            webhook_share=self.o.webhook_share,
            clock=self._store_clock,
        )
        return self.plane_person

    def _store_clock(self) -> float:
        return time.time() + self.offset

    def _faults_on(self, on: bool) -> None:
        for faults in self.faults.values():
            faults.enabled = on
        if self.conductor is not None:
            self.conductor.active = on

    # -- the phases ------------------------------------------------------------------------------

    def _file_batch(self) -> None:
        assert self.lab is not None and self.plane is not None and self.plane_person is not None
        self.state.batches += 1
        for i in range(self.o.tickets):
            repo = self.lab.repos[i % len(self.lab.repos)]
            project = self.projects[repo.name]
            title = f"chaos ticket {self.state.batches}.{i + 1}"
            made = self.plane.add_item(project, title, "<p>Filed by orch chaos.</p>")
            item = Item(f"{repo.prefix}-{made['sequence_id']}", project, made["id"], repo.name)
            self.items[item.key] = item
            sure = EPISODES[i] if i < len(EPISODES) and self.o.webhook_share > 0 else ""
            self.plane_person.start_item(item, self.rng_file, sure)
        self.state.filed += self.o.tickets
        batch = self.state.batches
        self.say(f"moved {self.o.tickets} work items to {self.states.start} (batch {batch})")

    def _fault_phase(self) -> None:
        self._faults_on(True)
        try:
            super()._fault_phase()
        finally:
            self._faults_on(False)

    def _settled(self, statuses: Counter[str]) -> bool:
        """Every task settled, no delivery held back, and every item started has a task (or
        was STOPped)."""
        if not settled(statuses) or self.conductor is None or self.conductor.holding():
            return False
        assert self.probe is not None and self.plane_person is not None
        try:
            with_task = {t.key for t in self.probe.store.list_tasks(limit=10_000_000)}
        except OrchError:
            return False  # the store is busy: asked again on the next round
        return not self.plane_person.unstarted(with_task)

    def _settle_phase(self) -> None:
        """Settle; then send deliveries again, much later, and settle again."""
        self._faults_on(False)
        super()._settle_phase()
        assert self.conductor is not None and self.plane is not None and self.probe is not None
        self.say("sending webhook deliveries again, as replays much later")
        self.conductor.replay_all()
        self.plane.settle(120)
        deadline = time.monotonic() + 60
        while self._deliveries_pending() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2 * POLL_S)  # a reconciler round after the replays, too
        after_faults = self.state.settled_after_s
        self.state.last_fault_at = time.time()
        if self._await_settled():
            self.state.settled_after_s = after_faults  # the bound is measured from the faults

    def _deliveries_pending(self) -> bool:
        assert self.probe is not None
        try:
            return bool(self.probe.store.pending_deliveries("plane"))
        except OrchError:
            return True  # the store is busy: asked again

    # -- the verdict -----------------------------------------------------------------------------

    def _evidence(self, history: checks.History) -> oc.Evidence:
        assert self.plane is not None and self.gitea is not None and self.lab is not None
        assert self.plane_person is not None
        repos = [r.name for r in self.lab.repos]
        merges = []
        for ex in self.gitea.exchanges:
            found = oc.MERGE_CALL.search(ex.path)
            if ex.method == "POST" and found:
                merges.append((found.group(1), int(found.group(2)), ex.status))
        comments = {
            key: self.plane.comments_of(item.project, item.ref) for key, item in self.items.items()
        }
        return oc.Evidence(
            history=history,
            items=dict(self.items),
            moves=list(self.plane_person.moves),
            states=self.states,
            pulls={repo: self.gitea.pulls(repo) for repo in repos},
            merge_calls=merges,
            comments=comments,
            overwrites=self._overwrites(),
            violations={"plane": self.plane.violations, "gitea": self.gitea.violations},
        )

    def _overwrites(self) -> list[oc.Overwrite]:
        """orch's own moves of an item out of a state a person asks something with, from every
        change Plane made a delivery of (sent, or dropped)."""
        assert self.plane is not None
        asks = {self.states.stop, self.states.approve, self.states.confirm, self.states.reject}
        names = self.plane.state_names_by_id()
        keys = {item.ref: key for key, item in self.items.items()}
        slow = self.faults["tracker"]
        late = [
            (at + slow.slow_s, path) for at, method, path in list(slow.slow) if method == "PATCH"
        ]
        out, seen = [], set()
        for delivery in [*self.plane.deliveries, *self.plane.dropped]:
            try:
                payload = json.loads(delivery.body)
            except ValueError:
                continue
            data, activity = payload.get("data") or {}, payload.get("activity") or {}
            actor = (activity.get("actor") or {}).get("id")
            was = names.get(str(activity.get("old_value")), "")
            if actor != self.plane.me["id"] or activity.get("field") not in ("state", "state_id"):
                continue
            at = oc.stamp(str(data.get("updated_at") or ""))
            now = names.get(str(activity.get("new_value")), "")
            mark = (data.get("id"), at)
            if was in asks and at is not None and data.get("id") in keys and mark not in seen:
                seen.add(mark)
                at += self.offset
                ref = str(data["id"])
                stale = any(abs(at - done) < LATE_S and ref in path for done, path in late)
                out.append(oc.Overwrite(at, keys[ref], was, now, stale))
        return out

    def _more_findings(self, history: checks.History) -> list[checks.Finding]:
        evidence = self._evidence(history)
        self._found = [
            oc.check_pulls(evidence),
            oc.check_starts(evidence),
            oc.check_answers(evidence),
            oc.check_fakes(evidence.violations),
        ]
        return self._found

    def _more_figures(self, figures: dict[str, Any]) -> None:
        pulls, starts, answers, _ = (f.figures for f in self._found)
        figures["duplicates"] += (
            pulls["merged_twice"]
            + pulls["opened_twice"]
            + pulls["merges_recorded_twice"]
            + starts["started_twice"]
            + starts["relaunched"]
            + starts["comment_keys_twice"]
        )
        figures["lost"] += starts["lost_starts"] + answers["not_heard"]
        assert self.conductor is not None
        figures["faults_injected"] = sum(f.total() for f in self.faults.values())
        counts = self.conductor.tally()
        figures["webhook_duplicates"] = counts.duplicates + counts.renamed
        figures["webhooks_reordered"] = counts.reversed + counts.late + counts.stale_starts
        figures["webhooks_replayed"] = counts.replayed + counts.replayed_renamed

    def _outside_report(self) -> dict[str, Any] | None:
        assert self.conductor is not None and self.plane_person is not None
        assert self.probe is not None
        counts = self.conductor.tally()
        outcomes: Counter[str] = Counter()
        try:
            for d in self.probe.store.deliveries("plane", limit=10_000_000):
                outcomes[_outcome_kind(d.outcome)] += 1
        except Exception as exc:  # the report goes on without them
            outcomes[f"unreadable: {type(exc).__name__}"] += 1
        return {
            "fault_rate": self.o.fault_rate,
            "faults": {
                side: {
                    "injected": f.total(),
                    "by_kind": f.by_kind(),
                    "by_target": f.by_target(),
                    "requests": dict(f.requests),
                }
                for side, f in self.faults.items()
            },
            "webhooks": {
                **{k: v for k, v in asdict(counts).items() if k != "answered"},
                "answered": {str(k): v for k, v in sorted(counts.answered.items())},
                "worked_by_orch": dict(sorted(outcomes.items())),
            },
            "person": asdict(self.plane_person.tally),
            "items": len(self.items),
            # every move the person made, in the store's clock: what starts and answers are
            # checked on
            "moves": [asdict(m) for m in self.plane_person.moves],
        }

    def _more_teardown(self) -> list[Callable[[], object]]:
        steps: list[Callable[[], object]] = []
        if self.conductor is not None:
            steps.append(self.conductor.halt)
        if self.plane_person is not None:
            steps.append(self.plane_person.halt)
        if self.plane is not None:
            steps.append(self.plane.stop)
        if self.gitea is not None:
            steps.append(self.gitea.stop)
        return steps


def _outcome_kind(outcome: str) -> str:
    """What orch did with a delivery, without the item's details (keys, numbers, stamps)."""
    if not outcome:
        return "not worked"
    words = re.sub(r"\(task \d+\)", "", outcome).split()
    return " ".join(w for w in words if not any(c.isdigit() for c in w))[:70]
