"""How a store hears another process's writes that a person would see, for the dashboard's live
pages: never by asking the database again and again.

Each such write announces itself as it commits: on PostgreSQL with a NOTIFY that carries the
writing store's id, on SQLite by counting in its `counters` table. A listening store hears the
NOTIFYs of others, or watches the SQLite file (inotify, by watchfiles) and reads the count once
per change of the file. A lease renewal writes the file too, but moves no count: it is not heard.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("orch.store")

CHANGES_CHANNEL = "orch_changes"  # PostgreSQL's NOTIFY channel
ANNOUNCED_CHANGES = "changes"  # SQLite: the `counters` row that counts them
RETRY_S = 2.0  # after the server went away, or the file could not be watched


def watch_file(store_file: Path, stop: threading.Event, on_change: Callable[[], None]) -> None:
    """Until `stop`, call `on_change` when the SQLite file or its WAL is written."""
    from watchfiles import watch

    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # a line per change otherwise
    names = {store_file.name, f"{store_file.name}-wal"}
    while not stop.is_set():
        try:
            for _ in watch(
                store_file.parent,
                watch_filter=lambda _change, path: Path(path).name in names,
                stop_event=stop,
                debounce=50,
                step=50,
                recursive=False,
                raise_interrupt=False,
            ):
                on_change()
        except Exception as exc:  # the thread must outlive what the watch says, and log it
            log.warning("cannot watch %s for changes: %s", store_file, exc)
            stop.wait(RETRY_S)


def listen(dsn: str, own_id: str, stop: threading.Event, on_change: Callable[[], None]) -> None:
    """Until `stop`, call `on_change` for each NOTIFY another store sends."""
    import psycopg

    while not stop.is_set():
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                on_change()  # what changed while this was not listening
                while not stop.is_set():
                    for note in conn.notifies(timeout=0.5, stop_after=1):
                        if note.payload != own_id:
                            on_change()
        except Exception as exc:  # the server went away, say: listen again once it may be back
            log.warning("cannot listen for changes: %s", exc)
            stop.wait(RETRY_S)
