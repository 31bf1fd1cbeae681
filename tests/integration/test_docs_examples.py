"""The YAML examples of the README and docs/ are what orch reads: every pipeline example parses
to a pipeline that lands its change, and every settings example loads."""

from __future__ import annotations

import pytest
import yaml
from docs_examples import EXAMPLES, kind, readme_pipeline

from orch.config import IsolatedSettings
from orch.domain import pipeline as pl
from orch.domain.states import Stage
from orch.pipeline_file import parse


@pytest.mark.parametrize(("where", "text"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_every_yaml_example_in_the_docs_is_read_by_orch(where: str, text: str) -> None:
    what = kind(text)
    if what == "pipeline":
        pipeline = parse(text, where)
        assert any(pl.Action.MERGE in s.actions for s in pipeline.stages)
    elif what == "settings":
        IsolatedSettings(**yaml.safe_load(text))
    else:
        assert what == "foreign", f"{where}: an example of no file orch reads: {what}"


def test_the_docs_hold_pipeline_and_settings_examples() -> None:
    kinds = [kind(text) for _, text in EXAMPLES]
    assert kinds.count("pipeline") >= 3 and kinds.count("settings") >= 4


def test_the_readme_budget_example_changes_only_the_budgets_of_the_built_in_pipeline() -> None:
    pipeline = parse(readme_pipeline(budget=True))
    built_in = pl.default_pipeline()
    assert pipeline.stage_names == built_in.stage_names
    assert pipeline.checkpoints == built_in.checkpoints
    assert pipeline.budget.usd == 5.0
    assert pipeline.spec(Stage.DEVELOPMENT).budget.usd == 2.0
    for spec in pipeline.stages:
        assert spec.gates == built_in.spec(spec.stage).gates
        assert spec.actions == built_in.spec(spec.stage).actions


def test_the_readme_pipeline_example_removes_two_stages_and_keeps_the_merge() -> None:
    pipeline = parse(readme_pipeline(budget=False))
    assert Stage.ARCHITECTURE not in pipeline.stage_names
    assert Stage.TESTING not in pipeline.stage_names
    assert pipeline.spec(Stage.DEPLOY_STAGING).actions[0] == pl.Action.MERGE
    assert "Fix this first" in pipeline.spec(Stage.DEVELOPMENT).prompt
