"""The tracker poll's look for write-backs to send again reads only the effects that failed:
SQLite's plan for it uses their index, whatever else the effects table holds."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from orch.testing import sql_memory_store


def test_failed_effects_are_found_through_their_own_index() -> None:
    store = sql_memory_store()
    asked: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "effects" in statement:
            asked.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", seen)
    try:
        assert store.failed_effects("report") == []
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", seen)
    [(statement, parameters)] = asked
    with store.engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
    details = " ".join(str(row[-1]) for row in plan)
    assert "ix_effects_failed" in details, details
    store.close()
