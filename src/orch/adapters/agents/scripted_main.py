"""The scripted agent's process: standard library only, run as `python -I -S` to start fast."""

import json
import os
import signal
import sys
import time

DEFAULTS = {
    "analysis": {
        "docs/work-items/{{key}}/spec.md": (
            "# {{key}}: {{title}}\n\n## Problem\n\n{{title}}.\n\n{{body}}\n\n"
            "## Acceptance criteria\n\n- The change does what the ticket asks.\n"
            "- It is covered by tests that pass.\n"
        )
    },
    "architecture": {
        "docs/work-items/{{key}}/adr.md": (
            "# ADR for {{key}}\n\n## Context\n\n{{title}}.\n\n## Decision\n\n"
            "Implement it in the smallest module that fits, with a unit test beside it.\n\n"
            "## Consequences\n\nOne new function and its test; nothing else changes.\n"
        )
    },
    "development": {"docs/work-items/{{key}}/changes.md": "# Changes for {{key}}\n\n- {{title}}\n"},
    "review": {
        "docs/work-items/{{key}}/review.md": (
            "# Review of {{key}}\n\nThe change matches the specification and has tests.\n\n"
            "Verdict: approve\n"
        )
    },
    "testing": {
        "docs/work-items/{{key}}/test-report.md": (
            "# Test report for {{key}}\n\n## Results\n\nAll tests pass.\n\nVerdict: pass\n"
        )
    },
}


def say(kind, **fields):
    fields["type"] = kind
    print(json.dumps(fields), flush=True)


def main():
    stage = os.environ.get("ORCH_STAGE", "")
    attempt = int(os.environ.get("ORCH_ATTEMPT", "1"))
    values = {
        "{{key}}": os.environ.get("ORCH_TICKET", ""),
        "{{title}}": os.environ.get("ORCH_TICKET_TITLE", ""),
        "{{stage}}": stage,
        "{{attempt}}": str(attempt),
        "{{body}}": "",
    }
    playbook = {}
    path = os.environ.get("ORCH_SCRIPTED_PLAYBOOK")
    if path:
        with open(path, encoding="utf-8") as f:
            playbook = json.load(f)
    plan = playbook.get("stages", {}).get(stage, {})
    say("start", stage=stage, attempt=attempt, pid=os.getpid(), clock=time.time())
    prompt_file = os.environ.get("ORCH_PROMPT_FILE")
    if prompt_file and os.path.exists(prompt_file):
        with open(prompt_file, encoding="utf-8") as f:
            say("prompt", text=f.read())

    mode = plan.get("mode", "ok")
    if attempt <= int(plan.get("fail_attempts", 0)):
        mode = "fail"
    if mode in ("hang", "stubborn"):
        if mode == "stubborn":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL ends it
        say("hang", pid=os.getpid())
        while True:
            time.sleep(3600)
    if mode == "crash":
        say("crash")
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "fail":
        say("error", message="scripted failure")
        return 1

    files = plan.get("files")
    if files is None:
        files = DEFAULTS.get(stage, {})
    for rel, content in files.items():
        for k, v in values.items():
            rel = rel.replace(k, v)
            content = content.replace(k, v)
        os.makedirs(os.path.dirname(rel) or ".", exist_ok=True)
        with open(rel, "w", encoding="utf-8") as f:
            f.write(content)
        say("write", path=rel, bytes=len(content))
    say("result", status="ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
