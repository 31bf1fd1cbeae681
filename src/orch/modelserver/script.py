"""The script vocabulary, and which script turn answers a request (on either wire)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Write:
    """Create or overwrite a file; `path` is relative to the agent's working directory."""

    path: str
    content: str


@dataclass(frozen=True)
class Edit:
    """Replace the first occurrence of `old` by `new` in an existing file."""

    path: str
    old: str
    new: str


@dataclass(frozen=True)
class Shell:
    """Run a command through the agent's shell tool."""

    command: str


@dataclass(frozen=True)
class Say:
    """Plain assistant text; a turn of only Say items ends the conversation."""

    text: str


Action = Write | Edit | Shell | Say


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 1000
    output_tokens: int = 200
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


ZERO_USAGE = Usage(0, 0, 0, 0)


@dataclass(frozen=True)
class Fault:
    """An error the server answers a model request with instead of a turn, as the provider
    would send it: its status, its error type (`overloaded_error`, `authentication_error`),
    and a `retry-after` header when given."""

    status: int
    error_type: str
    message: str = "injected by the scripted model server"
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Turn:
    """One model response: tool calls for every Write/Edit/Shell, text blocks for every Say."""

    actions: tuple[Action, ...]
    usage: Usage = Usage()


@dataclass(frozen=True)
class Script:
    match: str
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Recorded:
    """One request as received, with the script and turn it was answered from.

    `turn` is the script turn played, `len(script.turns)` for the closing text past the last
    turn, and None with `script=None` for side and unmatched requests.
    """

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    script: str | None
    turn: int | None


CLOSING_TEXT = "Done."
SIDE_TEXT = "OK"
CODEX_KEY_ENV = "ORCH_MODEL_SERVER_API_KEY"


# ---------------------------------------------------------------------------------------------
# What to answer: a pure function of the scripts and the request body


@dataclass(frozen=True)
class _Reply:
    actions: tuple[Action, ...]
    usage: Usage
    script: str | None
    turn: int | None


def _side_reply(model_usage: Usage) -> _Reply:
    return _Reply((Say(SIDE_TEXT),), model_usage, None, None)


def _reply_for(
    scripts: Sequence[Script], opening: str, model_turns: int, model_usage: Usage
) -> _Reply:
    script = next((s for s in scripts if s.match in opening), None)
    if script is None:
        return _side_reply(model_usage)
    if model_turns >= len(script.turns):
        return _Reply((Say(CLOSING_TEXT),), model_usage, script.match, len(script.turns))
    turn = script.turns[model_turns]
    return _Reply(turn.actions, turn.usage, script.match, model_turns)


def _texts(content: Any) -> Iterator[str]:
    """Text of a message `content` (a string or a list of typed blocks) on either wire."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if isinstance(block, Mapping) and isinstance(block.get("text"), str):
                yield block["text"]


def _find(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.search(text)
    return found.group(1).strip() if found else None
