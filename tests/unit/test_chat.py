"""Chat commands and buttons: how they parse, who may do what, and what each answers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orch.domain.errors import Conflict, NotFound
from orch.domain.model import Task
from orch.domain.states import Stage, TaskStatus
from orch.services.chat import (
    BadCommand,
    Chat,
    ChatCommand,
    Person,
    Verb,
    button_data,
    parse_button,
    parse_command,
    parse_reason,
    reason_question,
)

WAITING = Task(
    id=1,
    key="DEMO-1",
    repo="app",
    title="Add a greeting",
    body="",
    stage=Stage.ARCHITECTURE,
    status=TaskStatus.WAITING,
    version=3,
    branch="orch/DEMO-1",
    pipeline={},
    waiting_for="approve-plan",
)
ANN = Person(42, "ann", -100)  # may act
BOB = Person(43, "bob", -100)  # a member of the chat who may not act
CHAT = -100


class Actions:
    """Intake's answers, kept in memory: one answer a wait, one STOP a task."""

    def __init__(self, *tasks: Task) -> None:
        self.tasks = {t.key: t for t in tasks}
        self.decided: dict[str, tuple[bool, str, str]] = {}
        self.stopped: dict[str, tuple[str, str]] = {}

    def task(self, key: str) -> Task:
        if key.upper() not in self.tasks:
            raise NotFound(f"no task for ticket {key}")
        return self.tasks[key.upper()]

    def decide(
        self,
        key: str,
        approve: bool,
        actor: str,
        comment: str = "",
        checkpoint: str | None = None,
        wait: str | None = None,
    ) -> bool:
        waiting = self.task(key).waiting_for
        if checkpoint is not None and waiting != checkpoint:
            raise Conflict(f"{key} waits at {waiting}, not at {checkpoint}")
        said = (approve, actor, comment)
        if key in self.decided:
            if self.decided[key] == said:
                return False
            raise Conflict(f"{key} was already answered by {self.decided[key][1]}; that stands")
        self.decided[key] = said
        return True

    def stop(self, key: str, actor: str, reason: str = "") -> tuple[Task, bool]:
        task = self.task(key)
        if task.status in (TaskStatus.DONE, TaskStatus.CANCELLED) or key in self.stopped:
            return task, False
        self.stopped[key] = (actor, reason)
        return task, True


def chat(
    *tasks: Task, users: tuple[int, ...] = (42,), chats: tuple[int | str, ...] = (CHAT,)
) -> tuple[Chat, Actions]:
    actions = Actions(*(tasks or (WAITING,)))
    return Chat(actions, users, chats), actions


# -- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("/approve DEMO-1", ChatCommand(Verb.APPROVE, "DEMO-1")),
        ("/approve DEMO-1 looks right", ChatCommand(Verb.APPROVE, "DEMO-1", "looks right")),
        ("/approve@orch_bot DEMO-1", ChatCommand(Verb.APPROVE, "DEMO-1")),
        (
            "/reject DEMO-1 the plan misses tests",
            ChatCommand(Verb.REJECT, "DEMO-1", "the plan misses tests"),
        ),
        ("/stop DEMO-1", ChatCommand(Verb.STOP, "DEMO-1")),
        ("/STOP demo-1 wrong repo", ChatCommand(Verb.STOP, "demo-1", "wrong repo")),
        ("/status DEMO-1", ChatCommand(Verb.STATUS, "DEMO-1")),
        ("/help", ChatCommand(Verb.HELP)),
    ],
)
def test_commands_parse_into_what_they_ask(text: str, command: ChatCommand) -> None:
    assert parse_command(text) == command


@pytest.mark.parametrize("text", ["hello there", "", "/start", "/deploy DEMO-1", "approve DEMO-1"])
def test_messages_that_are_not_our_commands_are_left_alone(text: str) -> None:
    assert parse_command(text) is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("/approve", "/approve KEY"),
        ("/reject DEMO-1", "needs a reason"),
        ("/stop <script>", "/stop KEY"),
        ("/status DEMO-1 now", "/status KEY"),
    ],
)
def test_a_malformed_command_says_how_it_reads(text: str, says: str) -> None:
    with pytest.raises(BadCommand, match=says):
        parse_command(text)


