"""orch's own board as a tracker: its items are the store's tickets, a project is a repository,
and where a ticket stands and what is said on it are kept in the store too (orch.ports.Store's
board methods).

Unlike a hosted tracker, the board has a conditional write: every move is a compare-and-set on
the item's version, which is also its stamp (`WorkItem.updated`, "0" before its first move). Its
change events are orch's own, shaped

    {"event": "board_item", "action": "moved" | "commented", "project": repo, "ref": key,
     "actor": name, "own": bool, "state": name}

and handed to `on_change` after each change is stored, whoever made it: the board's webhook.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from orch.adapters.trackers import ORCH_SOURCE, TrackerError, UnknownState, plain_text
from orch.domain.errors import ConfigError
from orch.domain.model import BoardItem, Ticket
from orch.ports import ItemHint, Store, WorkItem

log = logging.getLogger("orch.tracker")

EVENT = "board_item"
MOVED = "moved"
COMMENTED = "commented"
_TRIES = 20  # a person's move tried again on a version taken meanwhile, this many times at most


class BuiltinTracker:
    """`states` names the board's states, for every repository or per repository (one not
    named has none); a ticket never moved is in `default_state`. `own_actor` is who orch
    writes as; `on_change` is given each change's event once it is stored."""

    name = "builtin"

    def __init__(
        self,
        store: Store,
        states: Mapping[str, Sequence[str]] | Sequence[str],
        default_state: str = "Backlog",
        *,
        own_actor: str = ORCH_SOURCE,
        on_change: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.store = store
        self.default_state = default_state
        self.own_actor = own_actor
        self.on_change = on_change
        if isinstance(states, Mapping):
            self._states: dict[str, list[str]] | None = {p: list(n) for p, n in states.items()}
            self._every: list[str] = []
            named = self._states.items()
        else:
            self._states, self._every = None, list(states)
            named = {"every repository": self._every}.items()
        for project, names in named:
            if default_state not in names:
                raise ConfigError(
                    f"the built-in board's first state {default_state!r} is not one of the "
                    f"states of {project} ({', '.join(map(repr, names)) or 'none'})"
                )

    # -- the Tracker protocol ------------------------------------------------------------------

    def item(self, project: str, ref: str) -> WorkItem | None:
        ticket = self.store.get_ticket(ref)
        if ticket is None or ticket.repo != project:
            return None
        return self._view(ticket, self.store.board_item(ref))

    def items(self, project: str) -> Iterator[WorkItem]:
        for ticket, where in self.store.board_tickets(project):
            yield self._view(ticket, where)

    def state_names(self, project: str) -> list[str]:
        if self._states is None:
            return list(self._every)
        return list(self._states.get(project, ()))

    def move(self, item: WorkItem, state: str) -> bool:
        self._check_state(item.project, state)
        now = self._current(item.project, item.ref)
        # the item as `item` says it was read: a stamp of the board's is its version, and a move
        # made since (even into the same state: a new request) stands; any other stamp was not
        # read from this board, and only its state is compared
        version = int(now.updated)
        expect = int(item.updated) if item.updated.isdecimal() else version
        if now.state == state or now.state != item.state or version != expect:
            return False
        moved = self.store.move_board_item(item.ref, state, self.own_actor, expect)
        if moved is None:
            return False  # moved by someone between the read and the write: theirs stands
        self._publish(MOVED, item.project, item.ref, self.own_actor, True, state)
        return True

    def comment(self, item: WorkItem, key: str, html: str) -> bool:
        if not key:
            raise TrackerError("a comment of orch's needs a key, to be made once")
        now = self._current(item.project, item.ref)
        if not self.store.add_board_comment(item.ref, key, html, self.own_actor, True):
            return False
        self._publish(COMMENTED, item.project, item.ref, self.own_actor, True, now.state)
        return True

    def latest_comment(self, item: WorkItem) -> str:
        self._current(item.project, item.ref)
        theirs = [c for c in self.store.board_comments(item.ref) if not c.own]
        return plain_text(theirs[-1].html) if theirs else ""

    def hint(self, payload: Mapping[str, Any]) -> ItemHint | None:
        """A `moved` event of the board's is a hint at its item; a `commented` one, or anything
        else, is not."""
        if payload.get("event") != EVENT or payload.get("action") != MOVED:
            return None
        project, ref, actor = payload.get("project"), payload.get("ref"), payload.get("actor")
        own, state = payload.get("own"), payload.get("state")
        if not (isinstance(project, str) and project and isinstance(ref, str) and ref):
            return None
        if not (isinstance(actor, str) and isinstance(own, bool) and isinstance(state, str)):
            return None
        return ItemHint(project=project, ref=ref, actor=actor, own=own, moved=True, state=state)

    # -- what people do on the board (the API's, later) --------------------------------------

    def person_moves(self, key: str, state: str, actor: str) -> dict[str, Any]:
        """`actor` moves the ticket to `state`: always a new version, even into the state it is
        in (asked again). Its event, as `on_change` is given it."""
        ticket = self._ticket(key)
        self._check_state(ticket.repo, state)
        for _ in range(_TRIES):
            where = self.store.board_item(key)
            if self.store.move_board_item(key, state, actor, where.version if where else 0):
                return self._publish(MOVED, ticket.repo, key, actor, False, state)
        raise TrackerError(f"{key} kept moving while {actor} moved it; try again")

    def person_comments(self, key: str, text: str, actor: str) -> dict[str, Any]:
        """`actor` comments `text` (plain) on the ticket. Its event, as `on_change` is given
        it."""
        ticket = self._ticket(key)
        body = "<p>" + "<br>".join(html.escape(line) for line in text.splitlines()) + "</p>"
        self.store.add_board_comment(key, "", body, actor, False)
        where = self.store.board_item(key)
        state = where.state if where is not None else self.default_state
        return self._publish(COMMENTED, ticket.repo, key, actor, False, state)

    # -- inside ------------------------------------------------------------------------------

    def _view(self, ticket: Ticket, where: BoardItem | None) -> WorkItem:
        return WorkItem(
            project=ticket.repo,
            ref=ticket.key,
            key=ticket.key,
            title=ticket.title,
            body=ticket.body,
            state=where.state if where is not None else self.default_state,
            url="",
            updated=str(where.version) if where is not None else "0",
        )

    def _ticket(self, key: str) -> Ticket:
        ticket = self.store.get_ticket(key)
        if ticket is None:
            raise TrackerError(f"the built-in board has no ticket {key}")
        return ticket

    def _current(self, project: str, ref: str) -> WorkItem:
        found = self.item(project, ref)
        if found is None:
            raise TrackerError(f"the built-in board has no ticket {ref} in {project}")
        return found

    def _check_state(self, project: str, state: str) -> None:
        names = self.state_names(project)
        if state not in names:
            raise UnknownState(project, state, names)

    def _publish(
        self, action: str, project: str, ref: str, actor: str, own: bool, state: str
    ) -> dict[str, Any]:
        event = {
            "event": EVENT,
            "action": action,
            "project": project,
            "ref": ref,
            "actor": actor,
            "own": own,
            "state": state,
        }
        if self.on_change is not None:
            try:
                self.on_change(dict(event))
            except Exception:  # the change is stored: a poll finds what its hint would have said
                log.exception("the built-in board could not pass on %s of %s", action, ref)
        return event
