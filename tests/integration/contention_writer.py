"""One writer process of the SQLite contention test (tests/integration/test_contention.py).

Run as a script: it builds its own orch app (store, engine, dispatcher) through the public API
on a store shared with the other writers, with its own workspace and data directory, waits for
the test's start signal, then files its tickets while its worker slots drive every runnable job
in the store (its own tickets and the other writers'). It exits once every task the test filed
is terminal, printing one JSON line with its identity on stdout.

    python contention_writer.py [--migrate] CONFIG WORKDIR INDEX TICKETS TOTAL GO_FILE

With --migrate the writer builds its app only after the start signal, migrating the store the
way `orch worker` does at start, so writers started together on a fresh store race to create it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from orch.bootstrap import build
from orch.config import load_settings
from orch.domain.states import TaskStatus, is_terminal
from orch.logs import configure

# only guards a hang; the test's own timeout is longer
DEADLINE_S = 240.0


def settled(status: TaskStatus) -> bool:
    """Nothing more will happen to the task without a person."""
    return is_terminal(status) or status == TaskStatus.NEEDS_OPERATOR


def wait_for(go: Path) -> None:
    while not go.exists():  # start together, so the writers really collide
        time.sleep(0.005)


def main(argv: list[str]) -> int:
    migrate = argv[0] == "--migrate"
    config, workdir, index, tickets, total, go_file = argv[1:] if migrate else argv
    root = Path(workdir)
    settings = load_settings(
        Path(config), data_dir=root / "data", workspace_root=root / "workspaces"
    )
    configure(settings.log_level)
    go = Path(go_file)
    if migrate:
        print(json.dumps({"ready": True}), flush=True)
        wait_for(go)
        app = build(settings)
    else:
        app = build(settings, migrate=False)  # the test migrated the store before starting us
    repos = [r.name for r in settings.repos]
    try:
        app.lock_workspace()
        if not migrate:
            print(json.dumps({"ready": True, "owner": app.dispatcher.owner}), flush=True)
            wait_for(go)
        app.dispatcher.start()
        filed = []
        for n in range(int(tickets)):
            repo = repos[(int(index) + n) % len(repos)]
            task = app.intake.file(repo, f"Writer {index} ticket {n}", actor=f"writer-{index}")
            filed.append(task.key)
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            tasks = app.store.list_tasks(int(total) + 10)
            if len(tasks) >= int(total) and all(settled(t.status) for t in tasks):
                break
            time.sleep(0.2)
        else:
            print(json.dumps({"timeout": True, "owner": app.dispatcher.owner}), flush=True)
            return 3
        print(json.dumps({"owner": app.dispatcher.owner, "filed": filed}), flush=True)
        return 0
    finally:
        app.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
