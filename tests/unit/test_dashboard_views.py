"""What the dashboard shows, without a browser: the board's columns, reasons on one line, the
spend chart, sessions that expire, the change count and the log tail."""

from __future__ import annotations

import threading
from pathlib import Path

from orch.changes import Changes
from orch.domain.ledger import Usage
from orch.domain.model import Task
from orch.domain.states import Stage, TaskStatus
from orch.web import board
from orch.web.live import _Tail
from orch.web.sessions import Sessions


def task(key: str, stage: Stage, status: TaskStatus, reason: str = "") -> Task:
    return Task(
        id=int(key.split("-")[1]),
        key=key,
        repo="app",
        title=f"title of {key}",
        body="",
        stage=stage,
        status=status,
        version=1,
        branch=f"orch/{key}",
        pipeline={},
        status_reason=reason,
        created_at=0.0,
        updated_at=0.0,
    )


def test_each_task_sits_in_the_column_of_its_stage_or_of_what_it_waits_for() -> None:
    tasks = [
        task("A-1", Stage.DEVELOPMENT, TaskStatus.ACTIVE),
        task("A-2", Stage.ARCHITECTURE, TaskStatus.WAITING),
        task("A-3", Stage.TESTING, TaskStatus.NEEDS_OPERATOR, "tests failed\nline two"),
        task("A-4", Stage.CANCELLED, TaskStatus.CANCELLED),
        task("A-5", Stage.DONE, TaskStatus.DONE),
        task("A-6", Stage.DEPLOY_STAGING, TaskStatus.ACTIVE),
    ]

    columns = {c.name: [card["key"] for card in c.cards] for c in board.columns(tasks)}

    assert list(columns) == [
        *(s.value for s in board.WORK_STAGES),
        "waiting",
        "parked",
        "cancelled",
        "done",
    ]
    assert columns["development"] == ["A-1"]
    assert columns["deploy-staging"] == ["A-6"]
    assert (columns["waiting"], columns["parked"]) == (["A-2"], ["A-3"])
    assert (columns["cancelled"], columns["done"]) == (["A-4"], ["A-5"])
    parked = next(c for c in board.columns(tasks) if c.name == "parked").cards[0]
    assert parked["reason_line"] == "tests failed …"
    assert parked["reason"] == "tests failed\nline two"


def test_the_board_shows_only_the_latest_ended_tasks() -> None:
    done = [task(f"A-{i}", Stage.DONE, TaskStatus.DONE) for i in range(1, 30)]

    [column] = [c for c in board.columns(done) if c.name == "done"]

    assert [c["key"] for c in column.cards] == [f"A-{i}" for i in range(1, board.RECENT_ENDED + 1)]


def test_a_reason_is_shown_on_one_line_cut_with_an_ellipsis() -> None:
    assert board.one_line("") == ""
    assert board.one_line(None) == ""
    assert board.one_line("  short  ") == "short"
    assert board.one_line("first\n  Traceback: 15 lines of it") == "first …"
    cut = board.one_line("x" * 500, limit=20)
    assert (len(cut), cut[-1]) == (20, "…")


def test_the_spend_chart_has_a_bar_a_day_scaled_to_the_dearest() -> None:
    now = 30 * board.DAY_S + 5000.0
    today, yesterday = board.day_start(now), board.day_start(now) - board.DAY_S
    spent = {today: Usage(100, 50, cost_usd=2.0), yesterday: Usage(10, 5, cost_usd=0.5)}
    spent[today - 40 * board.DAY_S] = Usage(cost_usd=99.0)  # before the chart: not drawn

    bars = board.spend_chart(spent, now)

    assert len(bars) == board.CHART_DAYS
    assert [b["usd"] for b in bars[-2:]] == [0.5, 2.0]
    assert [b["height"] for b in bars[-2:]] == [board.CHART_HEIGHT / 4, board.CHART_HEIGHT]
    assert bars[-1]["tokens"] == 150
    assert {b["height"] for b in bars[:-2]} == {0}
    assert bars[0]["label"] != bars[-1]["label"]


def test_the_timeline_gives_each_stage_its_share_of_the_time() -> None:
    rows = [
        {"stage": "analysis", "active_s": 30.0, "waiting_s": 0.0},
        {"stage": "architecture", "active_s": 10.0, "waiting_s": 60.0},
    ]

    shares = board.timeline(rows)

    assert [(r["active_pct"], r["waiting_pct"]) for r in shares] == [(30.0, 0.0), (10.0, 60.0)]
    assert board.timeline([]) == []


def test_durations_read_as_a_person_says_them() -> None:
    assert board.duration(None) == ""
    assert board.duration(3.21) == "3.2 s"
    assert board.duration(125) == "2 min 5 s"
    assert board.duration(3 * 3600 + 61) == "3 h 1 min"


def test_a_session_ends_when_closed_or_left_idle() -> None:
    clock = [0.0]
    sessions = Sessions(clock=lambda: clock[0], idle_s=100)
    sid, session = sessions.open("digest")
    other, _ = sessions.open("digest")

    assert sessions.get(sid) is session
    assert session.csrf_matches(session.csrf)
    assert not session.csrf_matches(session.csrf + "x")
    assert not session.csrf_matches("")
    clock[0] = 90
    assert sessions.get(sid) is session  # used: its idle time starts again
    clock[0] = 150
    assert sessions.get(sid) is session
    assert sessions.get(other) is None  # idle for 150 s
    sessions.close(sid)
    assert sessions.get(sid) is None
    assert sessions.get("never-made") is None


def test_a_waiter_on_the_change_count_wakes_when_it_moves() -> None:
    changes = Changes()
    heard: list[int] = []
    stop = changes.listen(lambda: heard.append(changes.count))
    seen: list[int] = []
    waiter = threading.Thread(target=lambda: seen.append(changes.wait(0, timeout_s=30)))
    waiter.start()

    changes.bump()
    waiter.join()
    stop()
    changes.bump()

    assert seen == [1]
    assert heard == [1]
    assert changes.wait(0, timeout_s=0) == 2


def test_the_log_tail_sends_whole_lines_once_and_starts_near_the_end(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_bytes(b"x" * 20_000 + b"\nold line\npart")
    tail = _Tail()

    first = tail.read(log)
    with log.open("ab") as f:
        f.write(b"ial\nnew line\n")
    second = tail.read(log)

    assert first[-1] == "old line"
    assert sum(len(line) for line in first) < 17_000  # not the whole file
    assert second == ["partial", "new line"]
    assert tail.read(log) == []
    assert tail.read(tmp_path / "missing.log") == []
