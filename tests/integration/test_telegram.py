"""Telegram both ways against the fake Bot API: news split and paced as Telegram wants it,
flood control and moved chats followed, and buttons and commands driving a real intake."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from orch.adapters.notifiers.telegram import (
    TelegramBot,
    TelegramError,
    TelegramNotifier,
    compose,
    split,
)
from orch.domain.news import News, NewsKind, Verdict
from orch.domain.states import EventKind, Stage, TaskStatus
from orch.fakes.faults import Fault
from orch.fakes.telegram import TelegramFake, parse_html, user
from orch.testing import InstantAgent, Rig, SimClock, rig

TOKEN = "123456:AAH-secret-token_value"
CHAT = -100
ANN = user(42, "Ann", "ann")  # may act
BOB = user(43, "Bob")  # a member of the chat, no more


class Waits:
    """The sleep a notifier is given: it records each wait and moves the clock by it."""

    def __init__(self) -> None:
        self.clock = SimClock()
        self.slept: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.advance(seconds)


@pytest.fixture
def fake() -> Iterator[TelegramFake]:
    with TelegramFake(TOKEN) as served:
        assert isinstance(served, TelegramFake)
        served.add_chat(CHAT)
        yield served


@pytest.fixture
def waits() -> Waits:
    return Waits()


@pytest.fixture
def notifier(fake: TelegramFake, waits: Waits) -> Iterator[TelegramNotifier]:
    sender = TelegramNotifier(fake.url, TOKEN, [CHAT], sleep=waits, clock=waits.clock)
    yield sender
    sender.close()


@pytest.fixture
def world() -> Iterator[Rig]:
    r = rig({"default": InstantAgent()})
    yield r
    r.close()


def waiting_news(key: str, title: str, checkpoint: str, wait: str = "1.2") -> News:
    return News(
        kind=NewsKind.WAITING,
        text=f"{key} waits for {checkpoint}",
        task_key=key,
        title=title,
        checkpoint=checkpoint,
        question="Approve the plan in the specification?",
        wait=wait,
    )


def asked(world: Rig, key: str, title: str = "Add a greeting") -> News:
    """The news of the wait `key`'s task is at now, as orch sends it."""
    task = world.intake.task(key)
    assert task.waiting_for is not None
    return waiting_news(key, title, task.waiting_for, f"{task.id}.{task.version}")


def answered(fake: TelegramFake) -> str:
    return str(fake.answers[-1]["text"])


# -- sending -----------------------------------------------------------------------------------


def test_a_long_report_is_split_on_line_boundaries_and_its_html_is_never_cut(
    fake: TelegramFake, notifier: TelegramNotifier
) -> None:
    lines = [f"check {n}: a < b && c > d" for n in range(300)]
    news = News(
        kind=NewsKind.WAITING,
        text="\n".join(lines),
        task_key="DEMO-1",
        title="Add <b>old</b> markup",
        checkpoint="approve-plan",
        wait="1.2",
        verdicts=tuple(Verdict(f"gate-{n}", n % 2 == 0, "coverage < 80%") for n in range(40)),
        links=(("pull request", "https://git.example/pulls/1?a=1&b=2"),),
    )
    notifier.notify("DEMO-1#1:notify:v2:waiting", "DEMO-1 waits", news)

    sent = fake.html(CHAT)
    assert len(sent) > 1
    assert all(len(part) <= 4000 for part in sent)
    assert fake.violations == []  # every part parsed as well-formed HTML
    shown = "\n".join(m["text"] for m in fake.messages(CHAT))
    assert shown == parse_html("\n".join(compose("DEMO-1", "", news)))
    assert "DEMO-1 — Add <b>old</b> markup" in shown
    assert all(line in shown.splitlines() for line in lines)
    *first, last = fake.messages(CHAT)
    assert "reply_markup" in last and all("reply_markup" not in m for m in first)


def test_a_line_longer_than_a_message_is_cut_between_tags_and_entities() -> None:
    line = "<b>" + "x&amp;y " * 1500 + "</b> and <i>" + "z" * 5000 + "</i>"
    parts = split([line])
    assert len(parts) > 2
    assert all(len(part) <= 4000 for part in parts)
    assert "".join(parse_html(part) for part in parts) == parse_html(line)


