"""API tokens, in the SQL store."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orch.adapters.store import schema as t
from orch.adapters.store.sql.base import SqlBase
from orch.domain.access import ApiToken, Role
from orch.domain.errors import Conflict, NotFound


def _token(r: Any) -> ApiToken:
    return ApiToken(r.name, Role(r.role), r.created_at, r.revoked_at)


class AccessRecords(SqlBase):
    def add_token(self, name: str, role: Role, token_hash: str) -> ApiToken:
        def fn(conn: Connection) -> ApiToken:
            now = self._db_now(conn)
            conn.execute(
                sa.insert(t.api_tokens).values(
                    name=name, role=role.value, token_hash=token_hash, created_at=now
                )
            )
            return ApiToken(name, role, now)

        def taken() -> Conflict:
            return Conflict(f"a token named {name!r} exists already (revoked or not)")

        return self._write(fn, duplicate=taken)  # type: ignore[no-any-return]

    def tokens(self) -> list[ApiToken]:
        rows = self._read(
            lambda c: c.execute(sa.select(t.api_tokens).order_by(t.api_tokens.c.name)).all()
        )
        return [_token(r) for r in rows]

    def revoke_token(self, name: str) -> bool:
        def fn(conn: Connection) -> bool:
            row = conn.execute(
                sa.select(t.api_tokens.c.revoked_at).where(t.api_tokens.c.name == name)
            ).first()
            if row is None:
                raise NotFound(f"no token named {name!r}")
            if row.revoked_at is not None:
                return False
            conn.execute(
                sa.update(t.api_tokens)
                .where(t.api_tokens.c.name == name)
                .values(revoked_at=self._now_sql)
            )
            return True

        return bool(self._write(fn))

    def token_by_hash(self, token_hash: str) -> ApiToken | None:
        row = self._read(
            lambda c: c.execute(
                sa.select(t.api_tokens).where(
                    t.api_tokens.c.token_hash == token_hash, t.api_tokens.c.revoked_at.is_(None)
                )
            ).first()
        )
        return _token(row) if row is not None else None

    def has_tokens(self) -> bool:
        return bool(
            self._read(lambda c: c.execute(sa.select(t.api_tokens.c.name).limit(1)).first())
        )