def test_buttons_carry_the_key_and_the_checkpoint_and_fit_in_64_bytes() -> None:
    for verb in (Verb.APPROVE, Verb.REJECT):
        data = button_data(verb, "DEMO-1", "confirm-deploy@12.345")
        assert data is not None and len(data.encode()) <= 64
        assert parse_button(data) == ChatCommand(
            verb, "DEMO-1", checkpoint="confirm-deploy", wait="12.345", button=True
        )
    assert button_data(Verb.STOP, "DEMO-1") == "s|DEMO-1"
    assert parse_button("s|DEMO-1") == ChatCommand(Verb.STOP, "DEMO-1", button=True)
    assert button_data(Verb.APPROVE, "DEMO-1", "x" * 60) is None  # too long: no button


@pytest.mark.parametrize(
    "data",
    [
        "",
        "x|DEMO-1|a",
        "a|DEMO-1",
        "s|DEMO-1|a",
        "a||approve-plan@1.3",
        "a|D|",
        "a|DEMO-1|approve-plan",  # names no wait
        "a|DEMO-1|approve-plan@x",
    ],
)
def test_button_data_that_is_not_ours_is_refused(data: str) -> None:
    with pytest.raises(BadCommand):
        parse_button(data)


def test_a_reply_to_the_reason_question_is_the_rejection_it_completes() -> None:
    question = reason_question("DEMO-1", "approve-plan@1.3")
    assert parse_reason(question, "  misses tests ") == ChatCommand(
        Verb.REJECT, "DEMO-1", "misses tests", checkpoint="approve-plan", wait="1.3", button=True
    )
    assert parse_reason("Something else entirely", "misses tests") is None


# -- who may do what ---------------------------------------------------------------------------


def test_a_configured_user_in_a_configured_chat_approves_as_a_telegram_actor() -> None:
    c, actions = chat()
    reply = c.run(ANN, ChatCommand(Verb.APPROVE, "DEMO-1", "ok"))
    assert reply.recorded
    assert actions.decided == {"DEMO-1": (True, "telegram:42:ann", "ok")}
    assert "approve-plan approved by telegram:42:ann" in reply.text


def test_someone_not_configured_may_not_act_and_nothing_is_recorded() -> None:
    c, actions = chat()
    for verb, text in ((Verb.APPROVE, ""), (Verb.REJECT, "no"), (Verb.STOP, "")):
        reply = c.run(BOB, ChatCommand(verb, "DEMO-1", text))
        assert "telegram:43:bob is not allowed" in reply.text
        assert not reply.recorded
    assert actions.decided == {} and actions.stopped == {}


def test_a_configured_user_in_another_chat_may_not_act_nor_read() -> None:
    c, actions = chat()
    elsewhere = Person(42, "ann", 555)
    assert "not allowed" in c.run(elsewhere, ChatCommand(Verb.APPROVE, "DEMO-1")).text
    assert "not allowed" in c.run(elsewhere, ChatCommand(Verb.STATUS, "DEMO-1")).text
    assert actions.decided == {}


def test_any_member_of_a_configured_chat_may_read_a_status() -> None:
    c, _ = chat()
    reply = c.run(BOB, ChatCommand(Verb.STATUS, "DEMO-1"))
    assert "DEMO-1: Add a greeting" in reply.text
    assert "waiting at approve-plan" in reply.text


def test_without_configured_users_nobody_may_act() -> None:
    c, actions = chat(users=())
    assert "not allowed" in c.run(ANN, ChatCommand(Verb.STOP, "DEMO-1")).text
    assert actions.stopped == {}


def test_a_chat_configured_by_its_public_name_counts() -> None:
    c, actions = chat(chats=("@Orch_News",))
    person = Person(42, "ann", -1001234, chat_name="orch_news")
    assert c.run(person, ChatCommand(Verb.STOP, "DEMO-1")).recorded
    assert actions.stopped == {"DEMO-1": ("telegram:42:ann", "")}