def test_a_flood_wait_is_waited_out_and_the_message_sent_once(
    fake: TelegramFake, notifier: TelegramNotifier, waits: Waits
) -> None:
    fake.flood(CHAT, retry_after=7)
    notifier.notify("k1", "DEMO-1 is done")
    assert 7 in waits.slept
    assert [m["text"] for m in fake.messages(CHAT)] == ["DEMO-1 is done"]
    assert [e.status for e in fake.exchanges] == [429, 200]
    assert fake.violations == []


def test_a_flood_wait_longer_than_a_message_may_wait_fails_it(
    fake: TelegramFake, waits: Waits
) -> None:
    patient = TelegramNotifier(
        fake.url, TOKEN, [CHAT], sleep=waits, clock=waits.clock, max_wait_s=30
    )
    fake.flood(CHAT, retry_after=31)
    with pytest.raises(TelegramError, match="wait 31s"):
        patient.notify("k1", "DEMO-1 is done")
    assert fake.messages(CHAT) == [] and waits.slept == []
    patient.close()


def test_sends_to_one_chat_are_a_second_apart(
    fake: TelegramFake, notifier: TelegramNotifier, waits: Waits
) -> None:
    notifier.notify("k1", "one")
    notifier.notify("k2", "two")
    waits.clock.advance(5)
    notifier.notify("k3", "three")
    assert waits.slept == [1.0]
    assert [m["text"] for m in fake.messages(CHAT)] == ["one", "two", "three"]


def test_a_group_that_became_a_supergroup_is_followed_and_remembered(
    fake: TelegramFake, notifier: TelegramNotifier
) -> None:
    fake.migrate(CHAT, -1009)
    notifier.notify("k1", "DEMO-1 is done")
    notifier.notify("k2", "DEMO-2 is done")
    assert [m["text"] for m in fake.messages(-1009)] == ["DEMO-1 is done", "DEMO-2 is done"]
    assert [e.status for e in fake.exchanges] == [400, 200, 200]  # moved once, then remembered
    assert notifier.moved == {str(CHAT): -1009}
    assert fake.violations == []


