"""`.orch/pipeline.yaml`: changes to the built-in pipeline by stage name, or a whole pipeline of
its own; errors name file, line, field."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orch.domain import pipeline as pl
from orch.domain.errors import PipelineError
from orch.domain.ledger import Budget
from orch.domain.pipeline import Checkpoint, GateKind
from orch.domain.states import WORK_STAGES, Stage
from orch.pipeline_file import parse

SOURCE = "app/.orch/pipeline.yaml"
DEFAULT = pl.default_pipeline()


def _parse(text: str, agents: list[str] | None = None) -> pl.Pipeline:
    return parse(textwrap.dedent(text), source=SOURCE, agents=agents)


def _error(text: str, agents: list[str] | None = None) -> str:
    with pytest.raises(PipelineError) as info:
        _parse(text, agents)
    return str(info.value)


# -- valid overrides ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# nothing here\n"])
def test_an_empty_file_is_the_default_pipeline(text: str) -> None:
    assert parse(text, source=SOURCE) == DEFAULT


def test_a_stage_entry_inherits_every_field_it_does_not_set() -> None:
    p = _parse(
        """
        replace: true
        merge: false
        stages:
          - name: analysis
            role: product-owner
          - name: development
        """
    )
    assert p.stage_names == (Stage.ANALYSIS, Stage.DEVELOPMENT)
    analysis, development = p.stages
    base_analysis = DEFAULT.spec(Stage.ANALYSIS)
    assert analysis.role == "product-owner"
    assert analysis.agent == base_analysis.agent
    assert analysis.prompt == base_analysis.prompt
    assert analysis.gates == base_analysis.gates
    assert analysis.timeout_s == base_analysis.timeout_s
    assert development == DEFAULT.spec(Stage.DEVELOPMENT)


def test_limits_are_inherited_unless_set() -> None:
    p = _parse("max_attempts: 5\n")
    assert p.max_attempts == 5
    assert p.max_rework_rounds == DEFAULT.max_rework_rounds
    assert p.stages == DEFAULT.stages


def test_agent_null_removes_the_agent_from_a_stage() -> None:
    p = _parse(
        """
        stages:
          - name: analysis
            agent: null
          - name: development
        """
    )
    assert p.spec(Stage.ANALYSIS).agent is None
    assert p.spec(Stage.DEVELOPMENT).agent == "default"


def test_overridden_fields_replace_the_defaults() -> None:
    p = _parse(
        """
        stages:
          - name: development
            agent: claude
            prompt: "Implement {{ ticket.key }}"
            timeout_s: 120
            gates:
              - name: lint
                kind: command
                command: "ruff check ."
                timeout_s: 30
        """,
        agents=["default", "claude"],
    )
    spec = p.spec(Stage.DEVELOPMENT)
    assert spec.agent == "claude"
    assert spec.prompt == "Implement {{ ticket.key }}"
    assert spec.timeout_s == 120
    assert spec.gates == (
        pl.GateSpec("lint", GateKind.COMMAND, command="ruff check .", timeout_s=30),
    )


def test_checkpoints_given_replace_the_built_in_list() -> None:
    p = _parse(
        """
        checkpoints:
          - name: sign-off
            before: testing
            reject_to: development
            question: Ship it?
        """
    )
    assert p.checkpoints == (
        Checkpoint(
            "sign-off", before=Stage.TESTING, reject_to=Stage.DEVELOPMENT, question="Ship it?"
        ),
    )


def test_an_empty_checkpoint_list_removes_every_checkpoint() -> None:
    assert _parse("checkpoints: []\n").checkpoints == ()


def test_a_checkpoint_after_a_stage_waits_before_the_next_stage() -> None:
    p = _parse(
        """
        checkpoints:
          - name: look
            after: development
            reject_to: development
        """
    )
    assert p.checkpoints == (Checkpoint("look", before=Stage.REVIEW, reject_to=Stage.DEVELOPMENT),)


def test_after_follows_the_order_of_the_overridden_stages() -> None:
    p = _parse(
        """
        replace: true
        merge: false
        stages:
          - name: analysis
          - name: development
        checkpoints:
          - name: look
            after: analysis
            reject_to: analysis
        """
    )
    assert p.checkpoints == (
        Checkpoint("look", before=Stage.DEVELOPMENT, reject_to=Stage.ANALYSIS),
    )


def test_built_in_checkpoints_whose_stages_are_left_out_are_dropped() -> None:
    p = _parse(
        """
        replace: true
        merge: false
        stages:
          - name: analysis
          - name: architecture
          - name: development
        """
    )
    assert [c.name for c in p.checkpoints] == ["approve-plan"]


def test_a_known_agent_is_accepted() -> None:
    p = _parse("stages:\n  - name: analysis\n    agent: default\n", agents=["default"])
    assert p.spec(Stage.ANALYSIS).agent == "default"


def test_explicit_rework_to_null_lets_review_stand_without_development() -> None:
    p = _parse(
        """
        replace: true
        merge: false
        stages:
          - name: review
            rework_to: null
        """
    )
    assert p.stage_names == (Stage.REVIEW,)
    assert p.spec(Stage.REVIEW).rework_to is None


def test_budgets_are_read_for_the_task_and_per_stage() -> None:
    p = _parse(
        """\
        budget: {usd: 5.0, tokens: 2000000}
        stages:
          - name: analysis
            budget: {usd: 0.5}
          - name: development
        """
    )
    assert p.budget == Budget(usd=5.0, tokens=2_000_000)
    assert p.spec(Stage.ANALYSIS).budget == Budget(usd=0.5)
    assert p.spec(Stage.DEVELOPMENT).budget == Budget()
    assert pl.from_dict(pl.to_dict(p)) == p


def test_a_stages_role_instructions_can_be_overridden() -> None:
    p = _parse(
        """\
        stages:
          - name: review
            instructions: "Review {{ ticket.key }} as a security engineer."
        """
    )
    assert p.spec(Stage.REVIEW).instructions == "Review {{ ticket.key }} as a security engineer."


# -- errors: `source:line: field:` ------------------------------------------------------------


ERRORS = [
    (
        "negative-budget",
        """\
        stages:
          - name: analysis
            budget: {usd: -1}
        """,
        None,
        f"{SOURCE}:3: stages[0].budget.usd: ",
    ),
    (
        "unknown-budget-unit",
        """\
        budget: {euros: 3}
        """,
        None,
        f"{SOURCE}:1: budget.euros: ",
    ),
    (
        "unknown-variable-in-instructions",
        """\
        stages:
          - name: analysis
            instructions: "You serve {{ customer }}"
        """,
        None,
        f"{SOURCE}:3: stages[0].instructions: ",
    ),
    (
        "unknown-stage",
        """\
        stages:
          - name: analysis
          - name: bogus
        """,
        None,
        f"{SOURCE}:3: stages[1].name: ",
    ),
    (
        "unknown-field",
        """\
        stages:
          - name: analysis
            colour: red
        """,
        None,
        f"{SOURCE}:3: stages[0].colour: ",
    ),
    (
        "unknown-top-level-field",
        """\
        max_attempts: 2
        stagez: []
        """,
        None,
        f"{SOURCE}:2: stagez: ",
    ),
    (
        "bad-type-stage-field",
        """\
        stages:
          - name: analysis
            timeout_s: soon
        """,
        None,
        f"{SOURCE}:3: stages[0].timeout_s: ",
    ),
    (
        "bad-type-top-level",
        """\
        max_rework_rounds: 1
        max_attempts: many
        """,
        None,
        f"{SOURCE}:2: max_attempts: ",
    ),
    (
        "command-gate-without-command",
        """\
        stages:
          - name: development
            gates:
              - name: tests
                kind: command
        """,
        None,
        f"{SOURCE}:4: stages[0].gates[0]: ",
    ),
    (
        "unknown-variable-in-prompt",
        """\
        stages:
          - name: analysis
          - name: development
            prompt: "Fix {{ ticket.key }} for {{ customer }}"
        """,
        None,
        f"{SOURCE}:4: stages[1].prompt: ",
    ),
    (
        "unknown-variable-in-gate-command",
        """\
        stages:
          - name: development
            gates:
              - name: tests
                kind: command
                command: "make {{ target }}"
        """,
        None,
        f"{SOURCE}:6: stages[0].gates[0].command: ",
    ),
    (
        "unknown-agent",
        """\
        stages:
          - name: analysis
            agent: claude
        """,
        ["default"],
        f"{SOURCE}:3: stages[0].agent: ",
    ),
    (
        "rework-to-outside-pipeline",
        """\
        replace: true
        merge: false
        stages:
          - name: analysis
          - name: review
            rework_to: development
        """,
        None,
        f"{SOURCE}:6: stages[1].rework_to: ",
    ),
    (
        "rework-to-removed-stage",
        """\
        stages:
          - name: development
            remove: true
          - name: review
            rework_to: development
        """,
        None,
        f"{SOURCE}:5: stages[1].rework_to: ",
    ),
    (
        "removed-stage-with-fields",
        """\
        stages:
          - name: review
            remove: true
            agent: default
        """,
        None,
        f"{SOURCE}:2: stages[0]: ",
    ),
    (
        "stage-listed-twice",
        """\
        stages:
          - name: review
          - name: review
            agent: default
        """,
        None,
        f"{SOURCE}:3: stages[1].name: ",
    ),
    (
        "remove-in-a-replacing-pipeline",
        """\
        replace: true
        stages:
          - name: development
          - name: review
            remove: true
          - name: deploy-staging
        """,
        None,
        f"{SOURCE}:5: stages[1].remove: ",
    ),
    (
        "no-stage-merges",
        """\
        replace: true
        stages:
          - name: development
        """,
        None,
        f"{SOURCE}:2: stages: no stage merges",
    ),
    (
        "merge-removed",
        """\
        stages:
          - name: deploy-staging
            actions: [deploy:staging]
        """,
        None,
        f"{SOURCE}:1: stages: no stage merges",
    ),
    (
        "every-stage-removed",
        """\
        stages:
