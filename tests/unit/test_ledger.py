"""Budgets and usage: what a run may spend, when it is over, and how an operator raises it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orch.domain.errors import PipelineError
from orch.domain.ledger import Budget, Limits, Prices, Usage, budgets_of, raised


def limits(stage: Budget, task: Budget, stage_spent: Usage, task_spent: Usage) -> Limits:
    return Limits("development", stage, task, stage_spent, task_spent)


def test_a_token_budget_counts_fresh_input_output_and_cache_writes_but_not_cache_reads() -> None:
    used = Usage(tokens_in=100, tokens_out=50, cache_read=10_000, cache_write=25)
    assert used.tokens == 175
    assert Budget(tokens=175).crossed(used) == ""
    assert Budget(tokens=174).crossed(used) == "175 of 174 tokens"


def test_a_dollar_budget_is_crossed_only_past_its_limit_and_used_up_at_it() -> None:
    budget = Budget(usd=1.0)
    assert budget.crossed(Usage(cost_usd=1.0)) == ""
    assert budget.exhausted(Usage(cost_usd=1.0)) == "$1.0000 of $1.0000"
    assert budget.crossed(Usage(cost_usd=1.01)) == "$1.0100 of $1.0000"


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(PipelineError, match="negative"):
        Budget(usd=-1)
    with pytest.raises(PipelineError, match="negative"):
        Budget(tokens=-5)


def test_a_run_may_spend_what_the_tighter_of_its_stage_and_task_budgets_leaves() -> None:
    lim = limits(
        Budget(usd=2.0, tokens=10_000),
        Budget(usd=5.0),
        Usage(tokens_in=4_000, cost_usd=1.5),
        Usage(tokens_in=9_000, cost_usd=4.8),
    )
    left = lim.left()
    assert left.usd == pytest.approx(0.2)  # the task has $0.20 left, the stage $0.50
    assert left.tokens == 6_000  # only the stage counts tokens


def test_the_reason_names_the_scope_whose_budget_was_crossed() -> None:
    lim = limits(Budget(tokens=1_000), Budget(usd=1.0), Usage(tokens_in=900), Usage(cost_usd=0.1))
    assert lim.crossed(Usage(tokens_in=50)) == ""
    assert (
        lim.crossed(Usage(tokens_in=150)) == "budget: stage development spent 1050 of 1000 tokens"
    )
    assert lim.crossed(Usage(cost_usd=0.95)) == "budget: the task spent $1.0500 of $1.0000"


def test_no_run_starts_once_a_budget_is_used_up() -> None:
    lim = limits(Budget(usd=1.0), Budget(), Usage(cost_usd=1.0), Usage(cost_usd=1.0))
    assert lim.exhausted() == "budget: stage development spent $1.0000 of $1.0000"
    assert limits(Budget(), Budget(), Usage(cost_usd=9), Usage(cost_usd=9)).exhausted() == ""


def test_raising_a_budget_raises_the_scope_that_was_used_up() -> None:
    lim = limits(Budget(usd=0.5), Budget(usd=10.0), Usage(cost_usd=0.5), Usage(cost_usd=0.5))
    out = raised({}, lim, Budget(usd=2.0))
    assert out == {"task": {}, "stages": {"development": {"usd": 2.0}}}
    stage, task = budgets_of(out, "development", Budget(usd=0.5), Budget(usd=10.0))
    assert (stage, task) == (Budget(usd=2.0), Budget(usd=10.0))


def test_raising_a_budget_when_both_scopes_are_used_up_raises_both() -> None:
    lim = limits(Budget(tokens=100), Budget(tokens=100), Usage(tokens_in=100), Usage(tokens_in=100))
    out = raised({"stages": {"analysis": {"usd": 1.0}}}, lim, Budget(tokens=500))
    assert out == {
        "task": {"tokens": 500},
        "stages": {"analysis": {"usd": 1.0}, "development": {"tokens": 500}},
    }


def test_raising_with_no_budget_used_up_sets_the_task_budget() -> None:
    lim = limits(Budget(), Budget(usd=3.0), Usage(), Usage(cost_usd=1.0))
    assert raised({}, lim, Budget(usd=4.0)) == {"task": {"usd": 4.0}, "stages": {}}


def test_a_raise_never_lowers_a_budget() -> None:
    used_up = limits(Budget(usd=5.0), Budget(), Usage(cost_usd=5.0), Usage(cost_usd=5.0))
    assert raised({}, used_up, Budget(usd=2.0)) == {
        "task": {},
        "stages": {"development": {"usd": 5.0}},
    }
    not_used_up = limits(Budget(), Budget(usd=10.0), Usage(), Usage(cost_usd=1.0))
    assert raised({}, not_used_up, Budget(usd=3.0)) == {"task": {"usd": 10.0}, "stages": {}}


def test_prices_turn_tokens_into_dollars_per_million() -> None:
    prices = Prices(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75)
    cost = prices.cost(Usage(1_000_000, 100_000, 2_000_000, 0))
    assert cost == pytest.approx(3.0 + 1.5 + 0.6)
    assert not Prices()


USAGE = st.builds(
    Usage,
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.floats(0, 1000),
)


@given(
    USAGE,
    USAGE,
    st.builds(Budget, st.none() | st.floats(0, 2000), st.none() | st.integers(0, 10**8)),
)
def test_a_run_that_spends_no_more_than_what_is_left_never_crosses_the_budget(
    spent: Usage, run: Usage, budget: Budget
) -> None:
    lim = limits(budget, Budget(), spent, spent)
    left = lim.left()
    # dollars compare to within a billionth, as the ledger rounds them
    within = (left.usd is None or run.cost_usd <= left.usd + 1e-9) and (
        left.tokens is None or run.tokens <= left.tokens
    )
    if within and not lim.exhausted():
        assert lim.crossed(run) == ""
    if not within:
        assert lim.crossed(run) != ""


def test_usage_round_trips_through_its_dict() -> None:
    u = Usage(1, 2, 3, 4, 0.5)
    assert Usage.from_dict(u.as_dict()) == u
    assert u + u == Usage(2, 4, 6, 8, 1.0)
