"""The built-in board, in the memory store: where its tickets stand and what is said on them."""

from __future__ import annotations

from orch.adapters.store.memory.base import MemoryBase, _Tables
from orch.domain.errors import NotFound
from orch.domain.model import BoardComment, BoardItem, Ticket


def _must_exist(t: _Tables, key: str) -> None:
    if key not in t.tickets:
        raise NotFound(f"no ticket {key}")


class BoardRecords(MemoryBase):
    def board_tickets(self, repo: str) -> list[tuple[Ticket, BoardItem | None]]:
        t = self._t
        mine = sorted((x for x in t.tickets.values() if x.repo == repo), key=lambda x: x.key)
        return [(x, t.board.get(x.key)) for x in mine]

    def board_item(self, key: str) -> BoardItem | None:
        return self._t.board.get(key)

    def move_board_item(
        self, key: str, state: str, actor: str, expect_version: int
    ) -> BoardItem | None:
        # the check and the write under one lock: a lost compare-and-set writes nothing, and
        # shows a person nothing new
        with self._lock:
            _must_exist(self._t, key)
            known = self._t.board.get(key)
            if (known.version if known else 0) != expect_version:
                return None
            with self._write() as t:
                moved = BoardItem(key, state, expect_version + 1, actor, self.now())
                t.board[key] = moved
                return moved

    def add_board_comment(
        self, key: str, comment_key: str, html: str, actor: str, own: bool
    ) -> bool:
        with self._lock:
            _must_exist(self._t, key)
            if comment_key and any(
                (c.key, c.comment_key) == (key, comment_key)
                for c in self._t.board_comments.values()
            ):
                return False
            with self._write() as t:
                made = BoardComment(
                    t.next_id("board_comments"), key, comment_key, html, actor, own, self.now()
                )
                t.board_comments[made.id] = made
                return True

    def board_comments(self, key: str) -> list[BoardComment]:
        found = (c for c in self._t.board_comments.values() if c.key == key)
        return sorted(found, key=lambda c: c.id)
