"""A tracker whose items live in memory, for service tests and the demo: it behaves as the Plane
adapter does (state names, stamps that change with every change, comments once per key, hints
from Plane-shaped webhook bodies), with helpers to play the people who use it."""

from __future__ import annotations

import html
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orch.adapters.trackers import ORCH_SOURCE, TrackerError, UnknownState, plain_text, webhook_hint
from orch.ports import ItemHint, WorkItem

DEFAULT_STATES = (
    "Backlog",
    "To Analyse",
    "Analysing",
    "Approved",
    "Rejected",
    "Confirm Deploy",
    "Done",
    "STOP",
)


@dataclass(frozen=True)
class Comment:
    text: str  # as a person reads it
    html: str
    own: bool = False  # orch wrote it
    key: str = ""  # orch's key for it; "" for a person's
    actor: str = ""


@dataclass
class _Item:
    project: str
    ref: str
    key: str
    title: str
    body: str
    state: str
    updated: str
    actor: str  # who made its last change
    entered: dict[str, str] = field(default_factory=dict)  # state -> stamp it was entered at
    comments: list[Comment] = field(default_factory=list)

    def view(self) -> WorkItem:
        return WorkItem(
            project=self.project,
            ref=self.ref,
            key=self.key,
            title=self.title,
            body=self.body,
            state=self.state,
            url="",
            updated=self.updated,
        )


