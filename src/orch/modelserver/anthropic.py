"""The Anthropic Messages wire (`POST /v1/messages`), as Claude Code calls it."""

from __future__ import annotations

import json
import os
import posixpath
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from orch.modelserver.script import (
    Action,
    Edit,
    Say,
    Script,
    Shell,
    Usage,
    Write,
    _find,
    _Reply,
    _reply_for,
    _side_reply,
    _texts,
)

_CWD_LINE = re.compile(r"Primary working directory: (.+)")


def _anthropic_opening(body: Mapping[str, Any]) -> str:
    parts = list(_texts(body.get("system")))
    messages = body.get("messages") or []
    if messages and messages[0].get("role") == "user":
        parts.extend(_texts(messages[0].get("content")))
    return "\n".join(parts)


def _anthropic_reply(
    body: Mapping[str, Any], scripts: Sequence[Script], model_usage: Usage
) -> _Reply:
    if not body.get("tools"):
        return _side_reply(model_usage)
    turns = sum(1 for m in body.get("messages") or [] if m.get("role") == "assistant")
    return _reply_for(scripts, _anthropic_opening(body), turns, model_usage)


def _absolute(path: str, cwd: str | None) -> str:
    if posixpath.isabs(path) or cwd is None:
        return path
    return posixpath.normpath(posixpath.join(cwd, path))


def _claude_blocks(actions: Sequence[Action], cwd: str | None) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    read: set[str] = set()
    for action in actions:
        if isinstance(action, Say):
            blocks.append({"type": "text", "text": action.text})
            continue
        if isinstance(action, Shell):
            arguments = {"command": action.command, "description": "Run a scripted command"}
            blocks.append(_tool_use("Bash", arguments))
            continue
        file_path = _absolute(action.path, cwd)
        if file_path not in read and _needs_read(action, file_path):
            # Claude Code runs a response's tool calls in order, so this Read lands first
            blocks.append(_tool_use("Read", {"file_path": file_path}))
        read.add(file_path)
        if isinstance(action, Write):
            blocks.append(_tool_use("Write", {"file_path": file_path, "content": action.content}))
        else:
            arguments = {"file_path": file_path, "old_string": action.old, "new_string": action.new}
            blocks.append(_tool_use("Edit", arguments))
    return blocks


def _needs_read(action: Write | Edit, file_path: str) -> bool:
    # Claude Code refuses to Edit, or to overwrite with Write, a file this session has not
    # read; a Read of a missing file would only add an error result, so a new file skips it
    return isinstance(action, Edit) or (posixpath.isabs(file_path) and os.path.exists(file_path))


def _tool_use(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex}", "name": name, "input": arguments}


def _anthropic_usage(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
    }


def _anthropic_message(body: Mapping[str, Any], reply: _Reply) -> dict[str, Any]:
    cwd = _find(_CWD_LINE, _anthropic_opening(body))
    content = _claude_blocks(reply.actions, cwd)
    tool_use = any(block["type"] == "tool_use" for block in content)
    return {
        "id": f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "scripted"),
        "content": content,
        "stop_reason": "tool_use" if tool_use else "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_usage(reply.usage),
    }


def _anthropic_events(message: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    # as the real API streams it: message_start knows the input but counts one output token;
    # the output's real count comes only with message_delta, at the end of the message
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {**message["usage"], "output_tokens": min(1, message["usage"]["output_tokens"])},
    }
    yield "message_start", {"type": "message_start", "message": start}
    for index, block in enumerate(message["content"]):
        yield from _anthropic_block_events(index, block)
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    yield "message_delta", {"type": "message_delta", "delta": delta, "usage": message["usage"]}
    yield "message_stop", {"type": "message_stop"}


def _anthropic_block_events(
    index: int, block: Mapping[str, Any]
) -> Iterator[tuple[str, dict[str, Any]]]:
    if block["type"] == "text":
        opened: dict[str, Any] = {"type": "text", "text": ""}
        delta: dict[str, Any] = {"type": "text_delta", "text": block["text"]}
    else:
        opened = {**block, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
    yield (
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": opened},
    )
    yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    yield "content_block_stop", {"type": "content_block_stop", "index": index}
