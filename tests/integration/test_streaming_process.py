"""An agent process whose events are read as they are printed: the budget stops it at once."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from orch.adapters.agents.claude_code import ClaudeStream
from orch.adapters.agents.streaming import StreamingProcess
from orch.domain.ledger import Budget, Prices, Usage
from orch.domain.prices import Pricing
from orch.domain.states import Stage
from orch.ports import AgentRequest

# prints two assistant messages of 600 tokens each, then waits for a file nobody creates: only a
# kill ends it, so a run that ends at all was ended by orch reading its events
CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    for n in (1, 2):
        print(json.dumps({"type": "assistant", "message": {"id": f"m{n}", "content": [],
              "usage": {"input_tokens": 500, "output_tokens": 100}}}), flush=True)
    print("not json: a CLI's own complaint", flush=True)
    while not os.path.exists("go"):
        time.sleep(0.05)
    print(json.dumps({"type": "assistant", "message": {"id": "m3", "content": [],
          "usage": {"input_tokens": 500, "output_tokens": 100}}}), flush=True)
    open("third-turn", "w").close()
    """
)


def request(tmp_path: Path, budget: Budget) -> AgentRequest:
    return AgentRequest(
        task_key="APP-1",
        stage=Stage.DEVELOPMENT,
        role="developer",
        attempt=1,
        prompt="",
        workdir=tmp_path,
        log_path=tmp_path / "logs" / "run.log",
        env={"PATH": "/usr/bin:/bin"},
        timeout_s=60,
        budget=budget,
    )


@pytest.fixture
def started() -> Iterator[list[StreamingProcess]]:
    """The processes a test starts, killed when it ends however it ends."""
    procs: list[StreamingProcess] = []
    yield procs
    for proc in procs:
        proc.kill(0)


def start(procs: list[StreamingProcess], req: AgentRequest, prices: Prices) -> StreamingProcess:
    pricing = Pricing(prices)
    proc = StreamingProcess([sys.executable, "-c", CHILD], req, req.env, ClaudeStream(), pricing)
    procs.append(proc)
    return proc


def test_an_agent_that_crosses_its_budget_is_killed_on_the_event_that_crossed_it(
    tmp_path: Path, started: list[StreamingProcess]
) -> None:
    req = request(tmp_path, Budget(tokens=1000))
    proc = start(started, req, Prices())
    code = proc.wait(30)
    assert code == -9, "the child should have been killed, not left waiting"
    report = proc.report()
    assert report.over_budget == "1200 of 1000 tokens"
    assert not report.ok
    assert proc.usage() == Usage(tokens_in=1000, tokens_out=200)
    log = req.log_path.read_text()
    assert log.count('"type": "assistant"') == 2


def test_a_dollar_budget_is_checked_against_the_configured_prices_between_reports(
    tmp_path: Path, started: list[StreamingProcess]
) -> None:
    req = request(tmp_path, Budget(usd=0.002))
    # $3 per million input tokens: each message's 500 tokens cost $0.0015, so the second crosses
    proc = start(started, req, Prices(input=3.0))
    assert proc.wait(30) == -9
    assert proc.report().over_budget == "$0.0030 of $0.0020"
    assert proc.usage().cost_usd == pytest.approx(0.003)


def test_an_agent_held_to_a_tighter_budget_than_it_has_spent_is_killed_at_once(
    tmp_path: Path, started: list[StreamingProcess]
) -> None:
    req = request(tmp_path, Budget(tokens=5000))
    proc = start(started, req, Prices())
    while proc.usage().tokens < 1200 and proc.wait(0.05) is None:
        pass
    assert proc.wait(0) is None, "within its budget it waits for its file"
    assert proc.usage().tokens == 1200

    proc.limit(Budget(tokens=1000))  # runs elsewhere spent the rest of the day

    assert proc.wait(30) == -9
    assert proc.report().over_budget == "1200 of 1000 tokens"