def test_a_refusal_raises_with_telegrams_description_and_never_the_token(
    fake: TelegramFake, waits: Waits, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # orch's own log setup, if a test before ran it, quiets httpx: its lines are wanted here
    caplog.set_level(logging.DEBUG, logger="httpx")
    stranger = TelegramNotifier(fake.url, TOKEN, [999], sleep=waits, clock=waits.clock)
    with pytest.raises(TelegramError, match="chat not found") as refused:
        stranger.notify("k1", "hello")
    wrong = TelegramNotifier(fake.url, "123456:wrong-token", [CHAT], sleep=waits)
    with pytest.raises(TelegramError, match="Unauthorized") as unauthorized:
        wrong.notify("k1", "hello")
    unreachable = TelegramNotifier("http://127.0.0.1:9", TOKEN, [CHAT], sleep=waits)
    with pytest.raises(TelegramError) as unreached:
        unreachable.notify("k1", "hello")
    for error in (refused.value, unauthorized.value, unreached.value):
        assert TOKEN not in str(error) and TOKEN not in repr(error)
    assert "HTTP Request" in caplog.text  # httpx logged its requests...
    assert TOKEN not in caplog.text  # ...without the token
    assert TOKEN not in repr(stranger)
    for n in (stranger, wrong, unreachable):
        n.close()


def test_a_failed_chat_does_not_keep_the_news_from_the_others(
    fake: TelegramFake, waits: Waits
) -> None:
    both = TelegramNotifier(fake.url, TOKEN, [999, CHAT], sleep=waits, clock=waits.clock)
    with pytest.raises(TelegramError, match="chat 999"):
        both.notify("k1", "DEMO-1 is done")
    assert [m["text"] for m in fake.messages(CHAT)] == ["DEMO-1 is done"]
    both.close()


def test_a_checkpoint_carries_its_buttons(fake: TelegramFake, notifier: TelegramNotifier) -> None:
    notifier.notify("k1", "", waiting_news("DEMO-1", "Greet", "approve-plan"))
    notifier.notify("k2", "", waiting_news("DEMO-1", "Greet", "confirm-deploy"))
    plan, deploy = fake.messages(CHAT)

    def buttons(message: dict[str, Any]) -> list[tuple[str, str]]:
        rows = message["reply_markup"]["inline_keyboard"]
        return [(b["text"], b["callback_data"]) for row in rows for b in row]

    assert buttons(plan) == [
        ("Approve", "a|DEMO-1|approve-plan@1.2"),
        ("Reject", "r|DEMO-1|approve-plan@1.2"),
        ("STOP", "s|DEMO-1"),
    ]
    assert [text for text, _ in buttons(deploy)] == ["Confirm deploy", "Reject", "STOP"]
    assert fake.violations == []


# -- receiving ---------------------------------------------------------------------------------


def waiting_task(world: Rig) -> str:
    task = world.intake.file("app", "Add a greeting")
    world.run_until_idle()
    assert world.intake.task(task.key).waiting_for == "approve-plan"
    return task.key


def decisions(world: Rig, key: str) -> list[tuple[str, str, dict[str, Any]]]:
    task = world.intake.task(key)
    return [(e.kind, e.actor, dict(e.payload)) for e in world.store.events(task.id)]


def deliver(bot: TelegramBot) -> None:
    """Hand the bot what people did since last time: one poll."""
    assert bot.poll_once() > 0


@pytest.fixture
def bot(notifier: TelegramNotifier, world: Rig) -> TelegramBot:
    return TelegramBot(notifier, world.intake, users=[42], chats=[CHAT])


def test_buttons_approve_and_confirm_deploy_through_the_intake(
    fake: TelegramFake, notifier: TelegramNotifier, bot: TelegramBot, world: Rig
) -> None:
    key = waiting_task(world)
    notifier.notify("k1", "", asked(world, key))
    [plan] = fake.messages(CHAT)

    fake.press(plan, "Approve", ANN)
    deliver(bot)
    assert answered(fake) == f"{key}: approve-plan approved by telegram:42:ann"
    assert decisions(world, key)[-1] == (
        EventKind.APPROVE,
        "telegram:42:ann",
        {"checkpoint": "approve-plan", "comment": ""},
    )
    assert fake.messages(CHAT)[-1]["text"] == answered(fake)  # the chat hears it too

    fake.press(plan, "Approve", ANN)  # pressed twice
    deliver(bot)
    assert answered(fake) == f"{key} was already approved by telegram:42:ann"

    world.run_until_idle()
    assert world.intake.task(key).waiting_for == "confirm-deploy"
    fake.press(plan, "Approve", ANN)  # the old message's button
    deliver(bot)
    assert "waits at confirm-deploy now, not at approve-plan" in answered(fake)

    notifier.notify("k2", "", asked(world, key))
    fake.press(fake.messages(CHAT)[-1], "Confirm deploy", ANN)
    deliver(bot)
    world.run_until_idle()
    assert world.intake.task(key).status == TaskStatus.DONE
    approvals = [d for d in decisions(world, key) if d[0] == EventKind.APPROVE]
    assert [d[2]["checkpoint"] for d in approvals] == ["approve-plan", "confirm-deploy"]
    assert len(fake.answers) == 4  # every press answered
    assert fake.violations == []


def test_a_reject_button_asks_why_and_the_reply_rejects(
    fake: TelegramFake, notifier: TelegramNotifier, bot: TelegramBot, world: Rig
) -> None:
    key = waiting_task(world)
    notifier.notify("k1", "", asked(world, key))
    fake.press(fake.messages(CHAT)[0], "Reject", ANN)
    deliver(bot)
    question = fake.messages(CHAT)[-1]
    assert question["text"].startswith(f"Reason for rejecting {key} at approve-plan?")
    assert not [d for d in decisions(world, key) if d[0] == EventKind.REJECT]

    fake.say(CHAT, ANN, "the plan misses tests", reply_to=question)
    deliver(bot)
    assert decisions(world, key)[-1] == (
        EventKind.REJECT,
        "telegram:42:ann",
        {"checkpoint": "approve-plan", "comment": "the plan misses tests"},
    )
    world.run_until_idle()
    assert world.intake.task(key).stage in (Stage.ANALYSIS, Stage.ARCHITECTURE)
    assert fake.violations == []


def test_someone_not_allowed_is_refused_and_nothing_is_recorded(
    fake: TelegramFake, notifier: TelegramNotifier, bot: TelegramBot, world: Rig
) -> None:
    key = waiting_task(world)
    before = decisions(world, key)
    notifier.notify("k1", "", asked(world, key))
    fake.press(fake.messages(CHAT)[0], "Approve", BOB)
    fake.press(fake.messages(CHAT)[0], "STOP", BOB)
    fake.say(CHAT, BOB, f"/approve {key}")
    fake.say(555, ANN, f"/stop {key}")  # the right person in a chat that is not configured
    deliver(bot)
    assert decisions(world, key) == before
    assert [a["text"] for a in fake.answers] == [
        "telegram:43:Bob is not allowed to approve here",
        "telegram:43:Bob is not allowed to stop here",
    ]
    assert "not allowed" in fake.messages(CHAT)[-1]["text"]
    assert "not allowed" in fake.messages(555)[-1]["text"]
    assert fake.violations == []


def test_commands_act_and_a_member_may_read_a_status(
    fake: TelegramFake, bot: TelegramBot, world: Rig
) -> None:
    key = waiting_task(world)
    fake.say(CHAT, BOB, f"/status {key}")
    fake.say(CHAT, ANN, f"/stop@orch_test_bot {key} wrong repository")
    fake.say(CHAT, ANN, f"/stop@another_bot {key}")  # another bot's command
    bot.username = "orch_test_bot"
    deliver(bot)
    status, stopped = (m["text"] for m in fake.messages(CHAT))
    assert f"{key}: Add a greeting" in status and "waiting at approve-plan" in status
    assert stopped == f"{key}: STOP recorded by telegram:42:ann: wrong repository"
    world.run_until_idle()
    assert world.intake.task(key).status == TaskStatus.CANCELLED
    fake.press(fake.messages(CHAT)[0] | {"reply_markup": _stop_only(key)}, "STOP", ANN)
    deliver(bot)
    assert answered(fake) == f"{key} is already cancelled: nothing to stop"


def _stop_only(key: str) -> dict[str, Any]:
    return {"inline_keyboard": [[{"text": "STOP", "callback_data": f"s|{key}"}]]}


def test_the_poll_loop_handles_updates_outlives_errors_and_stops_when_told(
    fake: TelegramFake, bot: TelegramBot, world: Rig
) -> None:
    key = waiting_task(world)
    fake.faults.add(Fault(path="getUpdates", status=502))
    stop = threading.Event()
    loop = threading.Thread(
        target=bot.poll, args=(stop,), kwargs={"timeout_s": 1, "backoff_s": 0.01}
    )
    loop.start()
    try:
        fake.say(CHAT, ANN, f"/approve {key} go")
        until(lambda: len(fake.messages(CHAT)) == 1)
    finally:
        stop.set()
        loop.join(timeout=30)
    assert not loop.is_alive()
    assert fake.messages(CHAT)[0]["text"] == f"{key}: approve-plan approved by telegram:42:ann: go"
    assert [f.status for _, _, f in fake.faults.injected] == [502]
    assert fake.unconfirmed == []  # what was handled was confirmed before the loop ended
    assert bot.username == "orch_test_bot"
    assert fake.violations == []


def until(done: Callable[[], bool], limit_s: float = 20.0) -> None:
    event = threading.Event()
    waited = 0.0
    while not done():
        assert waited < limit_s, "the bot never got there"
        event.wait(0.02)
        waited += 0.02


def test_the_webhook_secret_is_checked(
    fake: TelegramFake, notifier: TelegramNotifier, world: Rig
) -> None:
    guarded = TelegramBot(notifier, world.intake, [42], [CHAT], webhook_secret="s3cret-Value_1")
    assert guarded.check_secret("s3cret-Value_1")
    assert not guarded.check_secret("s3cret-Value_2")
    assert not guarded.check_secret(None)
    open_bot = TelegramBot(notifier, world.intake, [42], [CHAT])
    assert not open_bot.check_secret("")  # no secret configured: nothing is trusted
    guarded.set_webhook("https://orch.example/webhooks/telegram")
    assert fake.webhook is not None
    assert fake.webhook["secret_token"] == "s3cret-Value_1"
    assert fake.webhook["allowed_updates"] == ["message", "callback_query"]
    assert fake.violations == []
