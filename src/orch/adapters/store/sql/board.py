"""The built-in board, in the SQL store: where its tickets stand and what is said on them."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orch.adapters.store import schema as t
from orch.adapters.store.sql.base import SqlBase, _insert_ignore
from orch.domain.errors import NotFound
from orch.domain.model import BoardComment, BoardItem, Ticket


def _ticket(r: Any) -> Ticket:
    return Ticket(key=r.key, repo=r.repo, title=r.title, body=r.body, url=r.url)


def _item(r: Any) -> BoardItem:
    return BoardItem(r.key, r.state, r.version, r.actor, r.updated_at)


def _comment(r: Any) -> BoardComment:
    return BoardComment(r.id, r.key, r.comment_key, r.html, r.actor, bool(r.own), r.created_at)


def _must_exist(conn: Connection, key: str) -> None:
    if conn.execute(sa.select(t.tickets.c.key).where(t.tickets.c.key == key)).first() is None:
        raise NotFound(f"no ticket {key}")


class BoardRecords(SqlBase):
    def board_tickets(self, repo: str) -> list[tuple[Ticket, BoardItem | None]]:
        k, b = t.tickets.c, t.board_items.c
        query = (
            sa.select(
                t.tickets,
                b.state.label("board_state"),
                b.version.label("board_version"),
                b.actor.label("board_actor"),
                b.updated_at.label("board_updated_at"),
            )
            .select_from(t.tickets.outerjoin(t.board_items, b.key == k.key))
            .where(k.repo == repo)
            .order_by(k.key)
        )
        rows = self._read(lambda c: c.execute(query).all())
        return [
            (
                _ticket(r),
                None
                if r.board_version is None
                else BoardItem(
                    r.key, r.board_state, r.board_version, r.board_actor, r.board_updated_at
                ),
            )
            for r in rows
        ]

    def board_item(self, key: str) -> BoardItem | None:
        row = self._read(
            lambda c: c.execute(sa.select(t.board_items).where(t.board_items.c.key == key)).first()
        )
        return _item(row) if row is not None else None

    def move_board_item(
        self, key: str, state: str, actor: str, expect_version: int
    ) -> BoardItem | None:
        b = t.board_items.c

        def fn(conn: Connection) -> BoardItem | None:
            _must_exist(conn, key)
            now = self._db_now(conn)
            if expect_version == 0:
                # the first move makes the row: of two, the primary key lets one in
                stmt = (
                    _insert_ignore(conn, t.board_items)
                    .values(key=key, state=state, version=1, actor=actor, updated_at=now)
                    .returning(*t.board_items.c)
                )
            else:
                stmt = (
                    sa.update(t.board_items)
                    .where(b.key == key, b.version == expect_version)
                    .values(state=state, version=b.version + 1, actor=actor, updated_at=now)
                    .returning(*t.board_items.c)
                )
            row = conn.execute(stmt).first()
            return _item(row) if row is not None else None

        moved: BoardItem | None = self._write(fn, shown=lambda made: made is not None)
        return moved

    def add_board_comment(
        self, key: str, comment_key: str, html: str, actor: str, own: bool
    ) -> bool:
        def fn(conn: Connection) -> bool:
            _must_exist(conn, key)
            made = conn.execute(
                _insert_ignore(conn, t.board_comments)
                .values(
                    key=key,
                    comment_key=comment_key,
                    html=html,
                    actor=actor,
                    own=own,
                    created_at=self._db_now(conn),
                )
                .returning(t.board_comments.c.id)
            ).first()
            return made is not None

        return bool(self._write(fn, shown=bool))

    def board_comments(self, key: str) -> list[BoardComment]:
        c = t.board_comments.c
        rows = self._read(
            lambda conn: conn.execute(
                sa.select(t.board_comments).where(c.key == key).order_by(c.id)
            ).all()
        )
        return [_comment(r) for r in rows]
