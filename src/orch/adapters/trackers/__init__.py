"""Hosted trackers (orch.ports.Tracker): Plane over its REST API, and one in memory for tests.

What they share: their errors, the plain text of an HTML body, and the reading of a webhook
delivery's envelope, which is Plane's (`event`, `action`, `data`, `activity.actor`) and which the
memory tracker speaks too."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from html.parser import HTMLParser
from typing import Any

from orch.domain.errors import ConfigError, OrchError, Unavailable
from orch.ports import ItemHint

# what orch writes as a comment's external source, so its own comments can be told apart
ORCH_SOURCE = "orch"


class TrackerError(OrchError):
    """A tracker's API failed, or refused what orch asked of it."""


class TrackerUnavailable(TrackerError, Unavailable):
    """The tracker did not answer, or kept saying it cannot now (5xx, 429), try after try."""


class UnknownState(TrackerError, ConfigError):
    """A state name orch was told to use is not one of the project's states."""

    def __init__(self, project: str, state: str, known: Iterable[str]) -> None:
        names = ", ".join(repr(n) for n in known) or "none"
        super().__init__(f"project {project} has no state named {state!r} (its states: {names})")
        self.project = project
        self.state = state


_BLOCKS = frozenset(
    {"p", "div", "br", "li", "ul", "ol", "pre", "blockquote", "tr", "table", "hr", "section"}
    | {f"h{n}" for n in range(1, 7)}
)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def plain_text(html: str) -> str:
    """The text a person reads in an HTML body: tags gone, entities decoded, one blank line at
    most between blocks."""
    parser = _Text()
    parser.feed(html or "")
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# activity-fired deliveries say created/updated; HTTP-verb ones are mapped to create/update
_ITEM_EVENTS = frozenset({"issue", "work_item"})
_ACTIONS = frozenset({"created", "updated", "create", "update"})


def webhook_hint(payload: Mapping[str, Any], own_id: Callable[[], str]) -> ItemHint | None:
    """The work item a delivery's body points at; None for another event or a deletion.
    `own_id` names orch's own user; it is asked only for a delivery about an item."""
    if payload.get("event") not in _ITEM_EVENTS or payload.get("action") not in _ACTIONS:
        return None
    data = payload.get("data")
    if not isinstance(data, Mapping):
        return None
    ref, project = data.get("id"), data.get("project") or data.get("project_id")
    if isinstance(project, Mapping):
        project = project.get("id")
    if not isinstance(ref, str) or not ref or not isinstance(project, str) or not project:
        return None
    activity = payload.get("activity")
    actor = activity.get("actor") if isinstance(activity, Mapping) else None
    actor_id = name = ""
    if isinstance(actor, Mapping):
        actor_id = str(actor.get("id") or "")
        name = str(actor.get("display_name") or "")
    elif isinstance(actor, str):
        actor_id = actor
    own = bool(actor_id) and actor_id == own_id()
    field = activity.get("field") if isinstance(activity, Mapping) else None
    moved = field in ("state", "state_id")
    state = data.get("state")
    now = str(state.get("name") or "") if isinstance(state, Mapping) else ""
    return ItemHint(
        project=project, ref=ref, actor=name or actor_id, own=own, moved=moved, state=now
    )