class MemoryTracker:
    """Thread-safe. `states` names each project's states (DEFAULT_STATES for any other);
    `own_actor` is the user orch writes as; `moves` lists orch's own moves, in order."""

    def __init__(
        self,
        name: str = "memory",
        *,
        states: Mapping[str, Sequence[str]] | None = None,
        default_states: Sequence[str] = DEFAULT_STATES,
        own_actor: str = ORCH_SOURCE,
        key_prefix: str = "MEM",
    ) -> None:
        self.name = name
        self.own_actor = own_actor
        self.moves: list[tuple[str, str, str]] = []  # (project, ref, state)
        self._states = {p: list(names) for p, names in (states or {}).items()}
        self._default_states = list(default_states)
        self._prefix = key_prefix
        self._items: dict[tuple[str, str], _Item] = {}
        self._count = 0  # items filed
        self._ticks = 0  # changes made: each is a new stamp
        self._lock = threading.RLock()

    # -- the Tracker protocol ------------------------------------------------------------------

    def item(self, project: str, ref: str) -> WorkItem | None:
        with self._lock:
            found = self._items.get((project, ref))
            return found.view() if found is not None else None

    def items(self, project: str) -> Iterator[WorkItem]:
        with self._lock:
            views = [i.view() for (p, _), i in self._items.items() if p == project]
        yield from views

    def state_names(self, project: str) -> list[str]:
        with self._lock:
            return list(self._states.get(project, self._default_states))

    def move(self, item: WorkItem, state: str) -> bool:
        with self._lock:
            found = self._get(item.project, item.ref)
            self._check_state(item.project, state)
            if found.state in (state,) or found.state != item.state:
                return False  # there already, or moved by someone since `item` was read
            self._change(found, state, self.own_actor)
            self.moves.append((item.project, item.ref, state))
            return True

    def comment(self, item: WorkItem, key: str, html: str) -> bool:
        with self._lock:
            found = self._get(item.project, item.ref)
            if any(c.key == key for c in found.comments):
                return False
            found.comments.append(Comment(plain_text(html), html, True, key, self.own_actor))
            return True

    def latest_comment(self, item: WorkItem) -> str:
        with self._lock:
            found = self._get(item.project, item.ref)
            theirs = [c for c in found.comments if not c.own]
            return theirs[-1].text if theirs else ""

    def hint(self, payload: Mapping[str, Any]) -> ItemHint | None:
        return webhook_hint(payload, lambda: self.own_actor)

    # -- playing the people who use it -------------------------------------------------------

    def set_states(self, project: str, names: Sequence[str]) -> None:
        with self._lock:
            self._states[project] = list(names)

    def add(
        self, project: str, title: str, body: str = "", state: str = "Backlog", *, key: str = ""
    ) -> WorkItem:
        """File an item as a person would; its key is `{key_prefix}-{n}` unless given."""
        with self._lock:
            self._check_state(project, state)
            self._count += 1
            ref = f"item-{self._count}"
            stamp = self._stamp()
            found = _Item(
                project=project,
                ref=ref,
                key=key or f"{self._prefix}-{self._count}",
                title=title,
                body=body,
                state=state,
                updated=stamp,
                actor="person",
                entered={state: stamp},
            )
            self._items[(project, ref)] = found
            return found.view()

    def set_state(self, project: str, ref: str, state: str, actor: str = "person") -> WorkItem:
        """A person moves the item: a new stamp, even to the state it is in."""
        with self._lock:
            found = self._get(project, ref)
            self._check_state(project, state)
            self._change(found, state, actor)
            return found.view()

    def put_back(self, project: str, ref: str, state: str) -> WorkItem:
        """The item as it was when it last entered `state`, with that change's stamp: as if
        nothing happened since then."""
        with self._lock:
            found = self._get(project, ref)
            if state not in found.entered:
                raise TrackerError(f"{found.key} was never in {state!r}")
            found.state, found.updated = state, found.entered[state]
            return found.view()

    def edit(
        self,
        project: str,
        ref: str,
        *,
        title: str | None = None,
        body: str | None = None,
        actor: str = "person",
    ) -> WorkItem:
        with self._lock:
            found = self._get(project, ref)
            found.title = found.title if title is None else title
            found.body = found.body if body is None else body
            found.updated, found.actor = self._stamp(), actor
            return found.view()

    def add_comment(self, project: str, ref: str, text: str, own: bool = False) -> Comment:
        with self._lock:
            found = self._get(project, ref)
            actor = self.own_actor if own else "person"
            made = Comment(text, f"<p>{html.escape(text)}</p>", own, "", actor)
            found.comments.append(made)
            return made

    def comments(self, project: str, ref: str) -> list[Comment]:
        with self._lock:
            return list(self._get(project, ref).comments)

    def remove(self, project: str, ref: str) -> None:
        with self._lock:
            self._items.pop((project, ref), None)

    def webhook(
        self,
        project: str,
        ref: str,
        *,
        own: bool = False,
        action: str = "updated",
        field: str = "state_id",
    ) -> dict[str, Any]:
        """The body of the delivery a change to the item would bring, Plane's shape: by orch's
        own user with `own`, else by whoever changed it last (a person)."""
        with self._lock:
            found = self._get(project, ref)
            actor = self.own_actor if own else found.actor
            if actor == self.own_actor and not own:
                actor = "person"
            return {
                "event": "issue",
                "action": action,
                "webhook_id": self.name,
                "workspace_id": self.name,
                "data": {
                    "id": found.ref,
                    "project": project,
                    "name": found.title,
                    "state": {"id": found.state, "name": found.state},
                    "updated_at": found.updated,
                },
                "activity": {
                    "field": field,
                    "new_value": found.state,
                    "old_value": None,
                    "actor": {"id": actor, "display_name": actor},
                },
            }

    # -- inside ------------------------------------------------------------------------------

    def _get(self, project: str, ref: str) -> _Item:
        found = self._items.get((project, ref))
        if found is None:
            raise TrackerError(f"project {project} has no item {ref}")
        return found

    def _check_state(self, project: str, state: str) -> None:
        names = self._states.get(project, self._default_states)
        if state not in names:
            raise UnknownState(project, state, names)

    def _change(self, found: _Item, state: str, actor: str) -> None:
        found.state, found.updated, found.actor = state, self._stamp(), actor
        found.entered[state] = found.updated

    def _stamp(self) -> str:
        self._ticks += 1
        return f"v{self._ticks}"