"""
        + "".join(f"          - {{name: {s.value}, remove: true}}\n" for s in WORK_STAGES)
        + """\
        merge: false
        """,
        None,
        f"{SOURCE}:1: stages: every stage is left out",
    ),
    (
        "checkpoint-after-last-stage",
        """\
        checkpoints:
          - name: too-late
            after: deploy
            reject_to: development
        """,
        None,
        f"{SOURCE}:3: checkpoints[0].after: ",
    ),
    (
        "checkpoint-before-missing-stage",
        """\
        replace: true
        merge: false
        stages:
          - name: analysis
          - name: development
        checkpoints:
          - name: c
            before: review
            reject_to: analysis
        """,
        None,
        f"{SOURCE}:8: checkpoints[0].before: ",
    ),
]


@pytest.mark.parametrize(
    ("text", "agents", "prefix"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_errors_name_the_file_line_and_field(
    text: str, agents: list[str] | None, prefix: str
) -> None:
    message = _error(text, agents)
    assert message.startswith(prefix), message


def test_an_unknown_stage_error_lists_the_known_stages() -> None:
    message = _error("stages:\n  - name: bogus\n")
    assert "development" in message


def test_an_unknown_agent_error_names_the_agent() -> None:
    message = _error("stages:\n  - name: analysis\n    agent: claude\n", ["default"])
    assert "'claude'" in message


def test_an_unknown_template_variable_error_names_the_variable() -> None:
    message = _error('stages:\n  - name: analysis\n    prompt: "{{ customer }}"\n')
    assert "customer" in message


def test_invalid_yaml_names_the_file_and_line() -> None:
    message = _error("stages:\n  - name: analysis\n\t- name: development\n")
    assert message.startswith(f"{SOURCE}:3: not valid YAML"), message


def test_a_top_level_that_is_not_a_mapping_is_refused() -> None:
    message = _error("- analysis\n- development\n")
    assert message.startswith(f"{SOURCE}:1: "), message


# -- properties: what a file that extends, or replaces, the built-in pipeline makes -----------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(WORK_STAGES), min_size=1, max_size=len(WORK_STAGES), unique=True))
def test_any_non_empty_ordered_subset_of_stages_replacing_parses_to_exactly_those_stages(
    names: list[Stage],
) -> None:
    text = "replace: true\nmerge: false\nstages:\n" + "".join(
        f"  - name: {n.value}\n" for n in names
    )
    p = parse(text, source=SOURCE, agents=["default"])
    assert p.stage_names == tuple(names)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.sampled_from(WORK_STAGES), unique=True, max_size=len(WORK_STAGES) - 1),
    st.lists(st.sampled_from(WORK_STAGES), unique=True),
)
def test_an_extending_file_keeps_every_built_in_stage_it_does_not_remove_as_built_in(
    removed: list[Stage], listed: list[Stage]
) -> None:
    entries = [f"  - {{name: {s.value}, remove: true}}\n" for s in removed]
    entries += [f"  - {{name: {s.value}, timeout_s: 77}}\n" for s in listed if s not in removed]
    text = "merge: false\nstages:\n" + "".join(entries)
    p = parse(text, source=SOURCE, agents=["default"])
    assert p.stage_names == tuple(s for s in DEFAULT.stage_names if s not in removed)
    for spec in p.stages:
        built_in = DEFAULT.spec(spec.stage)
        assert spec.timeout_s == (77 if spec.stage in listed else built_in.timeout_s)
        assert spec.gates == built_in.gates and spec.actions == built_in.actions
        rework = built_in.rework_to if built_in.rework_to not in removed else None
        assert spec.rework_to == rework


def test_the_readme_budget_example_keeps_the_whole_built_in_pipeline_and_its_merge() -> None:
    p = _parse(
        """\
        budget: {usd: 5.0}
        stages:
          - name: development
            budget: {usd: 2.0, tokens: 2000000}
        """
    )
    assert p.stage_names == DEFAULT.stage_names
    assert p.checkpoints == DEFAULT.checkpoints
    assert p.spec(Stage.DEPLOY_STAGING).actions == (pl.Action.MERGE, pl.Action.DEPLOY_STAGING)
    assert p.spec(Stage.DEVELOPMENT).budget == Budget(usd=2.0, tokens=2_000_000)
    assert p.budget == Budget(usd=5.0)


def test_a_removed_stage_takes_its_checkpoints_and_the_rework_that_led_to_it_away() -> None:
    p = _parse(
        """\
        stages:
          - {name: architecture, remove: true}
          - {name: development, remove: true}
          - {name: deploy, remove: true}
        """
    )
    assert p.stage_names == (Stage.ANALYSIS, Stage.REVIEW, Stage.TESTING, Stage.DEPLOY_STAGING)
    assert p.checkpoints == ()  # approve-plan was before architecture, confirm-deploy before deploy
    assert p.spec(Stage.REVIEW).rework_to is None


def test_a_pipeline_that_says_it_merges_nothing_is_accepted() -> None:
    p = _parse("merge: false\nstages:\n  - {name: deploy-staging, actions: []}\n")
    assert not any(s.actions for s in p.stages if s.stage == Stage.DEPLOY_STAGING)


def test_review_without_development_parses() -> None:
    # the built-in review stage reworks to development; listing review alone must still parse,
    # just as built-in checkpoints whose stages are left out are dropped
    p = _parse("replace: true\nmerge: false\nstages:\n  - name: review\n")
    assert p.stage_names == (Stage.REVIEW,)


def test_a_checkpoint_timeout_and_its_action_are_read() -> None:
    pipeline = parse(
        "checkpoints:\n"
        "  - {name: approve-plan, after: analysis, reject_to: analysis,"
        " timeout_s: 3600, on_timeout: park}\n"
    )
    [cp] = pipeline.checkpoints
    assert (cp.before, cp.timeout_s, cp.on_timeout) == (
        Stage.ARCHITECTURE,
        3600.0,
        pl.OnTimeout.PARK,
    )
    assert pl.from_dict(pl.to_dict(pipeline)) == pipeline


def test_an_unknown_timeout_action_names_the_field() -> None:
    with pytest.raises(PipelineError, match=r"^f:2: checkpoints\[0\]\.on_timeout: "):
        parse(
            "checkpoints:\n"
            "  - {name: a, after: analysis, reject_to: analysis, on_timeout: shout}\n",
            "f",
        )
