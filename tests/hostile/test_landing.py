"""Changes that pass their tests alone and break together: what lands is the merged tree that
passed, never two green branches that make a red default branch."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from orch.demo import sample
from orch.domain.states import Stage, TaskStatus

from .world import Project

# one renames a function everywhere, the other adds a caller of whichever name it finds
STATS = (
    "from sample.text import NAME\n\n\ndef total(texts):\n    return sum(NAME(t) for t in texts)\n"
)
STATS_TEST = (
    "import unittest\n\nfrom sample.stats import total\n\n\n"
    "class T(unittest.TestCase):\n    def test_total(self):\n"
    '        self.assertEqual(total(["a b", "c"]), 3)\n'
)
SCRIPT = f"""
case "$ORCH_TICKET_TITLE" in
  Rename*) grep -rl word_count --include=*.py . | xargs sed -i s/word_count/count_words/g ;;
  Caller*)
    name=word_count; grep -q "def count_words" sample/text.py && name=count_words
    printf %s {shlex.quote(STATS)} | sed "s/NAME/$name/g" > sample/stats.py
    printf %s {shlex.quote(STATS_TEST)} > tests/test_stats.py ;;
esac
"""


def _tests_pass_on(remote: Path, ref: str, tmp: Path) -> bool:
    clone = tmp / f"check-{ref}"
    sample.git("clone", "--quiet", "--branch", ref, str(remote), str(clone), cwd=tmp)
    return subprocess.run(sample.test_command(), shell=True, cwd=clone).returncode == 0


def test_two_green_branches_that_break_together_never_make_main_red(
    project: Project, tmp_path: Path
) -> None:
    project.use_pipeline(
        "replace: true\nstages:\n  - name: development\n  - name: deploy-staging\n"
        "checkpoints: []\nmax_rework_rounds: 2\n"
    )
    app = project.app(SCRIPT, repo={"max_active": 2})
    rename = app.intake.file("sample", "Rename word_count to count_words", "", actor="test")
    caller = app.intake.file("sample", "Caller of word_count", "", actor="test")
    app.dispatcher.run_until_idle()
    done = [app.store.get_task(t.id) for t in (rename, caller)]
    assert [(t.stage, t.status) for t in done] == [(Stage.DONE, TaskStatus.DONE)] * 2, [
        t.status_reason for t in done
    ]
    assert _tests_pass_on(project.remote, "main", tmp_path)

    # exactly one of them met the other's change on main: its candidate was red, it went back
    # to development with the failing output, and landed once fixed
    red = [
        (t, g)
        for t in done
        for g in app.store.gate_records(t.id)
        if g.gate == "merge-candidate" and not g.passed
    ]
    assert len(red) == 1
    late, record = red[0]
    assert "Error" in record.reason  # the test run's own output
    back = [
        tr
        for tr in app.store.transitions(late.id)
        if (tr.from_stage, tr.to_stage) == (Stage.DEPLOY_STAGING, Stage.DEVELOPMENT)
    ]
    assert len(back) == 1 and "fails the tests" in back[0].reason
    # merged branches are gone from the remote; main and the untouched branch stay
    assert set(project.refs()) == {"refs/heads/main", "refs/heads/keep"}
