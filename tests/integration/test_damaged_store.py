"""A SQLite file that is not a database, or one damaged after it was made, is a store orch
cannot use: StoreUnavailable, which every command and route reports in one line, never a
driver's exception."""

from __future__ import annotations

from pathlib import Path

import pytest

from orch.adapters.store.sql import SqlStore
from orch.domain.access import Role
from orch.domain.errors import StoreUnavailable


def test_a_file_that_is_not_a_database_cannot_be_opened(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    path.write_bytes(b"this is not a database, " * 400)

    with pytest.raises(StoreUnavailable, match="cannot open the store"):
        SqlStore(f"sqlite:///{path}")


def test_a_store_damaged_after_it_was_made_fails_reads_and_writes_as_unavailable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "orch.db"
    made = SqlStore(f"sqlite:///{path}")
    made.migrate()
    made.add_token("ann", Role.VIEWER, "digest")
    made.close()
    store = SqlStore(f"sqlite:///{path}")
    store.engine.dispose()  # its next connection reads the file as it is then
    data = bytearray(path.read_bytes())
    data[4096:] = b"\xa5" * (len(data) - 4096)  # every page after the first is garbage
    path.write_bytes(bytes(data))
    try:
        with pytest.raises(StoreUnavailable, match="store read failed"):
            store.tokens()
        with pytest.raises(StoreUnavailable, match="store write failed"):
            store.add_token("bob", Role.VIEWER, "digest-2")
    finally:
        store.close()
