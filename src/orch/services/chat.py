"""What a chat message or a button press does: parse it, check who sent it, and turn it into one
of intake's actions (approve, reject, STOP) or a read of the task. No HTTP here: a chat adapter
(Telegram) turns updates into `Person` + `ChatCommand` and sends back the `Reply`.

Buttons carry compact data (`a|KEY|checkpoint`, `r|KEY|checkpoint`, `s|KEY`, at most 64 bytes)
and name the checkpoint they answer, so a button left on an old message can never answer a
later wait.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from orch.domain.errors import Conflict, NotFound, OrchError
from orch.domain.model import Task
from orch.domain.states import TaskStatus, is_terminal

BUTTON_DATA_BYTES = 64  # Telegram's limit on callback_data


class Actions(Protocol):
    """What a chat may do: `orch.services.intake.Intake` is one."""

    def decide(
        self,
        key: str,
        approve: bool,
        actor: str,
        comment: str = "",
        checkpoint: str | None = None,
        wait: str | None = None,
    ) -> bool: ...

    def stop(self, key: str, actor: str, reason: str = "") -> tuple[Task, bool]: ...

    def task(self, key: str) -> Task: ...


class Verb(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    STOP = "stop"
    STATUS = "status"
    HELP = "help"


# what only the configured people may do; the rest any member of a configured chat may
ACTING = frozenset({Verb.APPROVE, Verb.REJECT, Verb.STOP})

HELP = "\n".join(
    (
        "/approve KEY [comment]: approve the checkpoint KEY waits at",
        "/reject KEY reason: reject it, with the reason",
        "/stop KEY [reason]: cancel the task",
        "/status KEY: where the task is",
    )
)
USAGE = {
    Verb.APPROVE: "/approve KEY [comment]",
    Verb.REJECT: "/reject KEY reason",
    Verb.STOP: "/stop KEY [reason]",
    Verb.STATUS: "/status KEY",
}
_BUTTON_VERBS = {"a": Verb.APPROVE, "r": Verb.REJECT, "s": Verb.STOP}
_BUTTON_LETTERS = {verb: letter for letter, verb in _BUTTON_VERBS.items()}
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.#-]{0,63}$")
_QUESTION = re.compile(r"^Reason for rejecting (\S+) at (\S+)\?.*\(question (\d+\.\d+)\)", re.S)


class BadCommand(OrchError):
    """A command or button that does not parse; the message says how it should read."""


@dataclass(frozen=True)
class ChatCommand:
    verb: Verb
    key: str = ""
    text: str = ""  # the comment of an approval, the reason of a rejection or a STOP
    checkpoint: str = ""  # a button's (or a reason's): the only checkpoint it may answer
    # a button's: the one wait it answers ("<task id>.<version>"), not the same question asked
    # again after a rework, nor another task of the same ticket
    wait: str = ""
    button: bool = False  # pressed, rather than typed


@dataclass(frozen=True)
class Person:
    """Who sent an update, and from which chat."""

    user_id: int
    name: str  # their username, or else their first name
    chat_id: int | str
    chat_name: str = ""  # the chat's public @username, if it has one

    @property
    def actor(self) -> str:
        return f"telegram:{self.user_id}:{self.name}"


@dataclass(frozen=True)
class Reply:
    text: str  # what to tell the person
    recorded: bool = False  # an action was recorded (worth telling the whole chat)
    ask_reason: tuple[str, str] | None = None  # (key, checkpoint): ask why it is rejected


def parse_command(text: str) -> ChatCommand | None:
    """`/verb[@bot] KEY rest…` as a command, None for a message that is not one of ours."""
    head, _, rest = text.strip().partition(" ")
    if not head.startswith("/"):
        return None
    name = head[1:].split("@", 1)[0].lower()
    try:
        verb = Verb(name)
    except ValueError:
        return None
    if verb == Verb.HELP:
        return ChatCommand(Verb.HELP)
    key, _, more = rest.strip().partition(" ")
    if not key or not _KEY.match(key):
        raise BadCommand(f"usage: {USAGE[verb]}")
    more = more.strip()
    if verb == Verb.REJECT and not more:
        raise BadCommand(f"a rejection needs a reason: {USAGE[verb]}")
    if verb == Verb.STATUS and more:
        raise BadCommand(f"usage: {USAGE[verb]}")
    return ChatCommand(verb, key, more)


def button_data(verb: Verb, key: str, checkpoint: str = "") -> str | None:
    """The callback data of a button, or None if it would not fit in 64 bytes."""
    letter = _BUTTON_LETTERS[verb]
    data = f"{letter}|{key}" if verb == Verb.STOP else f"{letter}|{key}|{checkpoint}"
    return data if len(data.encode()) <= BUTTON_DATA_BYTES else None


def parse_button(data: str) -> ChatCommand:
    parts = data.split("|")
    verb = _BUTTON_VERBS.get(parts[0]) if parts else None
    if verb is None or not (2 <= len(parts) <= 3) or not _KEY.match(parts[1]):
        raise BadCommand("this button is not one of orch's")
    if verb == Verb.STOP:
        if len(parts) != 2:
            raise BadCommand("this button is not one of orch's")
        return ChatCommand(Verb.STOP, parts[1], button=True)
    if len(parts) != 3 or not parts[2]:
        raise BadCommand("this button is not one of orch's")
    checkpoint, wait = _asked(parts[2])
    return ChatCommand(verb, parts[1], checkpoint=checkpoint, wait=wait, button=True)


def asked(checkpoint: str, wait: str) -> str:
    """A question as a button or a reason's question names it: its checkpoint and its wait."""
    return f"{checkpoint}@{wait}" if wait else checkpoint


