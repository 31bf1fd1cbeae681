"""`log.format: json`: one JSON object a line, carrying what the job it was logged in bound."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.contextvars import bound_contextvars

from orch.config import Settings, load_settings
from orch.domain.errors import ConfigError
from orch.logs import configure, configure_from
from orch.ports import AgentReport, AgentRequest
from orch.testing import InstantAgent, rig


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A stream the logs go to for the test; the logging set-up before it is put back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    try:
        yield out
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_carries_the_task_stage_job_and_run_it_was_logged_in(
    stream: io.StringIO,
) -> None:
    configure_from(Settings(log={"format": "json"}).log, stream)
    engine = logging.getLogger("orch.engine")
    with bound_contextvars(task="SAM-1", stage="analysis", job=7):
        with bound_contextvars(run=3, agent="default"):
            engine.warning("agent %s stalled", "default")
        structlog.get_logger("orch.store").info("claimed", attempt=2)
    engine.info("between jobs")

    stalled, claimed, between = lines(stream)
    assert stalled["event"] == "agent default stalled"
    assert (stalled["level"], stalled["logger"]) == ("warning", "orch.engine")
    assert {k: stalled[k] for k in ("task", "stage", "job", "run", "agent")} == {
        "task": "SAM-1",
        "stage": "analysis",
        "job": 7,
        "run": 3,
        "agent": "default",
    }
    assert "timestamp" in stalled
    # structlog's own loggers get the same context; the run ended with its block
    assert (claimed["event"], claimed["attempt"], claimed["task"]) == ("claimed", 2, "SAM-1")
    assert "run" not in claimed
    # outside a job, nothing of one is left bound
    assert between["event"] == "between jobs"
    assert not {"task", "stage", "job", "run"} & set(between)


class _Reporting:
    """An agent process that logs when asked for its report, as a real one's adapter may."""

    def __init__(self, proc: Any) -> None:
        self._proc = proc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._proc, name)

    def report(self) -> AgentReport | None:
        logging.getLogger("orch.agents").info("report read")
        return self._proc.report()  # type: ignore[no-any-return]


class ReportingAgent(InstantAgent):
    def start(self, request: AgentRequest) -> Any:
        logging.getLogger("orch.agents").info("starting")
        return _Reporting(super().start(request))


def test_the_engine_binds_the_task_stage_job_and_run_around_a_job(stream: io.StringIO) -> None:
    configure("INFO", json=True, stream=stream)
    r = rig({"default": ReportingAgent()})
    try:
        task = r.intake.file("app", "Add a greeting", "")
        claim = r.store.claim("test:1:x", 60.0, r.repos.limit)
        assert claim is not None
        r.engine.run_job(claim, "test:1:x")
        [run] = r.store.runs(task.id)
    finally:
        r.close()
    by_event = {str(line["event"]): line for line in lines(stream)}
    started, reported = by_event["starting"], by_event["report read"]
    context = {"task": task.key, "stage": "analysis", "job": claim.job_id}
    assert {k: started.get(k) for k in context} == context
    assert "run" not in started  # no run is recorded before its agent starts
    assert {k: reported.get(k) for k in context} == context
    assert (reported["run"], reported["agent"]) == (run.id, "default")


def test_a_traceback_is_kept_inside_its_json_line(stream: io.StringIO) -> None:
    configure("INFO", json=True, stream=stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("orch.engine").exception("job failed unexpectedly")
    [line] = lines(stream)
    assert line["event"] == "job failed unexpectedly"
    assert "RuntimeError: boom" in str(line["exception"])


def test_the_console_format_is_the_default_and_not_json(stream: io.StringIO) -> None:
    configure_from(Settings().log, stream)
    with bound_contextvars(task="SAM-2"):
        logging.getLogger("orch.engine").warning("slow")
    text = stream.getvalue()
    assert "slow" in text and "task=SAM-2" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_log_level_is_the_older_spelling_of_log_level_setting() -> None:
    assert Settings(log_level="DEBUG").log.level == "DEBUG"
    assert Settings(log={"level": "ERROR"}).log_level == "ERROR"
    with pytest.raises(ValueError, match="give the level once"):
        Settings(log={"level": "ERROR"}, log_level="DEBUG")


def test_an_unknown_log_format_is_refused_by_name(tmp_path: Path) -> None:
    config = tmp_path / "orch.yaml"
    config.write_text(f"data_dir: {tmp_path}\nlog:\n  format: xml\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"invalid setting log\.format"):
        load_settings(config)
