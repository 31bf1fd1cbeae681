"""A scripted, offline model server that the real `claude` and `codex` CLIs can talk to.

It serves the Anthropic Messages API (`POST /v1/messages`, what Claude Code calls through
`ANTHROPIC_BASE_URL`) and the OpenAI Responses API (`POST /v1/responses`, what codex calls through
a custom `model_providers.<name>` entry with `wire_api="responses"`), both as streaming SSE and as
plain JSON when a request asks for `stream: false`. It binds 127.0.0.1 and runs in a background
thread of the test or demo that starts it.

Scripts
    A `Script` is chosen by a substring (`match`) of the conversation's opening text: the system
    prompt / instructions plus the first user message (Claude Code packs its environment
    reminders and the prompt as text blocks of one first user message; codex sends a developer
    message, an `<environment_context>` user message and then the prompt as a second user
    message, so for the Responses wire the opening is every message item before the first model
    output). The first script whose `match` occurs wins.

Stateless turn selection
    Both CLIs resend the whole conversation on every request (codex sends `store: false` and the
    full `input`, never `previous_response_id`), so the server keeps no per-conversation state:
    the turn to play is the number of model turns already in the request. Anthropic: messages
    with role "assistant" (Claude Code merges the blocks of one response into one message).
    Responses: one model turn is a run of consecutive model-output items (assistant messages,
    reasoning, function and custom tool calls) between tool outputs/user messages. Past the
    script's last turn the server closes the conversation with a short text (end_turn), so an
    agent always ends. Several agents can run concurrently against one server.

Side requests
    A request that offers no tools is never scripted, and neither is one that matches no script:
    it gets a short plain text, consumes no turn and is recorded with `script=None`. In our runs
    neither CLI sent any side request: Claude Code 2.1.328 `-p` (with or without
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1, in acceptEdits and in manual mode with refused
    Bash commands) and codex 0.169.0 `exec` only made main-loop calls, each offering its tools.
    The "no tools" rule guards against helper queries (title or topic detection, command-prefix
    checks) that would carry the same first user message and must not consume a turn; they are
    tool-less one-shot prompts.

Tool mapping per wire
    Claude Code: Write -> `Write {file_path, content}`, Edit -> `Edit {file_path, old_string,
    new_string}`, Shell -> `Bash {command, description}`. Paths must be absolute, so a relative
    script path is resolved against the "Primary working directory: ..." line Claude Code puts in
    the first user message. Claude Code refuses to Edit, or to overwrite with Write, a file the
    session has not read, so such a call is preceded by a `Read {file_path}` call in the same
    response (it runs a response's tool calls in order): always for an Edit, and for a Write
    when the file exists (checked on disk, so the server must see the agent's files).
    Codex: Shell -> function tool `exec_command {cmd}`; Write -> freeform tool `apply_patch`
    with an `*** Add File` patch when the request offers it and the content ends with a newline
    (a patch cannot express a missing final newline), otherwise a `python3` one-liner through
    `exec_command` that writes the exact text; Edit -> a `python3` one-liner through
    `exec_command` that replaces the first occurrence of `old` and fails when it is absent
    (apply_patch works on whole lines only). Codex offers `apply_patch` only for models it
    knows (e.g. `gpt-5.5`); for an unknown name it falls back to metadata without it. Codex runs
    the tool calls of one response concurrently: put dependent actions in separate turns.

Usage
    Every response reports its turn's `Usage` in the wire's own fields: Anthropic as the real API
    streams it, the input in `message_start.message.usage` (with `output_tokens: 1`) and the
    whole usage in `message_delta.usage`; Responses in
    `response.completed.response.usage` (`input_tokens`, all input, cached included as OpenAI
    counts it, `input_tokens_details.cached_tokens` =
    cache reads, `input_tokens_details.cache_write_tokens` = cache creation, `output_tokens`,
    `output_tokens_details.reasoning_tokens` = 0, `total_tokens`). Answers that play no script
    turn (side requests, the closing text) report `model_usage`, zero by default, so an agent's
    totals equal the sum of its script's usages.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "Edit",
    "ModelServer",
    "Recorded",
    "Say",
    "Script",
    "Shell",
    "Turn",
    "Usage",
    "Write",
]


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
_CWD_LINE = re.compile(r"Primary working directory: (.+)")


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


# ---------------------------------------------------------------------------------------------
# Anthropic Messages wire


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


# ---------------------------------------------------------------------------------------------
# OpenAI Responses wire

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


def _find(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.search(text)
    return found.group(1).strip() if found else None


# ---------------------------------------------------------------------------------------------
# HTTP


class _HttpServer(ThreadingHTTPServer):
    # join the handler threads on close, so stop() leaves nothing running
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], owner: ModelServer) -> None:
        super().__init__(address, _Handler)
        self.owner = owner


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer
    # a client that stalls mid-request must not keep stop() waiting forever
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        # requests are recorded on the server; stderr noise would only clutter test output
        return

    def do_GET(self) -> None:
        self.server.owner._record(self.path, dict(self.headers), {}, None)
        self._send_json(404, {"error": {"type": "not_found", "message": self.path}})

    def do_POST(self) -> None:
        body = self._read_json()
        route = self.path.split("?", 1)[0].rstrip("/")
        owner = self.server.owner
        if route.endswith("/messages/count_tokens"):
            owner._record(self.path, dict(self.headers), body, None)
            self._send_json(200, {"input_tokens": 1})
        elif route.endswith("/messages"):
            reply = owner._answer(self.path, dict(self.headers), body, _anthropic_reply)
            message = _anthropic_message(body, reply)
            if body.get("stream"):
                self._send_sse(_anthropic_events(message))
            else:
                self._send_json(200, message)
        elif route.endswith("/responses"):
            reply = owner._answer(self.path, dict(self.headers), body, _responses_reply)
            response = _responses_object(body, reply)
            if body.get("stream", False):
                self._send_sse(_responses_events(response))
            else:
                self._send_json(200, response)
        else:
            owner._record(self.path, dict(self.headers), body, None)
            self._send_json(404, {"error": {"type": "not_found", "message": self.path}})

    def _read_json(self) -> dict[str, Any]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = self._read_chunked()
        else:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def _read_chunked(self) -> bytes:
        data = bytearray()
        while size := int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16):
            data += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()
        return bytes(data)

    def _send_json(self, status: int, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def _send_sse(self, events: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        # the body ends when the connection closes: no keep-alive, so stop() never waits on an
        # idle pooled connection
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for name, data in events:
                self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return


_Responder = Callable[[Mapping[str, Any], Sequence[Script], Usage], _Reply]


class ModelServer:
    """The scripted server: start()/stop() or a `with` block; `url` once started."""

    def __init__(
        self,
        scripts: Sequence[Script] = (),
        *,
        model_usage: Usage | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._scripts: tuple[Script, ...] = tuple(scripts)
        self._model_usage = model_usage or ZERO_USAGE
        self._address = (host, port)
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> ModelServer:
        if self._http is not None:
            return self
        self._http = _HttpServer(self._address, self)
        host, port = self._http.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"model-server-{port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        http, thread = self._http, self._thread
        if http is None or thread is None:
            return
        http.shutdown()
        http.server_close()
        thread.join()
        self._http = self._thread = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1]) if self.url else 0

    def set_scripts(self, scripts: Sequence[Script]) -> None:
        with self._lock:
            self._scripts = tuple(scripts)

    @property
    def requests(self) -> list[Recorded]:
        """A snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def claude_env(self, api_key: str = "scripted") -> dict[str, str]:
        """Environment that points `claude` at this server (merge it over a clean env)."""
        return {
            "ANTHROPIC_BASE_URL": self.url,
            "ANTHROPIC_API_KEY": api_key,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            # a broken script should fail the run now, not after minutes of backoff
            "CLAUDE_CODE_MAX_RETRIES": "0",
            "API_TIMEOUT_MS": "60000",
        }

    def codex_config(self, provider: str = "scripted") -> list[str]:
        """`-c` overrides for `codex exec` that point it at this server (with codex_env())."""
        table = (
            f'{{name="{provider}", base_url="{self.url}/v1", env_key="{CODEX_KEY_ENV}", '
            'wire_api="responses", request_max_retries=0, stream_max_retries=0, '
            "stream_idle_timeout_ms=60000}"
        )
        return ["-c", f"model_provider={provider}", "-c", f"model_providers.{provider}={table}"]

    def codex_env(self, api_key: str = "scripted") -> dict[str, str]:
        """The API key variable that codex_config()'s provider reads."""
        return {CODEX_KEY_ENV: api_key}

    def _record(
        self,
        path: str,
        headers: dict[str, str],
        body: dict[str, Any],
        reply: _Reply | None,
    ) -> None:
        script, turn = (reply.script, reply.turn) if reply else (None, None)
        with self._lock:
            self._requests.append(Recorded(path, headers, body, script, turn))

    def _answer(
        self,
        path: str,
        headers: dict[str, str],
        body: dict[str, Any],
        responder: _Responder,
    ) -> _Reply:
        with self._lock:
            scripts = self._scripts
        reply = responder(body, scripts, self._model_usage)
        self._record(path, headers, body, reply)
        return reply