def _asked(text: str) -> tuple[str, str]:
    checkpoint, _, wait = text.partition("@")
    if not checkpoint or not re.fullmatch(r"\d+\.\d+", wait):
        raise BadCommand("this button is from an older message: answer with a command instead")
    return checkpoint, wait


def reason_question(key: str, question: str) -> str:
    """The question a rejecting button asks about `question` (as `asked` names it); a reply to
    it is read back by `parse_reason`."""
    checkpoint, _, wait = question.partition("@")
    return (
        f"Reason for rejecting {key} at {checkpoint}? Reply to this message with it."
        f" (question {wait})"
    )


def parse_reason(question: str, answer: str) -> ChatCommand | None:
    """A reply to `reason_question`'s message as the rejection it completes, else None."""
    match = _QUESTION.match(question.strip())
    if match is None:
        return None
    checkpoint, wait = match[2], match[3]
    return ChatCommand(
        Verb.REJECT, match[1], answer.strip(), checkpoint=checkpoint, wait=wait, button=True
    )


class Chat:
    """Runs commands for people: configured users in configured chats may act, any member of a
    configured chat may read a status, nobody else may do anything."""

    def __init__(
        self,
        actions: Actions,
        users: Iterable[int],
        chats: Iterable[int | str],
        more_chats: Callable[[], Iterable[int | str]] = tuple,
    ) -> None:
        self.actions = actions
        self.users = frozenset(users)
        self.chats = frozenset(_chat_ref(c) for c in chats)
        # chats that became others (a group upgraded to a supergroup) and still count
        self.more_chats = more_chats

    def in_chat(self, person: Person) -> bool:
        known = self.chats | {_chat_ref(c) for c in self.more_chats()}
        named = f"@{person.chat_name}".lower() if person.chat_name else None
        return _chat_ref(person.chat_id) in known or (named is not None and named in known)

    def may(self, person: Person, verb: Verb) -> bool:
        if not self.in_chat(person):
            return False
        return verb not in ACTING or person.user_id in self.users

    def run(self, person: Person, command: ChatCommand) -> Reply:
        if not self.may(person, command.verb):
            return Reply(f"{person.actor} is not allowed to {command.verb} here")
        try:
            if command.verb == Verb.HELP:
                return Reply(HELP)
            if command.verb == Verb.STATUS:
                return Reply(status(self.actions.task(command.key)))
            if command.verb == Verb.STOP:
                return self._stop(person, command)
            return self._decide(person, command)
        except NotFound as exc:
            return Reply(str(exc))

    def _decide(self, person: Person, command: ChatCommand) -> Reply:
        approve = command.verb == Verb.APPROVE
        task = self.actions.task(command.key)
        key = task.key
        if task.status != TaskStatus.WAITING or not task.waiting_for:
            gone = "no longer waiting" if command.button else "not waiting at a checkpoint"
            return Reply(f"{key} is {gone}: it is at {task.stage}, {task.status}")
        checkpoint = task.waiting_for
        if command.checkpoint and command.checkpoint != checkpoint:
            return Reply(
                f"{key} waits at {checkpoint} now, not at {command.checkpoint}: nothing recorded"
            )
        if command.wait and command.wait != f"{task.id}.{task.version}":
            return Reply(
                f"{key} was asked at {checkpoint} again since that message: answer the latest"
                " one; nothing recorded"
            )
        if not approve and not command.text:
            if command.button:
                return Reply(
                    f"Why reject {key}? Reply to the question.",
                    ask_reason=(key, asked(checkpoint, command.wait)),
                )
            return Reply(f"a rejection needs a reason: {USAGE[Verb.REJECT]}")
        try:
            recorded = self.actions.decide(
                key, approve, person.actor, command.text, checkpoint, command.wait or None
            )
        except Conflict as exc:
            return Reply(str(exc))
        said = "approved" if approve else "rejected"
        if not recorded:
            return Reply(f"{key} was already {said} by {person.actor}")
        why = f": {command.text}" if command.text else ""
        return Reply(f"{key}: {checkpoint} {said} by {person.actor}{why}", recorded=True)

    def _stop(self, person: Person, command: ChatCommand) -> Reply:
        task, recorded = self.actions.stop(command.key, person.actor, command.text)
        if recorded:
            why = f": {command.text}" if command.text else ""
            return Reply(f"{task.key}: STOP recorded by {person.actor}{why}", recorded=True)
        if is_terminal(task.status):
            return Reply(f"{task.key} is already {task.status}: nothing to stop")
        return Reply(f"{task.key}: STOP was already asked; it is being cancelled")


def status(task: Task) -> str:
    lines = [f"{task.key}: {task.title}", f"at {task.stage}, {task.status}"]
    if task.status == TaskStatus.WAITING and task.waiting_for:
        lines[-1] += f", waiting at {task.waiting_for}"
    if task.status_reason:
        lines.append(task.status_reason)
    if task.cost_usd:
        lines.append(f"cost ${task.cost_usd:.2f}")
    return "\n".join(lines)


def _chat_ref(chat: int | str) -> str:
    """One spelling of a chat: its id as digits, or its @username in lower case."""
    text = str(chat).strip()
    return text.lower() if text.startswith("@") else text
