"""Another process's changes reach this store's change count (the dashboard's live pages):
heard through the SQLite file or PostgreSQL's NOTIFY, and only when a person would see them;
a lease renewed elsewhere writes the file but is not heard."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orch.adapters.store.sql import SqlStore
from orch.domain import pipeline as pl
from orch.domain.access import Role
from orch.domain.model import Ticket

HEARD_S = 30.0  # how long a change may take to be heard before the test gives up


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def here_and_there(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[SqlStore, SqlStore]]:
    """Two stores on one database, as two processes hold it; `here` listens to `there`."""
    url = f"sqlite:///{tmp_path}/orch.db" if request.param == "sqlite" else None
    url = url or request.getfixturevalue("pg_empty")
    here, there = SqlStore(url), SqlStore(url)
    here.migrate()
    stop = threading.Event()
    listener = threading.Thread(target=here.watch_changes, args=(stop,), daemon=True)
    listener.start()
    try:
        names = (f"warm-{i}" for i in itertools.count())
        start = here.changes.count
        # the listener is ready once it hears something: write until it does
        while here.changes.wait(start, timeout_s=0.2) == start:
            name = next(names)
            there.add_token(name, Role.VIEWER, name)
        yield here, there
    finally:
        stop.set()
        listener.join(10)
        here.close()
        there.close()
    assert not listener.is_alive()


def heard_after(here: SqlStore, seen: int) -> int:
    count = here.changes.wait(seen, timeout_s=HEARD_S)
    assert count > seen, "the change was never heard"
    return count


def test_another_stores_change_is_heard_and_its_renewals_are_not(
    here_and_there: tuple[SqlStore, SqlStore],
) -> None:
    here, there = here_and_there
    ticket = Ticket(key="APP-1", repo="app", title="t", body="")
    flow = pl.default_pipeline()
    seen = here.changes.count
    there.create_task(ticket, "orch/APP-1", pl.to_dict(flow), pl.start(flow), "t")
    seen = heard_after(here, seen)
    claim = there.claim("worker", 30, lambda _repo: 1)
    assert claim is not None
    seen = heard_after(here, seen)
    # settle: whatever the claim still has to be heard
    while (later := here.changes.wait(seen, timeout_s=1)) != seen:
        seen = later

    for _ in range(5):
        there.renew(claim, 30)
    there.add_token("after-the-renewals", Role.VIEWER, "digest-x")

    # the token is heard once; had a renewal been heard, the count would be further on
    assert heard_after(here, seen) == seen + 1
    assert here.changes.wait(seen + 1, timeout_s=1) == seen + 1
