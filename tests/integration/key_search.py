"""Run by test_metering_proxy as a program of its own: orch, started with the provider's key in
its environment as `orch serve` is, drives one real Claude Code run whose agent searches its
environment, /proc, its home, its worktree and /tmp for that key. Prints, as JSON, what the
search found, the keys the model server received, whether orch left the key in the run's files,
and how the proxy answers the run's token once the run ended."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
from real_agents import World, drive

from orch.adapters.proctable import hide_environment
from orch.demo import sample
from orch.testing import ModelServer, Script, Shell, Turn

# the key's first part is no secret: the search looks for every place that holds it. The
# pattern is put together in the shell, so that no command line of the search holds it whole
SEARCH = (
    "env | sort; echo; p=sk-ant; p=$p-orch-test; m=0; r=0; "
    "for f in /proc/[0-9]*/environ; do"
    " if head -c1 $f >/dev/null 2>&1; then r=$((r+1)); fi;"
    ' if tr "\\0" "\\n" < $f 2>/dev/null | grep -q -- "$p"; then m=$((m+1)); echo "in $f"; fi;'
    ' done; echo "readable: $r"; '
    'for f in $(grep -rIl -- "$p" "$HOME" "$PWD" "${TMPDIR:-/tmp}" /tmp 2>/dev/null);'
    ' do m=$((m+1)); echo "in $f"; done; '
    'echo "matches: $m"'
)


def main(root: Path) -> dict[str, object]:
    key = os.environ["ANTHROPIC_API_KEY"]
    hide_environment()  # as `orch serve` does
    work, remote = sample.create(root)
    with ModelServer([Script("Stage: development", (Turn((Shell(SEARCH),)),))]) as server:
        world = World(root, remote, work, server, [])
        world.pipeline(
            "replace: true\nmerge: false\nstages:\n  - name: development\n    gates: []\n"
        )
        claude = world.claude()
        del claude["env"]["ANTHROPIC_API_KEY"]  # orch's own, from its environment
        app = world.app({"default": claude}, environ=os.environ)
        try:
            task = app.intake.file("sample", "Look for the key", "", actor="test")
            task = drive(app, task)
            after = [r for r in server.requests if r.script and r.turn == 1]
            searched = _tool_output(after[-1].body) if after else ""
            token = _token(searched)
            proxy = app.agents["default"].proxy  # type: ignore[attr-defined]
            answer = httpx.post(
                f"{proxy.url}/v1/messages",
                headers={"x-api-key": token},
                json={"model": "claude-sonnet-4-5", "max_tokens": 1, "messages": []},
            )
            keys = sorted(
                {
                    r.headers.get("x-api-key") or r.headers.get("X-Api-Key") or ""
                    for r in server.requests
                }
            )
            return {
                "status": task.status.value,
                "searched": searched,
                "keys_at_the_provider": keys,
                "key_in_files": _files_holding(key, root),
                "token_after_the_run": answer.status_code,
                "live_tokens": proxy.live_tokens(),
            }
        finally:
            app.close()


def _key(headers: dict[str, str]) -> str:
    return {k.lower(): v for k, v in headers.items()}.get("x-api-key", "")


def _tool_output(body: dict) -> str:
    out = []
    for message in body.get("messages") or []:
        for block in message.get("content") or []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                content = block.get("content")
                if isinstance(content, list):
                    out += [c.get("text", "") for c in content if isinstance(c, dict)]
                else:
                    out.append(str(content))
    return "\n".join(out)


def _token(env: str) -> str:
    for line in env.splitlines():
        if line.startswith("ANTHROPIC_API_KEY="):
            return line.split("=", 1)[1]
    return ""


def _files_holding(key: str, root: Path) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            try:
                if key.encode() in path.read_bytes():
                    found.append(str(path.relative_to(root)))
            except OSError:
                continue
    return found


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
