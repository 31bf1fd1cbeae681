"""The OpenAI Responses wire (`POST /v1/responses`), as codex calls it."""

from __future__ import annotations

import json
import shlex
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from orch.modelserver.script import (
    Edit,
    Say,
    Script,
    Usage,
    Write,
    _Reply,
    _reply_for,
    _side_reply,
    _texts,
)

# item types that a model produced; a run of them in `input` is one earlier response
_MODEL_ITEMS = frozenset(
    {"function_call", "custom_tool_call", "reasoning", "local_shell_call", "web_search_call"}
)


def _is_model_item(item: Mapping[str, Any]) -> bool:
    kind = item.get("type", "message")
    return kind in _MODEL_ITEMS or (kind == "message" and item.get("role") == "assistant")


def _responses_input(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = body.get("input")
    if isinstance(items, str):
        return [{"type": "message", "role": "user", "content": items}]
    return [item for item in items or [] if isinstance(item, Mapping)]


def _responses_opening(body: Mapping[str, Any]) -> str:
    parts = list(_texts(body.get("instructions")))
    for item in _responses_input(body):
        if _is_model_item(item):
            break
        if item.get("type", "message") == "message":
            parts.extend(_texts(item.get("content")))
    return "\n".join(parts)


def _responses_model_turns(body: Mapping[str, Any]) -> int:
    turns, in_run = 0, False
    for item in _responses_input(body):
        model = _is_model_item(item)
        if model and not in_run:
            turns += 1
        in_run = model
    return turns


def _responses_reply(
    body: Mapping[str, Any], scripts: Sequence[Script], model_usage: Usage
) -> _Reply:
    if not body.get("tools"):
        return _side_reply(model_usage)
    opening = _responses_opening(body)
    turns = _responses_model_turns(body)
    return _reply_for(scripts, opening, turns, model_usage)


def _tool_names(body: Mapping[str, Any]) -> set[str]:
    return {t["name"] for t in body.get("tools") or [] if isinstance(t, Mapping) and "name" in t}


def _python_write(path: str, content: str) -> str:
    program = (
        "import pathlib,sys; p=pathlib.Path(sys.argv[1]); "
        "p.parent.mkdir(parents=True, exist_ok=True); p.write_text(sys.argv[2])"
    )
    return shlex.join(["python3", "-c", program, path, content])


def _python_edit(path: str, old: str, new: str) -> str:
    program = (
        "import pathlib,sys; p=pathlib.Path(sys.argv[1]); t=p.read_text(); "
        "sys.exit('old text not found in '+sys.argv[1]) if sys.argv[2] not in t else "
        "p.write_text(t.replace(sys.argv[2], sys.argv[3], 1))"
    )
    return shlex.join(["python3", "-c", program, path, old, new])


def _add_file_patch(path: str, content: str) -> str:
    lines = "".join(f"+{line}\n" for line in content[:-1].split("\n"))
    return f"*** Begin Patch\n*** Add File: {path}\n{lines}*** End Patch\n"


def _codex_items(reply: _Reply, tools: set[str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for action in reply.actions:
        if isinstance(action, Say):
            items.append(_output_message(action.text))
        elif isinstance(action, Write) and "apply_patch" in tools and _patchable(action.content):
            items.append(_custom_call("apply_patch", _add_file_patch(action.path, action.content)))
        elif isinstance(action, Write):
            items.append(_shell_call(_python_write(action.path, action.content), tools))
        elif isinstance(action, Edit):
            items.append(_shell_call(_python_edit(action.path, action.old, action.new), tools))
        else:
            items.append(_shell_call(action.command, tools))
    return items


def _patchable(content: str) -> bool:
    # apply_patch writes every added line followed by a newline
    return content.endswith("\n") and "\r" not in content


def _output_message(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_{uuid.uuid4().hex}",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _shell_call(command: str, tools: set[str]) -> dict[str, Any]:
    if "exec_command" not in tools and "shell" in tools:
        # older codex: `shell` takes an argv
        return _function_call("shell", {"command": ["bash", "-lc", command]})
    return _function_call("exec_command", {"cmd": command})


def _function_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{uuid.uuid4().hex}",
        "status": "completed",
        "call_id": f"call_{uuid.uuid4().hex}",
        "name": name,
        "arguments": json.dumps(arguments),
    }


def _custom_call(name: str, text: str) -> dict[str, Any]:
    return {
        "type": "custom_tool_call",
        "id": f"ctc_{uuid.uuid4().hex}",
        "status": "completed",
        "call_id": f"call_{uuid.uuid4().hex}",
        "name": name,
        "input": text,
    }


def _responses_usage(usage: Usage) -> dict[str, Any]:
    # the Responses wire counts cached input inside input_tokens; a script's Usage counts fresh
    # input apart, as the Messages wire does
    total_in = (
        usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    )
    return {
        "input_tokens": total_in,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_input_tokens,
            "cache_write_tokens": usage.cache_creation_input_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": total_in + usage.output_tokens,
    }


def _responses_object(body: Mapping[str, Any], reply: _Reply) -> dict[str, Any]:
    return {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": body.get("model", "scripted"),
        "output": _codex_items(reply, _tool_names(body)),
        "usage": _responses_usage(reply.usage),
    }


def _responses_events(response: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": pending},
        {"type": "response.in_progress", "response": pending},
    ]
    for index, item in enumerate(response["output"]):
        events.extend(_item_events(index, item))
    events.append({"type": "response.completed", "response": response})
    for number, event in enumerate(events):
        yield event["type"], {**event, "sequence_number": number}


def _item_events(index: int, item: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    ids = {"output_index": index, "item_id": item["id"]}
    if item["type"] == "message":
        yield {
            "type": "response.output_item.added",
            "output_index": index,
            "item": {**item, "status": "in_progress", "content": []},
        }
        part = item["content"][0]
        text = part["text"]
        yield {
            "type": "response.content_part.added",
            **ids,
            "content_index": 0,
            "part": {**part, "text": ""},
        }
        yield {"type": "response.output_text.delta", **ids, "content_index": 0, "delta": text}
        yield {"type": "response.output_text.done", **ids, "content_index": 0, "text": text}
        yield {"type": "response.content_part.done", **ids, "content_index": 0, "part": part}
    elif item["type"] == "function_call":
        yield {
            "type": "response.output_item.added",
            "output_index": index,
            "item": {**item, "status": "in_progress", "arguments": ""},
        }
        yield {"type": "response.function_call_arguments.delta", **ids, "delta": item["arguments"]}
        yield {
            "type": "response.function_call_arguments.done",
            **ids,
            "arguments": item["arguments"],
        }
    else:
        yield {
            "type": "response.output_item.added",
            "output_index": index,
            "item": {**item, "status": "in_progress", "input": ""},
        }
        yield {"type": "response.custom_tool_call_input.delta", **ids, "delta": item["input"]}
        yield {"type": "response.custom_tool_call_input.done", **ids, "input": item["input"]}
    yield {"type": "response.output_item.done", "output_index": index, "item": item}
