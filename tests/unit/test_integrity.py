"""Gate integrity findings, read from real `git diff` output."""

from __future__ import annotations

from typing import Any

import pytest

from orch.adapters.agents.scripted import ScriptedAgent
from orch.domain.integrity import (
    DEFAULT_PROTECTED,
    FileChange,
    findings,
    is_test_file,
    parse_diff,
)
from orch.domain.model import GateRecord, Task
from orch.domain.states import Stage, TaskStatus
from orch.ports import DeployTarget, RepoSettings
from orch.testing import Rig, rig

DIFF = """\
diff --git a/tests/test_text.py b/tests/test_text.py
index 1111111..2222222 100644
--- a/tests/test_text.py
+++ b/tests/test_text.py
@@ -5,2 +5,2 @@ class WordCountTest(unittest.TestCase):
-        self.assertEqual(word_count("a  b"), 2)
-        assert word_count("") == 0
+        @unittest.skip("flaky")
+        print(word_count("a  b"))
diff --git a/tests/test_old.py b/tests/test_old.py
deleted file mode 100644
index 3333333..0000000
--- a/tests/test_old.py
+++ /dev/null
@@ -1,3 +0,0 @@
-def test_it():
-    assert True
diff --git a/.orch/pipeline.yaml b/.orch/pipeline.yaml
new file mode 100644
index 0000000..4444444
--- /dev/null
+++ b/.orch/pipeline.yaml
@@ -0,0 +1 @@
+stages: [{name: development, gates: []}]
diff --git a/sample/text.py b/sample/text.py
index 5555555..6666666 100644
--- a/sample/text.py
+++ b/sample/text.py
@@ -3 +3 @@
-    return len(text.split())
+    return len(text.split()) if text else 0
"""


def test_a_change_that_weakens_the_checks_is_flagged_line_by_line() -> None:
    changes = parse_diff(DIFF)
    assert [(c.path, c.status) for c in changes] == [
        ("tests/test_text.py", "M"),
        ("tests/test_old.py", "D"),
        (".orch/pipeline.yaml", "A"),
        ("sample/text.py", "M"),
    ]
    assert findings(changes, DEFAULT_PROTECTED) == [
        "removes 2 assertion(s) in tests/test_text.py",
        "adds 1 skip marker(s) in tests/test_text.py",
        "deletes test file tests/test_old.py",
        "touches protected path .orch/pipeline.yaml",
    ]


def test_conflict_markers_left_in_a_file_are_flagged() -> None:
    diff = (
        "diff --git a/README.md b/README.md\n--- a/README.md\n+++ b/README.md\n@@ -1 +1,5 @@\n"
        "-old\n+<<<<<<< ours\n+old\n+=======\n+new\n+>>>>>>> theirs\n"
    )
    assert findings(parse_diff(diff), ()) == ["leaves merge conflict markers in README.md"]


def test_a_plain_change_with_its_tests_is_not_flagged() -> None:
    diff = (
        "diff --git a/tests/test_text.py b/tests/test_text.py\n--- a/tests/test_text.py\n"
        "+++ b/tests/test_text.py\n@@ -1 +1,2 @@\n-    assert f(1) == 1\n"
        "+    assert f(1) == 1\n+    assert f(2) == 2\n"
    )
    assert findings(parse_diff(diff), DEFAULT_PROTECTED) == []


@pytest.mark.parametrize(
    ("path", "pattern", "hit"),
    [
        (".orch/pipeline.yaml", ".orch/**", True),
        (".github/workflows/ci.yml", ".github/workflows/**", True),
        (".github/CODEOWNERS", ".github/workflows/**", False),
        ("deploy/Jenkinsfile", "Jenkinsfile", True),
        ("src/a.py", "*.py", True),
        ("src/a.py", "/a.py", False),
        ("a.py", "/a.py", True),
        ("src/deep/x.sql", "src/**/*.sql", True),
        ("src/x.sql", "src/**/*.sql", True),
    ],
)
def test_protected_path_patterns_match_like_gitignore(path: str, pattern: str, hit: bool) -> None:
    flagged = findings([FileChange(path)], (pattern,))
    assert flagged == ([f"touches protected path {path}"] if hit else [])


@pytest.mark.parametrize(
    ("path", "test"),
    [
        ("tests/test_a.py", True),
        ("pkg/tests/helpers.py", True),
        ("test_a.py", True),
        ("a_test.go", True),
        ("web/app.spec.ts", True),
        ("conftest.py", True),
        ("sample/text.py", False),
        ("contest.py", False),
    ],
)
def test_test_files_are_recognised_by_name_and_directory(path: str, test: bool) -> None:
    assert is_test_file(path) is test


