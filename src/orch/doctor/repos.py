"""Each configured repository: its remote answers, its default branch exists, and the
`.orch/pipeline.yaml` on that branch, if there is one, is a pipeline orch can run.

Nothing is written under orch's workspace: the pipeline file is fetched (one commit, shallow)
into a temporary repository that is removed afterwards.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

from orch.config import RepoSettingsModel
from orch.doctor.pipelines import builtin_problems, problems, summary
from orch.doctor.report import Check, Ran, count, fail, ok, run
from orch.domain import pipeline as pl
from orch.pipeline_file import PIPELINE_PATH
from orch.ports import Agent


class Git:
    """git as orch's forge runs it: no hooks, no fsmonitor, no `ext::` transport, no prompt."""

    def __init__(self, environ: Mapping[str, str], timeout_s: float, no_hooks: Path) -> None:
        self.timeout_s = timeout_s
        self.env = {
            **environ,
            "GIT_TERMINAL_PROMPT": "0",
            # ssh must not stop to ask for a passphrase or about an unknown host key
            "GIT_SSH_COMMAND": environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes"),
        }
        self.safe = (
            "-c",
            f"core.hooksPath={no_hooks}",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "protocol.ext.allow=never",
        )

    def __call__(self, *args: str, cwd: Path | None = None) -> Ran:
        try:
            return run(["git", *self.safe, *args], env=self.env, timeout_s=self.timeout_s, cwd=cwd)
        except OSError as exc:
            return Ran(127, "", f"git cannot be run: {exc.strerror or exc}")


def check_repo(
    repo: RepoSettingsModel,
    agent_names: list[str],
    agents: Mapping[str, Agent] | None,
    environ: Mapping[str, str],
    timeout_s: float,
) -> list[Check]:
    """`agents`: the agents that could be built, to hold the file's budgets to; `agent_names`:
    every configured agent, which the file's stages may name."""
    with tempfile.TemporaryDirectory(prefix="orch-doctor-") as tmp:
        no_hooks = Path(tmp) / "no-hooks"
        no_hooks.mkdir()
        git = Git(environ, timeout_s, no_hooks)
        return _check(repo, agent_names, agents, git, Path(tmp))


def _check(
    repo: RepoSettingsModel,
    agent_names: list[str],
    agents: Mapping[str, Agent] | None,
    git: Git,
    tmp: Path,
) -> list[Check]:
    name, url, branch = repo.name, repo.remote, repo.default_branch
    shown = url  # as every line is, with any token in it hidden
    listed = git("ls-remote", "--heads", url)
    if listed.code != 0:
        return [fail(f"repo {name} remote", f"{shown} cannot be reached: {listed.last_error()}")]
    heads = {}
    for line in listed.out.splitlines():
        sha, _, ref = line.partition("\t")
        if ref.startswith("refs/heads/"):
            heads[ref.removeprefix("refs/heads/")] = sha
    checks = [
        ok(
            f"repo {name} remote",
            f"{shown} answers ({count(len(heads), 'branch', 'branches')})",
        )
    ]
    if branch not in heads:
        others = ", ".join(sorted(heads)[:10]) or "none: the remote is empty"
        checks.append(
            fail(
                f"repo {name} branch",
                f"default branch {branch} is not on the remote (branches: {others})",
            )
        )
        return checks
    checks.append(ok(f"repo {name} branch", f"{branch} at {heads[branch][:12]}"))
    checks.append(_pipeline(name, url, branch, agent_names, agents, git, tmp))
    return checks


def _pipeline(
    name: str,
    url: str,
    branch: str,
    agent_names: list[str],
    agents: Mapping[str, Agent] | None,
    git: Git,
    tmp: Path,
) -> Check:
    what = f"repo {name} pipeline"
    scratch = tmp / "fetch.git"
    steps = (
        ("init", "--quiet", "--bare", str(scratch)),
        (
            "-C",
            str(scratch),
            "fetch",
            "--quiet",
            "--no-tags",
            "--depth=1",
            url,
            f"refs/heads/{branch}",
        ),
    )
    for args in steps:
        done = git(*args)
        if done.code != 0:
            return fail(
                what, f"cannot read {branch} to look for {PIPELINE_PATH}: {done.last_error()}"
            )
    spec = f"FETCH_HEAD:{PIPELINE_PATH}"
    if git("-C", str(scratch), "cat-file", "-e", spec).code != 0:
        missing = builtin_problems(agent_names)
        if missing:
            return fail(what, f"no {PIPELINE_PATH}, and {missing[0]}")
        return ok(what, f"built-in pipeline ({summary(pl.default_pipeline())})")
    shown = git("-C", str(scratch), "cat-file", "blob", spec)
    if shown.code != 0:
        return fail(what, f"cannot read {PIPELINE_PATH}: {shown.last_error()}")
    pipeline, found = problems(shown.out, f"{name}:{PIPELINE_PATH}", agent_names, agents)
    if pipeline is None:
        return fail(what, "; ".join(found))
    return ok(what, f"{PIPELINE_PATH} on {branch} ({summary(pipeline)})")
