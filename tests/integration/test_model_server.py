"""The scripted model server, alone over HTTP and driving the real `claude` and `codex` binaries.

The binaries come from ORCH_CLAUDE_BIN / ORCH_CODEX_BIN, else from PATH; a missing one fails the
test (never skips it). Every agent runs in a fresh git repository under a wall-clock timeout, in
its own process group, which is killed whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from real_agents import binary

from orch.modelserver import Edit, ModelServer, Say, Script, Shell, Turn, Usage, Write

AGENT_TIMEOUT = 60.0
CLAUDE_MODEL = "claude-sonnet-4-5"
# a model codex knows: with it codex offers the `apply_patch` tool
CODEX_MODEL = "gpt-5.5"
# Claude Code's list price for claude-sonnet-4-5, in dollars per token
SONNET_PRICE = {"input": 3e-6, "output": 15e-6, "cache_read": 0.3e-6, "cache_write": 3.75e-6}


# ---------------------------------------------------------------------------------------------
# helpers


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=30)
    return repo


def _clean_env(**extra: str) -> dict[str, str]:
    # the agents must see only this server, never a key or endpoint from the caller's shell
    prefixes = ("ANTHROPIC_", "CLAUDE", "OPENAI_", "CODEX_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(extra)
    return env


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]


def _run_agent(argv: list[str], *, cwd: Path, env: Mapping[str, str]) -> Finished:
    """Run an agent to its end, killing its whole process group if it outlives the timeout."""
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=AGENT_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        stdout, stderr = process.communicate()
        pytest.fail(f"{argv[0]} still ran after {AGENT_TIMEOUT}s\n{stdout}\n{stderr}")
    finally:
        _kill_group(process)
    return Finished(process.returncode, stdout, stderr)


def _kill_group(process: subprocess.Popen[str]) -> None:
    # the agents leave helpers (shells, MCP hosts) behind; end the group the test started
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    process.wait()


def _claude(server: ModelServer, repo: Path, config_dir: Path, prompt: str) -> Finished:
    argv = [
        binary("ORCH_CLAUDE_BIN", "claude"),
        "-p",
        prompt,
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        "acceptEdits",
        "--allowedTools",
        "Bash Edit Read Write",
        "--session-id",
        str(uuid.uuid4()),
        "--max-turns",
        "10",
        "--model",
        CLAUDE_MODEL,
    ]
    env = _clean_env(**server.claude_env(), CLAUDE_CONFIG_DIR=str(config_dir))
    return _run_agent(argv, cwd=repo, env=env)


def _codex(
    server: ModelServer, repo: Path, codex_home: Path, prompt: str, *, model: str, sandbox: str
) -> Finished:
    argv = [
        binary("ORCH_CODEX_BIN", "codex"),
        "exec",
        "--json",
        "--skip-git-repo-check",
        "-C",
        str(repo),
        "-m",
        model,
        "-s",
        sandbox,
        *server.codex_config(),
        prompt,
    ]
    codex_home.mkdir(exist_ok=True)  # codex refuses a CODEX_HOME that does not exist
    env = _clean_env(**server.codex_env(), CODEX_HOME=str(codex_home))
    return _run_agent(argv, cwd=repo, env=env)


def _total(*usages: Usage) -> Usage:
    return Usage(
        input_tokens=sum(u.input_tokens for u in usages),
        output_tokens=sum(u.output_tokens for u in usages),
        cache_read_input_tokens=sum(u.cache_read_input_tokens for u in usages),
        cache_creation_input_tokens=sum(u.cache_creation_input_tokens for u in usages),
    )


def _claude_usage(usage: Mapping[str, Any]) -> Usage:
    return Usage(
        input_tokens=usage["input_tokens"],
        output_tokens=usage["output_tokens"],
        cache_read_input_tokens=usage["cache_read_input_tokens"],
        cache_creation_input_tokens=usage["cache_creation_input_tokens"],
    )


def _tool_results(body: Mapping[str, Any]) -> dict[str, str]:
    """tool_use_id -> text of every tool_result in an Anthropic request."""
    results: dict[str, str] = {}
    for message in body.get("messages", []):
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if block.get("type") == "tool_result":
                inner = block.get("content")
                text = inner if isinstance(inner, str) else json.dumps(inner)
                results[block["tool_use_id"]] = text
    return results


def _sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in chunk.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


# ---------------------------------------------------------------------------------------------
# the server alone


CWD_PROMPT = "Primary working directory: /work/repo\nplease do the scripted thing"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    # one client for the test: building one costs far more than a request to the server
    with httpx.Client(timeout=10) as client:
        yield client


def _anthropic_request(text: str, *, assistant_turns: int = 0, **extra: Any) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    for index in range(assistant_turns):
        tool_id = f"toolu_{index}"
        messages.append(
            {"role": "assistant", "content": [{"type": "tool_use", "id": tool_id, "name": "Bash"}]}
        )
        messages.append(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id}]}
        )
    body = {"model": "claude-test-model", "max_tokens": 100, "stream": True}
    body |= {"messages": messages, "tools": [{"name": "Bash"}, {"name": "Write"}], **extra}
    return body


def _responses_request(text: str, **extra: Any) -> dict[str, Any]:
    tools = [
        {"type": "function", "name": "exec_command"},
        {"type": "custom", "name": "apply_patch"},
    ]
    opening = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "x"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
    ]
    return {"model": "gpt-test-model", "stream": True, "input": opening, "tools": tools, **extra}


TOOL_TURN = Turn(
    (Say("on it"), Write("src/a.txt", "one\ntwo\n"), Shell("echo hi")),
    Usage(
        input_tokens=11,
        output_tokens=22,
        cache_read_input_tokens=33,
        cache_creation_input_tokens=44,
    ),
)


def test_anthropic_tool_turn_streams_text_and_tool_use_blocks_with_the_turn_usage(
    http: httpx.Client,
) -> None:
    with ModelServer([Script("scripted thing", (TOOL_TURN,))]) as server:
        response = http.post(
            f"{server.url}/v1/messages?beta=true", json=_anthropic_request(CWD_PROMPT)
        )

    events = _sse(response.text)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        *["content_block_start", "content_block_delta", "content_block_stop"] * 3,
        "message_delta",
        "message_stop",
    ]
    expected_usage = {
        "input_tokens": 11,
        "output_tokens": 22,
        "cache_read_input_tokens": 33,
        "cache_creation_input_tokens": 44,
    }
    start = events[0][1]["message"]
    assert start["model"] == "claude-test-model"
    assert start["usage"] == {**expected_usage, "output_tokens": 1}  # as the real API streams it
    assert events[-2][1]["usage"] == expected_usage
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    blocks = [data["content_block"] for name, data in events if name == "content_block_start"]
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert [b["type"] for b in blocks] == ["text", "tool_use", "tool_use"]
    assert [b.get("name") for b in blocks] == [None, "Write", "Bash"]
    assert deltas[0]["text"] == "on it"
    write_input = json.loads(deltas[1]["partial_json"])
    assert write_input == {"file_path": "/work/repo/src/a.txt", "content": "one\ntwo\n"}
    assert json.loads(deltas[2]["partial_json"])["command"] == "echo hi"


def test_responses_tool_turn_streams_apply_patch_and_exec_command_with_the_turn_usage(
    http: httpx.Client,
) -> None:
    with ModelServer([Script("scripted thing", (TOOL_TURN,))]) as server:
        response = http.post(f"{server.url}/v1/responses", json=_responses_request(CWD_PROMPT))

    events = _sse(response.text)
    assert [name for name, data in events] == [data["type"] for _, data in events]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert events[0][0] == "response.created"
    assert events[-1][0] == "response.completed"
    completed = events[-1][1]["response"]
    assert completed["model"] == "gpt-test-model"
    assert completed["usage"] == {
        "input_tokens": 11 + 33 + 44,  # all input, cached included, as OpenAI counts it
        "input_tokens_details": {"cached_tokens": 33, "cache_write_tokens": 44},
        "output_tokens": 22,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 88 + 22,
    }
    done = [data["item"] for name, data in events if name == "response.output_item.done"]
    assert done == completed["output"]
    assert [item["type"] for item in done] == ["message", "custom_tool_call", "function_call"]
    assert done[0]["content"][0]["text"] == "on it"
    assert done[1]["name"] == "apply_patch"
    assert (
        done[1]["input"] == "*** Begin Patch\n*** Add File: src/a.txt\n+one\n+two\n*** End Patch\n"
    )
    assert done[2]["name"] == "exec_command"
    assert json.loads(done[2]["arguments"]) == {"cmd": "echo hi"}


def test_turn_is_the_number_of_model_turns_already_in_the_conversation(http: httpx.Client) -> None:
    turns = (Turn((Shell("first"),)), Turn((Shell("second"),)), Turn((Say("third"),)))
    with ModelServer([Script("scripted thing", turns)]) as server:
        answer = http.post(
            f"{server.url}/v1/messages",
            json=_anthropic_request(CWD_PROMPT, assistant_turns=2, stream=False),
        ).json()
        past_the_end = http.post(
            f"{server.url}/v1/messages",
            json=_anthropic_request(CWD_PROMPT, assistant_turns=5, stream=False),
        ).json()
        recorded = server.requests

    assert answer["content"] == [{"type": "text", "text": "third"}]
    assert answer["stop_reason"] == "end_turn"
    assert past_the_end["stop_reason"] == "end_turn"
    assert [(r.script, r.turn) for r in recorded] == [("scripted thing", 2), ("scripted thing", 3)]


def test_responses_count_one_model_turn_per_run_of_model_output_items(http: httpx.Client) -> None:
    turns = (Turn((Shell("a"), Shell("b"))), Turn((Shell("c"),)), Turn((Say("end"),)))
    history = [
        {"type": "message", "role": "assistant", "content": []},
        {"type": "function_call", "call_id": "1"},
        {"type": "function_call", "call_id": "2"},
        {"type": "function_call_output", "call_id": "1"},
        {"type": "function_call_output", "call_id": "2"},
        {"type": "function_call", "call_id": "3"},
        {"type": "function_call_output", "call_id": "3"},
    ]
    request = _responses_request(CWD_PROMPT, stream=False)
    request["input"] += history
    with ModelServer([Script("scripted thing", turns)]) as server:
        answer = http.post(f"{server.url}/v1/responses", json=request).json()

    assert answer["object"] == "response"
    assert answer["output"][0]["content"][0]["text"] == "end"
    assert server.requests[0].turn == 2


def test_request_without_tools_is_a_side_request_that_consumes_no_turn(http: httpx.Client) -> None:
    with ModelServer([Script("scripted thing", (TOOL_TURN,))]) as server:
        side = http.post(
            f"{server.url}/v1/messages",
            json=_anthropic_request(CWD_PROMPT, tools=[], stream=False),
        ).json()
        unmatched = http.post(
            f"{server.url}/v1/responses", json=_responses_request("something else", stream=False)
        ).json()
        main = http.post(
            f"{server.url}/v1/messages",
            json=_anthropic_request(CWD_PROMPT, stream=False),
        ).json()
        recorded = server.requests

    assert [block["type"] for block in side["content"]] == ["text"]
    assert side["usage"]["input_tokens"] == 0
    assert [item["type"] for item in unmatched["output"]] == ["message"]
    assert main["stop_reason"] == "tool_use"
    assert [(r.script, r.turn) for r in recorded] == [
        (None, None),
        (None, None),
        ("scripted thing", 0),
    ]


def test_set_scripts_applies_to_the_next_request(http: httpx.Client) -> None:
    with ModelServer() as server:
        before = http.post(
            f"{server.url}/v1/messages", json=_anthropic_request(CWD_PROMPT, stream=False)
        ).json()
        server.set_scripts([Script("scripted thing", (Turn((Say("now scripted"),)),))])
        after = http.post(
            f"{server.url}/v1/messages", json=_anthropic_request(CWD_PROMPT, stream=False)
        ).json()

    assert before["content"][0]["text"] != "now scripted"
    assert after["content"][0]["text"] == "now scripted"


def test_concurrent_conversations_each_get_their_own_script(http: httpx.Client) -> None:
    scripts = [Script(f"agent-{n}", (Turn((Say(f"answer-{n}"),)),)) for n in range(8)]
    answers: dict[int, str] = {}

    def ask(n: int) -> None:
        body = _anthropic_request(f"I am agent-{n}", stream=False)
        answers[n] = http.post(f"{url}/v1/messages", json=body).json()["content"][0]["text"]

    with ModelServer(scripts) as server:
        url = server.url
        threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert answers == {n: f"answer-{n}" for n in range(8)}


def test_stop_frees_the_port(http: httpx.Client) -> None:
    server = ModelServer().start()
    port = server.port
    server.stop()

    with pytest.raises(httpx.ConnectError):
        http.get(f"http://127.0.0.1:{port}/")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# ---------------------------------------------------------------------------------------------
# the real binaries


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer() as running:
        yield running


@pytest.mark.slow
def test_claude_plays_write_edit_and_shell_and_sums_the_scripted_usage(
    server: ModelServer, tmp_path: Path
) -> None:
    repo = _repo(tmp_path)
    usages = [Usage(120, 30, 10, 5), Usage(230, 40, 20, 6), Usage(340, 50, 30, 7), Usage(50, 9)]
    shell = (
        "python3 -c \"open('made-by-shell.txt', 'w').write('from the shell')\""
        " && echo shell-says-$((6 * 7))"
    )
    script = Script(
        f"orch-scripted-{uuid.uuid4()}",
        (
            Turn((Say("Writing the notes."), Write("notes.txt", "first line\n")), usages[0]),
            Turn((Edit("notes.txt", "first", "second"),), usages[1]),
            Turn((Shell(shell),), usages[2]),
            Turn((Say("All done."),), usages[3]),
        ),
    )
    server.set_scripts([script])

    finished = _claude(server, repo, tmp_path / "claude-config", f"{script.match}: take notes")

    assert finished.returncode == 0, finished.stderr
    assert (repo / "notes.txt").read_text() == "second line\n"
    assert (repo / "made-by-shell.txt").read_text() == "from the shell"
    result = [e for e in finished.events() if e["type"] == "result"][-1]
    assert (result["subtype"], result["is_error"], result["result"]) == (
        "success",
        False,
        "All done.",
    )
    total = _total(*usages)
    assert _claude_usage(result["usage"]) == total
    model_usage = result["modelUsage"][CLAUDE_MODEL]
    assert (model_usage["inputTokens"], model_usage["outputTokens"]) == (740, 129)
    expected_cost = (
        total.input_tokens * SONNET_PRICE["input"]
        + total.output_tokens * SONNET_PRICE["output"]
        + total.cache_read_input_tokens * SONNET_PRICE["cache_read"]
        + total.cache_creation_input_tokens * SONNET_PRICE["cache_write"]
    )
    assert result["total_cost_usd"] == pytest.approx(expected_cost)
    # one request per script turn and no side request
    recorded = server.requests
    assert [(r.script, r.turn) for r in recorded] == [(script.match, n) for n in range(4)]
    bash_ids = [
        block["id"]
        for event in finished.events()
        if event["type"] == "assistant"
        for block in event["message"]["content"]
        if block["type"] == "tool_use" and block["name"] == "Bash"
    ]
    assert len(bash_ids) == 1
    assert "shell-says-42" in _tool_results(recorded[3].body)[bash_ids[0]]


@pytest.mark.slow
def test_claude_reads_existing_files_before_editing_or_overwriting_them(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (repo / "edited.txt").write_text("alpha\nbeta\n")
    (repo / "overwritten.txt").write_text("old text\n")
    usages = [Usage(100, 10, 1, 2), Usage(200, 20, 3, 4)]
    closing = Usage(7, 3)
    script = Script(
        f"orch-scripted-{uuid.uuid4()}",
        (
            Turn(
                (
                    Edit("edited.txt", "beta", "gamma"),
                    Write("overwritten.txt", "new text\n"),
                    Write("created.txt", "fresh\n"),
                ),
                usages[0],
            ),
            Turn((Shell("echo checked"),), usages[1]),
        ),
    )

    with ModelServer([script], model_usage=closing) as server:
        finished = _claude(server, repo, tmp_path / "claude-config", f"{script.match}: edit")
        recorded = server.requests

    assert finished.returncode == 0, finished.stderr
    assert (repo / "edited.txt").read_text() == "alpha\ngamma\n"
    assert (repo / "overwritten.txt").read_text() == "new text\n"
    assert (repo / "created.txt").read_text() == "fresh\n"
    first = [e for e in finished.events() if e["type"] == "assistant"][:5]
    calls = [
        (b["name"], Path(b["input"]["file_path"]).name)
        for e in first
        for b in e["message"]["content"]
    ]
    # a Read goes first in the same response for the files that exist, none for the new one
    assert calls == [
        ("Read", "edited.txt"),
        ("Edit", "edited.txt"),
        ("Read", "overwritten.txt"),
        ("Write", "overwritten.txt"),
        ("Write", "created.txt"),
    ]
    # the script's last turn calls a tool, so one more request gets the closing text, which
    # reports model_usage
    assert [(r.script, r.turn) for r in recorded] == [(script.match, n) for n in range(3)]
    result = [e for e in finished.events() if e["type"] == "result"][-1]
    assert (result["subtype"], result["is_error"], result["result"]) == ("success", False, "Done.")
    assert _claude_usage(result["usage"]) == _total(*usages, closing)


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", ["workspace-write", "danger-full-access"])
def test_codex_writes_through_apply_patch_runs_shell_and_sums_the_scripted_usage(
    server: ModelServer, tmp_path: Path, sandbox: str
) -> None:
    repo = _repo(tmp_path)
    usages = [Usage(1000, 100, 400, 50), Usage(2000, 200, 900, 60), Usage(300, 30)]
    shell = (
        "python3 -c \"open('made-by-shell.txt', 'w').write('from the shell')\""
        " && echo shell-says-$((6 * 7))"
    )
    script = Script(
        f"orch-scripted-{uuid.uuid4()}",
        (
            Turn((Write("docs/notes.md", "# Notes\n\nwritten by codex\n"),), usages[0]),
            Turn((Shell(shell),), usages[1]),
            Turn((Say("All done."),), usages[2]),
        ),
    )
    server.set_scripts([script])

    finished = _codex(
        server, repo, tmp_path / "codex-home", script.match, model=CODEX_MODEL, sandbox=sandbox
    )

    assert finished.returncode == 0, finished.stderr
    assert (repo / "docs/notes.md").read_text() == "# Notes\n\nwritten by codex\n"
    assert (repo / "made-by-shell.txt").read_text() == "from the shell"
    events = finished.events()
    items = [e["item"] for e in events if e["type"] == "item.completed"]
    assert [i["type"] for i in items] == ["file_change", "command_execution", "agent_message"]
    assert items[1]["exit_code"] == 0
    assert "shell-says-42" in items[1]["aggregated_output"]
    # codex reports usage once per turn, summed over every model request of the turn; its
    # input_tokens include the cached ones, as on the Responses wire
    completed = [e for e in events if e["type"] == "turn.completed"]
    total = _total(*usages)
    assert [e["usage"] for e in completed] == [
        {
            "input_tokens": total.input_tokens
            + total.cache_read_input_tokens
            + total.cache_creation_input_tokens,
            "cached_input_tokens": total.cache_read_input_tokens,
            "cache_write_input_tokens": total.cache_creation_input_tokens,
            "output_tokens": total.output_tokens,
            "reasoning_output_tokens": 0,
        }
    ]
    recorded = server.requests
    assert [(r.script, r.turn) for r in recorded] == [(script.match, n) for n in range(3)]
    assert all(r.body.get("previous_response_id") is None for r in recorded)


@pytest.mark.slow
def test_codex_without_apply_patch_writes_and_edits_exactly_through_its_shell_tool(
    server: ModelServer, tmp_path: Path
) -> None:
    repo = _repo(tmp_path)
    script = Script(
        f"orch-scripted-{uuid.uuid4()}",
        (
            Turn((Write("plain.txt", "no final newline, 'quotes' and $HOME"),)),
            Turn((Edit("plain.txt", "no final", "without a final"),)),
            Turn((Say("All done."),)),
        ),
    )
    server.set_scripts([script])

    # codex has no metadata for this name, so it offers no apply_patch tool
    finished = _codex(
        server,
        repo,
        tmp_path / "codex-home",
        script.match,
        model="scripted-model",
        sandbox="workspace-write",
    )

    assert finished.returncode == 0, finished.stderr
    assert (repo / "plain.txt").read_text() == "without a final newline, 'quotes' and $HOME"
    offered = {tool.get("name") for tool in server.requests[0].body["tools"]}
    assert "apply_patch" not in offered
    assert "exec_command" in offered