# -- in the engine ------------------------------------------------------------------------------

SKIPPED = "import pytest\n\n\n@pytest.mark.skip\ndef test_greeting():\n    assert greet() == 'hi'\n"
WEAKENING = {
    "stages": {
        "development": {
            "files": {"tests/test_greeting.py": SKIPPED, ".orch/pipeline.yaml": "stages: []\n"}
        }
    }
}


def run_to_merge(protect: str, playbook: dict[str, Any] | None) -> tuple[Rig, Task]:
    repo = RepoSettings(
        name="app",
        test_command="true",
        protect=protect,
        deploy={"staging": DeployTarget("true"), "production": DeployTarget("true")},
    )
    r = rig({"default": ScriptedAgent(playbook=playbook)}, repo=repo)
    task = r.intake.file("app", "Add a greeting", "")
    r.run_until_idle()
    assert r.intake.decide(task.key, True, "alice")  # the plan
    r.run_until_idle()
    return r, r.store.get_task(task.id)


def review_prompt(r: Rig, task: Task) -> str:
    [prompt] = (r.logs / f"{task.key}-{task.id}").glob("v*-review-1.prompt.md")
    return prompt.read_text()


def integrity_gates(r: Rig, task: Task) -> list[GateRecord]:
    return [g for g in r.store.gate_records(task.id) if g.gate == "integrity"]


def test_a_change_that_weakens_the_checks_is_shown_to_the_reviewer_and_in_the_gates() -> None:
    r, task = run_to_merge("flag", WEAKENING)
    try:
        prompt = review_prompt(r, task)
        assert "## What orch flagged in this change" in prompt
        assert "- adds 1 skip marker(s) in tests/test_greeting.py" in prompt
        assert "- touches protected path .orch/pipeline.yaml" in prompt
        # flagged, not held: the merge went ahead
        assert task.waiting_for == "confirm-deploy"
        [gate] = integrity_gates(r, task)
        assert gate.passed and gate.reason.startswith("flagged: ")
        assert len(r.forge.merges) == 1
    finally:
        r.close()


def test_with_protect_strict_a_weakening_change_waits_for_a_person_before_it_merges() -> None:
    r, task = run_to_merge("strict", WEAKENING)
    try:
        assert (task.stage, task.waiting_for) == (Stage.DEPLOY_STAGING, "confirm-integrity")
        assert "skip marker" in task.status_reason
        assert r.forge.merges == []
        [held] = integrity_gates(r, task)
        assert not held.passed
        assert r.intake.decide(task.key, True, "dora")
        r.run_until_idle()
        assert r.store.get_task(task.id).waiting_for == "confirm-deploy"
        assert len(r.forge.merges) == 1
        assert integrity_gates(r, task)[-1].passed
        assert "confirmed by dora" in integrity_gates(r, task)[-1].reason
    finally:
        r.close()


def test_with_protect_strict_a_rejected_weakening_change_goes_back_to_development() -> None:
    r, task = run_to_merge("strict", WEAKENING)
    try:
        assert r.intake.decide(task.key, False, "dora", "keep the test running")
        r.run_until_idle()
        back = r.store.get_task(task.id)
        assert back.rework_rounds == 1
        # the developer was told why; the same weakening is held again
        dev = sorted((r.logs / f"{task.key}-{task.id}").glob("v*-development-1.prompt.md"))
        assert "keep the test running" in max(dev, key=lambda p: p.stat().st_mtime).read_text()
        assert (back.stage, back.waiting_for) == (Stage.DEPLOY_STAGING, "confirm-integrity")
        assert r.forge.merges == []
    finally:
        r.close()


def test_with_protect_strict_a_clean_change_merges_without_waiting() -> None:
    r, task = run_to_merge("strict", None)
    try:
        assert task.waiting_for == "confirm-deploy"
        [gate] = integrity_gates(r, task)
        assert (gate.passed, gate.reason) == (True, "nothing weakens the checks")
    finally:
        r.close()


def test_a_change_that_leaves_conflict_markers_never_merges_in_any_mode() -> None:
    marked = "<<<<<<< ours\nhello\n=======\nhi\n>>>>>>> theirs\n"
    r, task = run_to_merge("flag", {"stages": {"development": {"files": {"NOTES.md": marked}}}})
    try:
        parked = r.store.get_task(task.id)
        assert parked.status == TaskStatus.NEEDS_OPERATOR
        assert "leaves merge conflict markers in NOTES.md" in parked.status_reason
        assert r.forge.merges == []
        assert not any(g.passed for g in integrity_gates(r, task))
    finally:
        r.close()
