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

Modules
    `script` (the script vocabulary and which turn answers a request), `anthropic` and
    `responses` (each wire's replies and SSE events), `server` (the HTTP server, `ModelServer`).
"""

from __future__ import annotations

from orch.modelserver.script import CLOSING_TEXT as CLOSING_TEXT
from orch.modelserver.script import CODEX_KEY_ENV as CODEX_KEY_ENV
from orch.modelserver.script import SIDE_TEXT as SIDE_TEXT
from orch.modelserver.script import ZERO_USAGE as ZERO_USAGE
from orch.modelserver.script import Action as Action
from orch.modelserver.script import (
    Edit,
    Fault,
    Recorded,
    Say,
    Script,
    Shell,
    Turn,
    Usage,
    Write,
)
from orch.modelserver.server import ModelServer

__all__ = [
    "Edit",
    "Fault",
    "ModelServer",
    "Recorded",
    "Say",
    "Script",
    "Shell",
    "Turn",
    "Usage",
    "Write",
]
