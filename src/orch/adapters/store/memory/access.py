"""API tokens, in the memory store."""

from __future__ import annotations

from dataclasses import replace

from orch.adapters.store.memory.base import MemoryBase
from orch.domain.access import ApiToken, Role
from orch.domain.errors import Conflict, NotFound


class AccessRecords(MemoryBase):
    def add_token(self, name: str, role: Role, token_hash: str) -> ApiToken:
        with self._write() as t:
            if name in t.tokens or any(h == token_hash for h in t.token_hashes.values()):
                raise Conflict(f"a token named {name!r} exists already (revoked or not)")
            token = ApiToken(name, role, self.now())
            t.tokens[name] = token
            t.token_hashes[name] = token_hash
            return token

    def tokens(self) -> list[ApiToken]:
        return sorted(self._t.tokens.values(), key=lambda token: token.name)

    def revoke_token(self, name: str) -> bool:
        with self._write() as t:
            token = t.tokens.get(name)
            if token is None:
                raise NotFound(f"no token named {name!r}")
            if token.revoked_at is not None:
                return False
            t.tokens[name] = replace(token, revoked_at=self.now())
            return True

    def token_by_hash(self, token_hash: str) -> ApiToken | None:
        t = self._t
        for name, known in t.token_hashes.items():
            if known == token_hash and t.tokens[name].live:
                return t.tokens[name]
        return None

    def has_tokens(self) -> bool:
        return bool(self._t.tokens)