def test_a_chat_that_became_another_still_counts() -> None:
    moved: dict[str, int] = {}
    actions = Actions(WAITING)
    c = Chat(actions, [42], [CHAT], lambda: moved.values())
    upgraded = Person(42, "ann", -1009)
    assert not c.in_chat(upgraded)
    moved[str(CHAT)] = -1009
    assert c.in_chat(upgraded)


# -- what an action answers --------------------------------------------------------------------


def test_a_button_pressed_twice_says_it_was_already_approved() -> None:
    c, _ = chat()
    press = parse_button("a|DEMO-1|approve-plan@1.3")
    assert c.run(ANN, press).recorded
    again = c.run(ANN, press)
    assert not again.recorded
    assert again.text == "DEMO-1 was already approved by telegram:42:ann"


def test_a_different_answer_to_an_answered_wait_is_refused_with_what_stands() -> None:
    c, actions = chat(users=(42, 44))
    c.run(ANN, ChatCommand(Verb.APPROVE, "DEMO-1"))
    reply = c.run(Person(44, "cy", CHAT), ChatCommand(Verb.REJECT, "DEMO-1", "no"))
    assert "already answered by telegram:42:ann" in reply.text
    assert actions.decided["DEMO-1"][0] is True


def test_a_button_after_the_wait_is_over_says_where_the_task_is() -> None:
    moved_on = replace(WAITING, stage=Stage.DEVELOPMENT, status=TaskStatus.ACTIVE, waiting_for=None)
    c, actions = chat(moved_on)
    reply = c.run(ANN, parse_button("a|DEMO-1|approve-plan@1.3"))
    assert reply.text == "DEMO-1 is no longer waiting: it is at development, active"
    assert actions.decided == {}


def test_a_button_for_another_checkpoint_than_the_current_one_is_refused() -> None:
    at_deploy = replace(WAITING, stage=Stage.DEPLOY, waiting_for="confirm-deploy")
    c, actions = chat(at_deploy)
    reply = c.run(ANN, parse_button("a|DEMO-1|approve-plan@1.3"))
    assert "waits at confirm-deploy now, not at approve-plan" in reply.text
    assert actions.decided == {}
    assert c.run(ANN, parse_button("a|DEMO-1|confirm-deploy@1.3")).recorded


def test_a_button_of_an_earlier_wait_at_the_same_checkpoint_is_refused() -> None:
    # the plan was rejected and written again: the same question, asked anew (version 5)
    asked_again = replace(WAITING, version=5)
    c, actions = chat(asked_again)
    reply = c.run(ANN, parse_button("a|DEMO-1|approve-plan@1.3"))
    assert "asked at approve-plan again since that message" in reply.text
    assert actions.decided == {}
    assert c.run(ANN, parse_button("a|DEMO-1|approve-plan@1.5")).recorded


def test_a_reject_button_asks_for_the_reason_and_the_reason_rejects() -> None:
    c, actions = chat()
    asked = c.run(ANN, parse_button("r|DEMO-1|approve-plan@1.3"))
    assert asked.ask_reason == ("DEMO-1", "approve-plan@1.3")
    assert actions.decided == {}
    answer = parse_reason(reason_question(*asked.ask_reason), "misses tests")
    assert answer is not None
    assert c.run(ANN, answer).recorded
    assert actions.decided == {"DEMO-1": (False, "telegram:42:ann", "misses tests")}


def test_stop_is_recorded_once_and_a_finished_task_has_nothing_to_stop() -> None:
    done = replace(WAITING, key="DEMO-2", stage=Stage.DONE, status=TaskStatus.DONE)
    c, actions = chat(WAITING, done)
    assert c.run(ANN, ChatCommand(Verb.STOP, "DEMO-1", "wrong repo")).recorded
    assert "already asked" in c.run(ANN, ChatCommand(Verb.STOP, "DEMO-1")).text
    assert (
        c.run(ANN, ChatCommand(Verb.STOP, "DEMO-2")).text
        == "DEMO-2 is already done: nothing to stop"
    )
    assert actions.stopped == {"DEMO-1": ("telegram:42:ann", "wrong repo")}


def test_an_unknown_key_is_answered_not_raised() -> None:
    c, _ = chat()
    assert c.run(ANN, ChatCommand(Verb.APPROVE, "NOPE-9")).text == "no task for ticket NOPE-9"
