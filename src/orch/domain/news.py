"""What orch tells people about a task: one piece of news, structured, so that each channel (a
log line, a chat message with buttons, a tracker comment, a signed JSON post) can say it in its
own form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any


class NewsKind(StrEnum):
    STARTED = "started"
    STAGE_DONE = "stage_done"  # a stage was left: its verdicts, cost and links
    WAITING = "waiting"  # a checkpoint asks a person
    PARKED = "parked"  # needs an operator
    MERGED = "merged"
    DEPLOYED = "deployed"
    DONE = "done"
    CANCELLED = "cancelled"
    BUDGET = "budget"  # a budget was exhausted
    CIRCUIT = "circuit"  # an agent's circuit opened
    ALERT = "alert"  # anything else an operator must hear


@dataclass(frozen=True)
class Verdict:
    gate: str
    passed: bool
    reason: str = ""


@dataclass(frozen=True)
class News:
    kind: NewsKind
    text: str  # the whole news in one plain line, for a log or a plain channel
    task_key: str = ""
    title: str = ""
    repo: str = ""
    stage: str = ""  # where the task is after this news
    from_stage: str = ""  # STAGE_DONE: the stage it left
    status: str = ""  # the task's status after this news
    checkpoint: str = ""  # WAITING: the checkpoint a person answers
    question: str = ""  # WAITING: what the checkpoint asks
    wait: str = ""  # WAITING: which wait it is ("<task id>.<version>"), for answers to name
    reason: str = ""
    cost_usd: float = 0.0  # the task's, so far
    stage_cost_usd: float = 0.0  # STAGE_DONE: the stage's
    verdicts: tuple[Verdict, ...] = ()
    links: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (label, url)

    def as_dict(self) -> dict[str, Any]:
        """The news as JSON values, kept to be said again (`from_dict` reads it back)."""
        kept: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        kept["kind"] = self.kind.value
        kept["verdicts"] = [
            {"gate": v.gate, "passed": v.passed, "reason": v.reason} for v in self.verdicts
        ]
        kept["links"] = [[label, url] for label, url in self.links]
        return kept

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> News:
        """News kept by `as_dict`; a field it lacks (kept before the field was added) takes
        its default, and one it has that News no longer has is left out."""
        known = {f.name for f in fields(cls)}
        values = {name: value for name, value in data.items() if name in known}
        values["kind"] = NewsKind(data["kind"])
        values["verdicts"] = tuple(
            Verdict(str(v["gate"]), bool(v["passed"]), str(v.get("reason", "")))
            for v in data.get("verdicts", ())
        )
        values["links"] = tuple((str(label), str(url)) for label, url in data.get("links", ()))
        return cls(**values)


def plain(key: str, text: str, kind: NewsKind = NewsKind.ALERT) -> News:
    """News that is only a line of text (an operator's alert)."""
    return News(kind=kind, text=text, task_key=key)
