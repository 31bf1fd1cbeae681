"""Gate predicates, strict prompt rendering and the agent's allowlisted environment."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orch.domain.agent_env import BASE_ALLOWED, child_env
from orch.domain.errors import TemplateError
from orch.domain.gates import Verdict, artifact_verdict, command_verdict, file_verdict
from orch.domain.prompts import render, sample_context
from orch.domain.states import Stage

# -- artifact gate ------------------------------------------------------------------------------

SPEC = "# KEY-1\n\n## Problem\n\nIt breaks.\n\n## Acceptance criteria\n\n- it works\n"
HEADINGS = ("Problem", "Acceptance criteria")


def test_a_missing_artifact_fails() -> None:
    v = artifact_verdict("spec.md", None, HEADINGS)
    assert not v.passed
    assert "spec.md is missing" in v.reason


@pytest.mark.parametrize("text", ["", "  \n\n\t\n"])
def test_an_empty_artifact_fails(text: str) -> None:
    v = artifact_verdict("spec.md", text, HEADINGS)
    assert not v.passed
    assert "empty" in v.reason


def test_an_artifact_missing_a_required_heading_fails_and_names_it() -> None:
    v = artifact_verdict("spec.md", "## Problem\n\nIt breaks.\n", HEADINGS)
    assert not v.passed
    assert "Acceptance criteria" in v.reason
    assert "Problem" not in v.reason.split(":", 1)[1]


def test_a_heading_mentioned_in_prose_does_not_count() -> None:
    v = artifact_verdict("spec.md", "## Problem\n\nAcceptance criteria: none yet\n", HEADINGS)
    assert not v.passed


def test_an_artifact_with_every_heading_passes() -> None:
    v = artifact_verdict("spec.md", SPEC, HEADINGS)
    assert v.passed


@pytest.mark.parametrize(
    "text",
    [
        "# problem\n\nx\n\n# ACCEPTANCE CRITERIA\n\ny\n",
        "### Problem ###\n\nx\n\n###### acceptance Criteria\n\ny\n",
        "## Problem  \n\nx\n\n## Acceptance criteria\n",
    ],
    ids=["case", "levels-and-closing-hashes", "trailing-space"],
)
def test_headings_match_case_insensitively_at_any_level(text: str) -> None:
    assert artifact_verdict("spec.md", text, HEADINGS).passed


def test_an_artifact_with_no_required_headings_passes_when_not_empty() -> None:
    assert artifact_verdict("notes.md", "anything", ()).passed


# -- verdict files ------------------------------------------------------------------------------

REVIEW_PASSES = ("approve", "approved")


def review(text: str | None, before: str | None = None) -> Verdict:
    return file_verdict("review.md", text, before, REVIEW_PASSES)


@pytest.mark.parametrize(
    "text",
    [
        "# Review\n\nLooks good.\n\nVerdict: approve\n",
        "Verdict: Approved\n",
        "**Verdict:** approve\n",
        "VERDICT: APPROVE\n",
        "Verdict: `approve`.\n",
        "# Review\n\nFine.\n\n## Verdict\n\napprove\n",
    ],
)
def test_an_approving_review_passes(text: str) -> None:
    v = review(text)
    assert v.passed, v.reason


def test_a_review_requesting_changes_fails_with_its_reasons() -> None:
    text = "# Review\n\nPlease validate the input.\n\nVerdict: request-changes\n"
    v = review(text)
    assert not v.passed
    assert "request-changes" in v.reason
    assert "Please validate the input." in v.reason


def test_a_review_without_a_verdict_fails_and_says_what_it_needs() -> None:
    v = review("# Review\n\nThe verdict is unclear to me.\n")
    assert not v.passed
    assert "states no verdict" in v.reason
    assert "`Verdict: approve`" in v.reason


def test_a_missing_review_fails() -> None:
    v = review(None)
    assert not v.passed
    assert "missing" in v.reason


@pytest.mark.parametrize(
    "text",
    [
        "Verdict: request-changes\n\nFixed now.\n\nVerdict: approve\n",
        "Verdict: approve\n\nOn second thought.\n\nVerdict: request-changes\n",
        "## Verdict\n\nreject\n\nVerdict: approve\n",
    ],
)
def test_a_file_stating_two_different_verdicts_fails_quoting_both(text: str) -> None:
    v = review(text)
    assert not v.passed
    assert "2 different verdicts" in v.reason
    assert "approve" in v.reason and ("request-changes" in v.reason or "reject" in v.reason)


@pytest.mark.parametrize(
    "said",
    ["lgtm", "approve, but rename the helper", "approve?", "probably approve", "yes"],
)
def test_an_unrecognised_verdict_fails_closed_and_quotes_the_line(said: str) -> None:
    v = review(f"# Review\n\nNotes.\n\nVerdict: {said}\n")
    assert not v.passed
    assert f"line 5 reads 'Verdict: {said}'" in v.reason
    assert "only approve or approved passes" in v.reason


def test_a_verdict_file_there_when_the_round_began_and_not_written_again_fails() -> None:
    old = "# Review\n\nRound 0 was fine.\n\nVerdict: approve\n"
    v = review(None, before=old)
    assert not v.passed
    assert v.reason.startswith("no verdict written in this round")


@pytest.mark.parametrize(
    "old",
    ["# Review\n\nRound 0.\n\nVerdict: request-changes\n", "# Review\n\nVerdict: approve\n"],
)
def test_a_verdict_written_in_this_round_counts_even_if_an_earlier_one_said_the_same(
    old: str,
) -> None:
    assert review("# Review\n\nVerdict: approve\n", before=old).passed


@pytest.mark.parametrize(
    ("text", "passed", "says"),
    [
        ("## Results\n\nall green\n\nVerdict: pass\n", True, "verdict pass"),
        ("## Results\n\n2 of 3 criteria fail\n\n## Verdict\n\nfail\n", False, "2 of 3"),
        ("## Results\n\nall green\n\nVerdict: approve\n", False, "only pass or passed"),
        ("Everything passes.\n\nVerdict: pass\n", False, "lacks the heading(s): Results"),
        ("## Results\n\nran it\n\n## Verdict\n\n", False, "states no verdict"),
    ],
)
def test_a_test_report_passes_only_on_an_explicit_pass(text: str, passed: bool, says: str) -> None:
    v = file_verdict("test-report.md", text, None, ("pass", "passed"), ("Results",))
    assert v.passed is passed
    assert says in v.reason


@given(st.text(max_size=300))
def test_no_text_without_a_pass_word_ever_passes_a_verdict_gate(text: str) -> None:
    if re.search(r"approve", text, re.I):
        return
    assert not review(text).passed


# -- command verdict ----------------------------------------------------------------------------


def test_a_command_that_exits_zero_passes() -> None:
    assert command_verdict("pytest", 0, False, "").passed


def test_a_command_that_exits_non_zero_fails_with_the_tail_of_its_output() -> None:
    v = command_verdict("pytest", 1, False, "...\n1 failed in 0.1s")
    assert not v.passed
    assert "exited 1" in v.reason
    assert "1 failed in 0.1s" in v.reason


def test_a_command_that_timed_out_fails_even_with_exit_code_zero() -> None:
    v = command_verdict("pytest", 0, True, "")
    assert not v.passed
    assert "timed out" in v.reason


def test_a_killed_command_fails() -> None:
    assert not command_verdict("pytest", None, False, "").passed


def test_the_output_tail_in_a_failure_is_bounded() -> None:
    v = command_verdict("pytest", 2, False, "x" * 10_000 + "END")
    assert v.reason.endswith("END")
    assert len(v.reason) < 1_000


# -- prompts ------------------------------------------------------------------------------------


def test_known_variables_render() -> None:
    out = render("{{ ticket.key }} in {{ repo.name }}, attempt {{ attempt }}", sample_context())
    assert out == "KEY-1 in repo, attempt 1"


def test_an_unknown_variable_is_an_error() -> None:
    with pytest.raises(TemplateError, match="customer"):
        render("Hello {{ customer }}", sample_context())


def test_an_unknown_attribute_of_a_known_variable_is_an_error() -> None:
    with pytest.raises(TemplateError):
        render("{{ ticket.priority }}", sample_context())


def test_an_unknown_variable_in_an_untaken_branch_is_not_evaluated() -> None:
    assert render("{% if feedback %}{{ nope }}{% endif %}ok", sample_context()) == "ok"


@pytest.mark.parametrize("template", ["{{ ticket.key ", "{% if feedback %}no end", "{% bogus %}"])
def test_a_template_that_does_not_parse_is_an_error(template: str) -> None:
    with pytest.raises(TemplateError, match="does not parse"):
        render(template, sample_context())


def test_the_default_prompts_render_with_the_sample_context() -> None:
    from orch.domain.pipeline import default_pipeline

    for spec in default_pipeline().stages:
        render(spec.prompt, sample_context())


def test_feedback_renders_into_the_default_prompt_only_when_present() -> None:
    from orch.domain.pipeline import default_pipeline

    prompt = default_pipeline().stages[2].prompt
    ctx = sample_context()
    assert "Feedback to address" not in render(prompt, ctx)
    ctx["feedback"] = "add a test for empty input"
    assert "add a test for empty input" in render(prompt, ctx)


def test_each_default_prompt_asks_for_exactly_what_its_stage_gates_check() -> None:
    from orch.domain.pipeline import GateKind, default_pipeline

    for spec in default_pipeline().stages:
        if spec.agent is None:
            continue
        ctx = {**sample_context(), "stage": spec.stage.value, "role": spec.role}
        prompt = render(spec.prompt, ctx)
        assert f"Stage: {spec.stage}" in prompt
        assert render(spec.instructions, ctx), f"{spec.role} has no standing instructions"
        for gate in spec.gates:
            if gate.kind == GateKind.COMMAND:
                assert render(gate.command, ctx) in prompt, (spec.stage, gate.name)
                continue
            assert render(gate.path, ctx) in prompt, (spec.stage, gate.name)
            for heading in gate.headings:
                assert f"## {heading}" in prompt, (spec.stage, heading)
            if gate.kind == GateKind.VERDICT:
                # the prompt names the pass word the gate accepts, and a way to say no
                assert f"`Verdict: {gate.passes[0]}`" in prompt, (spec.stage, gate.name)
                assert "`Verdict: request-changes`" in prompt or "`Verdict: fail`" in prompt


def test_earlier_stages_artifacts_and_feedback_reach_the_prompt() -> None:
    from orch.domain.pipeline import default_pipeline

    ctx = sample_context()
    ctx["artifacts"] = [{"stage": "analysis", "path": "docs/spec.md", "text": "SPEC BODY"}]
    ctx["feedback"] = "the reviewer wants input validation"
    ctx["previous_error"] = "`pytest` exited 1"
    prompt = render(default_pipeline().spec(Stage.DEVELOPMENT).prompt, ctx)
    assert "## docs/spec.md (from analysis)\n\nSPEC BODY" in prompt
    assert "## Feedback to address\n\nthe reviewer wants input validation" in prompt
    assert "## Why the previous attempt failed\n\n`pytest` exited 1" in prompt


# -- the agent's environment --------------------------------------------------------------------

ORCH_ENV = {
    "PATH": "/usr/bin",
    "HOME": "/home/orch",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "LC_CTYPE": "C.UTF-8",
    "GITEA_TOKEN": "gitea-secret",
    "PLANE_API_KEY": "plane-secret",
    "TELEGRAM_BOT_TOKEN": "tg-secret",
    "ORCH_STORE__URL": "postgresql://u:pw@db/orch",
    "GITHUB_TOKEN": "gh-secret",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
}
SECRETS = (
    "GITEA_TOKEN",
    "PLANE_API_KEY",
    "TELEGRAM_BOT_TOKEN",
    "ORCH_STORE__URL",
    "GITHUB_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
)


@pytest.mark.parametrize("name", SECRETS)
def test_credentials_never_reach_a_child(name: str) -> None:
    env = child_env(ORCH_ENV, {})
    assert name not in env


def test_no_secret_value_reaches_a_child_under_another_name() -> None:
    env = child_env(ORCH_ENV, {"ORCH_STAGE": "analysis"})
    for name in SECRETS:
        assert ORCH_ENV[name] not in env.values()


def test_allowlisted_and_locale_variables_pass() -> None:
    env = child_env(ORCH_ENV, {})
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/orch",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "LC_CTYPE": "C.UTF-8",
    }


def test_extras_are_added_and_win_over_the_environment() -> None:
    env = child_env(ORCH_ENV, {"ORCH_STAGE": "review", "HOME": "/work/tree"})
    assert env["ORCH_STAGE"] == "review"
    assert env["HOME"] == "/work/tree"


def test_a_configured_allowance_lets_a_named_variable_through() -> None:
    env = child_env({**ORCH_ENV, "ANTHROPIC_API_KEY": "k"}, {}, allowed=["ANTHROPIC_API_KEY"])
    assert env["ANTHROPIC_API_KEY"] == "k"
    assert "GITEA_TOKEN" not in env


def test_the_base_allowlist_holds_no_credential() -> None:
    for name in BASE_ALLOWED:
        assert not any(word in name for word in ("TOKEN", "KEY", "SECRET", "PASSWORD", "URL"))
