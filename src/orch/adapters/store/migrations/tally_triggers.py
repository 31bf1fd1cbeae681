"""The triggers that keep task_tallies, as migration 0010 made them: one a change to tasks, in
the transaction that makes the change. A migration that rebuilds tasks on SQLite (batch mode
copies it to a new table and drops the old, and its triggers with it) makes them again from here.
A migration that changes what they do writes its own, leaving these as 0010 made them."""

from __future__ import annotations

from alembic import op

SPEND = ("tokens_in", "tokens_out", "cache_read", "cache_write", "cost_usd")
NO_SPEND = ("0",) * len(SPEND)
# one trigger (and on PostgreSQL one function) a change to tasks, each named for it
TRIGGERS = (
    "tasks_tally_insert",
    "tasks_tally_delete",
    "tasks_tally_stage",
    "tasks_tally_status",
    "tasks_tally_spend",
    "tasks_tally_repo",
)
TALLY_ARGS = "text, text, bigint, bigint, bigint, bigint, bigint, double precision"


def _of(row: str, sign: str = "") -> tuple[str, ...]:
    """A row's spending, as values to add (`sign` "-": to take away)."""
    return tuple(f"{sign}{row}.{c}" for c in SPEND)


def _sqlite_add(kind: str, name: str, tasks: str, spend: tuple[str, ...] = NO_SPEND) -> str:
    """Add to a tally, made at its first use."""
    added = ", ".join(f"{c} = task_tallies.{c} + excluded.{c}" for c in ("tasks", *SPEND))
    return (
        f"INSERT INTO task_tallies (kind, name, tasks, {', '.join(SPEND)})"
        f" VALUES ('{kind}', {name}, {tasks}, {', '.join(spend)})"
        f" ON CONFLICT (kind, name) DO UPDATE SET {added};"
    )


def sqlite_triggers() -> None:
    add = _sqlite_add
    triggers = {
        "tasks_tally_insert": (
            "AFTER INSERT ON tasks",
            [
                add("repo", "NEW.repo", "1", _of("NEW")),
                add("stage", "NEW.stage", "1"),
                add("status", "NEW.status", "1"),
            ],
        ),
        "tasks_tally_delete": (
            "AFTER DELETE ON tasks",
            [
                add("repo", "OLD.repo", "-1", _of("OLD", "-")),
                add("stage", "OLD.stage", "-1"),
                add("status", "OLD.status", "-1"),
            ],
        ),
        "tasks_tally_stage": (
            "AFTER UPDATE OF stage ON tasks WHEN OLD.stage IS NOT NEW.stage",
            [add("stage", "OLD.stage", "-1"), add("stage", "NEW.stage", "1")],
        ),
        "tasks_tally_status": (
            "AFTER UPDATE OF status ON tasks WHEN OLD.status IS NOT NEW.status",
            [add("status", "OLD.status", "-1"), add("status", "NEW.status", "1")],
        ),
        "tasks_tally_spend": (
            f"AFTER UPDATE OF repo, {', '.join(SPEND)} ON tasks WHEN OLD.repo = NEW.repo",
            [add("repo", "NEW.repo", "0", tuple(f"NEW.{c} - OLD.{c}" for c in SPEND))],
        ),
        "tasks_tally_repo": (
            "AFTER UPDATE OF repo ON tasks WHEN OLD.repo IS NOT NEW.repo",
            [
                add("repo", "OLD.repo", "-1", _of("OLD", "-")),
                add("repo", "NEW.repo", "1", _of("NEW")),
            ],
        ),
    }
    for name, (when, statements) in triggers.items():
        op.execute(f"CREATE TRIGGER {name} {when} BEGIN {' '.join(statements)} END")


def _pg_add(kind: str, name: str, tasks: str, spend: tuple[str, ...] = NO_SPEND) -> str:
    return f"PERFORM orch_tally('{kind}', {name}, {tasks}, {', '.join(spend)});"


def _pg_in_order(old: str, new: str, take: str, give: str) -> str:
    """Take from the old tally and give to the new, locking first the one whose name sorts
    first: concurrent moves between the same two lock them in one order, never in a cycle."""
    return f"IF {old} < {new} THEN {take} {give} ELSE {give} {take} END IF;"


def postgresql_triggers() -> None:
    added = ", ".join(f"{c} = task_tallies.{c} + excluded.{c}" for c in ("tasks", *SPEND))
    op.execute(
        f"CREATE FUNCTION orch_tally(k text, n text, d bigint, ti bigint, tout bigint,"
        f" cr bigint, cw bigint, usd double precision) RETURNS void LANGUAGE sql AS $$"
        f" INSERT INTO task_tallies (kind, name, tasks, {', '.join(SPEND)})"
        f" VALUES (k, n, d, ti, tout, cr, cw, usd)"
        f" ON CONFLICT (kind, name) DO UPDATE SET {added} $$"
    )
    add = _pg_add

    def moved(column: str) -> str:
        take, give = add(column, f"OLD.{column}", "-1"), add(column, f"NEW.{column}", "1")
        return _pg_in_order(f"OLD.{column}", f"NEW.{column}", take, give)

    # a statement's row triggers fire in the order of their names: a move's stage, then its
    # status, in every transaction alike
    triggers = {
        "tasks_tally_insert": (
            "AFTER INSERT ON tasks FOR EACH ROW",
            add("repo", "NEW.repo", "1", _of("NEW"))
            + add("stage", "NEW.stage", "1")
            + add("status", "NEW.status", "1"),
        ),
        "tasks_tally_delete": (
            "AFTER DELETE ON tasks FOR EACH ROW",
            add("repo", "OLD.repo", "-1", _of("OLD", "-"))
            + add("stage", "OLD.stage", "-1")
            + add("status", "OLD.status", "-1"),
        ),
        "tasks_tally_stage": (
            "AFTER UPDATE OF stage ON tasks FOR EACH ROW"
            " WHEN (OLD.stage IS DISTINCT FROM NEW.stage)",
            moved("stage"),
        ),
        "tasks_tally_status": (
            "AFTER UPDATE OF status ON tasks FOR EACH ROW"
            " WHEN (OLD.status IS DISTINCT FROM NEW.status)",
            moved("status"),
        ),
        "tasks_tally_spend": (
            f"AFTER UPDATE OF repo, {', '.join(SPEND)} ON tasks FOR EACH ROW"
            " WHEN (OLD.repo = NEW.repo)",
            add("repo", "NEW.repo", "0", tuple(f"NEW.{c} - OLD.{c}" for c in SPEND)),
        ),
        "tasks_tally_repo": (
            "AFTER UPDATE OF repo ON tasks FOR EACH ROW WHEN (OLD.repo IS DISTINCT FROM NEW.repo)",
            _pg_in_order(
                "OLD.repo",
                "NEW.repo",
                add("repo", "OLD.repo", "-1", _of("OLD", "-")),
                add("repo", "NEW.repo", "1", _of("NEW")),
            ),
        ),
        # TRUNCATE fires no row trigger: emptying tasks empties the tallies with it
        "tasks_tally_truncate": (
            "AFTER TRUNCATE ON tasks FOR EACH STATEMENT",
            "DELETE FROM task_tallies;",
        ),
    }
    for name, (when, body) in triggers.items():
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN {body} RETURN NULL; END $$"
        )
        op.execute(f"CREATE TRIGGER {name} {when} EXECUTE FUNCTION {name}()")
