"""API tokens on every store: kept as digests, found only while live, revoked once."""

from __future__ import annotations

import pytest

from orch.domain import access
from orch.domain.access import Role
from orch.domain.errors import Conflict, NotFound
from orch.ports import Store


def test_a_token_is_found_by_its_digest_until_it_is_revoked(store: Store) -> None:
    assert not store.has_tokens()
    secret = access.new_secret()
    made = store.add_token("ann", Role.OPERATOR, access.digest(secret))

    assert store.has_tokens()
    assert store.token_by_hash(access.digest(secret)) == made
    assert store.token_by_hash(access.digest(secret + "x")) is None
    assert store.revoke_token("ann") is True
    assert store.revoke_token("ann") is False  # once
    assert store.token_by_hash(access.digest(secret)) is None
    assert store.has_tokens()  # revoking every token never opens the API again
    [listed] = store.tokens()
    assert (listed.name, listed.role, listed.live) == ("ann", Role.OPERATOR, False)


def test_a_token_name_is_taken_for_good_and_an_unknown_one_cannot_be_revoked(
    store: Store,
) -> None:
    store.add_token("ann", Role.VIEWER, access.digest(access.new_secret()))
    store.revoke_token("ann")
    with pytest.raises(Conflict, match="exists already"):
        store.add_token("ann", Role.ADMIN, access.digest(access.new_secret()))
    with pytest.raises(NotFound):
        store.revoke_token("bob")
    assert [t.role for t in store.tokens()] == [Role.VIEWER]


def test_roles_allow_what_the_roles_below_them_allow() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.OPERATOR.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.OPERATOR) and not Role.OPERATOR.allows(Role.ADMIN)


@pytest.mark.parametrize("name", ["", "-ann", "a b", "x" * 101, "ann\n"])
def test_a_token_name_that_could_not_be_an_actor_is_refused(name: str) -> None:
    with pytest.raises(Exception, match="token name"):
        access.check_name(name)
