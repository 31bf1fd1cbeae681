"""`orch doctor`: every part of a setup checked, one plain result each, nothing changed.

Each check is a function from the settings (and the environment orch runs in) to results;
the command line only prints them.
"""

from __future__ import annotations

from collections.abc import Mapping

from orch.config import Settings
from orch.doctor.agents import check_agent
from orch.doctor.host import check_directories, check_sandbox, check_user_namespaces
from orch.doctor.report import Check, count, ok
from orch.doctor.repos import check_repo
from orch.doctor.services import SERVICES
from orch.doctor.store import check_store
from orch.ports import Agent

__all__ = ["Check", "check_settings", "run_all"]

NETWORK_TIMEOUT_S = 20.0


def check_settings(settings: Settings) -> Check:
    source = settings.source_file
    where = str(source) if source else "no file: defaults and ORCH_* variables"
    return ok(
        "settings",
        f"{where} ({count(len(settings.repos), 'repository', 'repositories')},"
        f" {count(len(settings.agents), 'agent', 'agents')})",
    )


def run_all(
    settings: Settings, environ: Mapping[str, str], timeout_s: float = NETWORK_TIMEOUT_S
) -> list[Check]:
    """Every check, in the order a person reads them: orch itself, then what it talks to."""
    checks = [check_settings(settings), check_store(settings.store_url, timeout_s)]
    checks += check_sandbox(settings)
    checks.append(check_user_namespaces(settings))
    checks.append(check_directories(settings))
    for service in SERVICES:
        checks += service(settings, environ, timeout_s)
    agents: dict[str, Agent] = {}
    agent_checks = []
    for name in settings.agents:
        check, agent = check_agent(settings, name, environ)
        agent_checks.append(check)
        if agent is not None:
            agents[name] = agent
    names = list(settings.agents)
    for repo in settings.repos:
        checks += check_repo(repo, names, agents, environ, timeout_s)
    return checks + agent_checks
