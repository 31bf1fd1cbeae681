"""The Gitea forge: git as the local forge runs it (a bare mirror, a worktree per task), over
HTTPS to Gitea, and the merge through Gitea's pull request, so people see a task's branch as a
pull request with orch's gates as commit statuses.

What lands is still exactly the tested merge candidate: `land` pushes the candidate onto the task
branch (a fast-forward: its second parent is the branch's head), then asks Gitea to merge the
pull request with the candidate as `head_commit_id`; with the default `fast-forward-only` style
the default branch moves to the candidate itself. orch never pushes to the default branch.

The token reaches git only through the environment of orch's own git commands (an
`http.<url>.extraHeader`), and httpx through a header: never a URL, the mirror's config, a
worktree, a log or an error message."""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx

from orch import crashpoints
from orch.adapters.forges import gitea_hooks
from orch.adapters.forges.local_git import LocalGitForge, git_failure
from orch.domain.errors import (
    ConfigError,
    DefaultMoved,
    ForgeError,
    ForgeUnavailable,
    HeadMoved,
    MergeConflict,
    NotFound,
)
from orch.ports import Candidate, PullRequest, PullState, Reaction, StatusState

TRIES = 4  # a REST call, first try included
MERGE_TRIES = 5  # merges answered "try again later" (mergeability still being checked)
BACKOFF_S = 0.5  # the first wait before a try again; doubled each time, with jitter
MAX_WAIT_S = 30.0  # the longest wait a Retry-After may ask for that is honoured
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)  # nothing reached Gitea
# traces that could print the request headers git sends ("0" turns each off)
_QUIET = ("GIT_TRACE", "GIT_TRACE_CURL", "GIT_TRACE_PACKET")
# ... and one that any value turns on: it must be unset
_VERBOSE = "GIT_CURL_VERBOSE"


class GiteaForge(LocalGitForge):
    def __init__(
        self,
        root: Path,
        base_url: str,
        token: str,
        remotes: Mapping[str, tuple[str, str]],
        excludes: Mapping[str, Sequence[str]] | None = None,
        *,
        merge_style: str = "fast-forward-only",
        timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`remotes` maps a repository name to (its https clone URL on this Gitea, its default
        branch); the owner and name Gitea knows it by come from the URL's path."""
        if not token:
            raise ConfigError("the Gitea token is empty")
        self.base_url = base_url.rstrip("/")
        self.merge_style = merge_style
        self._secret = token
        self._sleep = sleep
        self._jitter = random.Random()
        self._paths = {name: self._repo_path(name, url) for name, (url, _) in remotes.items()}
        self._me: str | None = None
        # the candidate a branch is landed from, by the candidate's sha (`land` is given none)
        self._branches: dict[tuple[str, str], str] = {}
        git_env = {
            **dict.fromkeys(_QUIET, "0"),
            "GIT_TRACE_REDACT": "1",
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"http.{self.base_url}/.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: token {token}",
        }
        super().__init__(root, remotes, excludes, git_env=git_env)
        self._env.pop(_VERBOSE, None)
        # a merge Gitea took on is carried out while it handles the request: by twice orch's
        # wait for an answer, with room to spare
        self.settle_after_s = 2 * timeout_s + 10.0
        self._http = httpx.Client(
            base_url=f"{self.base_url}/api/v1",
            headers={"Authorization": f"token {token}", "Accept": "application/json"},
            timeout=timeout_s,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"GiteaForge({self.base_url!r}, repos={sorted(self._paths)})"

    def close(self) -> None:
        self._http.close()

    def _repo_path(self, name: str, url: str) -> str:
        """`/repos/{owner}/{repo}` of a clone URL on this Gitea."""
        if not url.startswith(self.base_url + "/"):
            raise ConfigError(f"repository {name}: {url} is not on the Gitea at {self.base_url}")
        rest = urlsplit(url).path[len(urlsplit(self.base_url).path) :].strip("/")
        owner, _, repo = rest.removesuffix(".git").partition("/")
        if not owner or not repo or "/" in repo:
            raise ConfigError(f"repository {name}: {url} names no owner/repository")
        return f"/repos/{quote(owner, safe='')}/{quote(repo, safe='')}"

    def reaction(self, event: str, payload: Mapping[str, Any]) -> Reaction | None:
        names = {
            unquote(path.removeprefix("/repos/")).lower(): name
            for name, path in self._paths.items()
        }
        return gitea_hooks.reaction(event, payload, names, self._login())

    def _login(self) -> str:
        """The user orch's token is: what it does itself comes back as its deliveries."""
        if self._me is None:
            self._me = str((self._json("GET", "/user", 200) or {}).get("login") or "")
        return self._me

    def _api(self, repo: str) -> str:
        try:
            return self._paths[repo]
        except KeyError:
            raise NotFound(f"unknown repository {repo!r}") from None

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***")

    def _git(
        self, *args: str, cwd: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        try:
            return super()._git(*args, cwd=cwd, check=check)
        except ForgeError as exc:
            raise type(exc)(self._redact(str(exc))) from None

    # -- REST --------------------------------------------------------------------------------

    def _wait(self, attempt: int, response: httpx.Response | None = None) -> float:
        said = response.headers.get("Retry-After", "") if response is not None else ""
        if said.strip().isdigit():  # seconds; a date is waited for as any other retry
            return min(MAX_WAIT_S, float(said))
        return BACKOFF_S * 2**attempt * (0.5 + self._jitter.random() / 2)

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """One REST call that is safe to repeat (a read, a status, a create Gitea refuses to
        repeat with a 409), tried again a few times after a 429 or a 5xx (waiting as long as
        Retry-After says), a timeout or a dropped connection. The merge is not made here."""
        for attempt in range(TRIES):
            last = attempt == TRIES - 1
            try:
                response = self._http.request(method, path, json=json, params=params)
            except httpx.TransportError as exc:
                if last:
                    raise ForgeUnavailable(self._failed(method, path, exc)) from None
                self._sleep(self._wait(attempt))
                continue
            if (response.status_code == 429 or response.status_code >= 500) and not last:
                self._sleep(self._wait(attempt, response))
                continue
            return response
        raise AssertionError("unreachable")

    def _failed(self, method: str, path: str, cause: Exception | httpx.Response) -> str:
        if isinstance(cause, httpx.Response):
            why = f"{cause.status_code} {_message(cause)}".strip()
        else:
            why = f"{type(cause).__name__}: {cause}"
        return self._redact(f"Gitea {method} {path} failed: {why}")

    def _refused(self, method: str, path: str, response: httpx.Response) -> ForgeError:
        """The error of an answer orch did not want: one that says Gitea cannot now (a 5xx, a
        429) is ForgeUnavailable, the task's work waits for it."""
        error = ForgeUnavailable if response.status_code in (429, *range(500, 600)) else ForgeError
        return error(self._failed(method, path, response))

    def _json(self, method: str, path: str, *ok: int, **kw: Any) -> Any:
        response = self._call(method, path, **kw)
        if response.status_code not in ok:
            raise self._refused(method, path, response)
        return response.json() if response.content else None

    def _default_head(self, repo: str) -> str:
        _, default = self._remote(repo)
        branch = self._json("GET", f"{self._api(repo)}/branches/{_seg(default)}", 200)
        return str(branch["commit"]["id"])

    # -- pull requests -----------------------------------------------------------------------

    def _pull_of(self, repo: str, branch: str) -> dict[str, Any] | None:
        """The newest pull request of `branch` into the default branch, as Gitea shows it."""
        _, default = self._remote(repo)
        path = f"{self._api(repo)}/pulls/{_seg(default)}/{_seg(branch)}"
        response = self._call("GET", path)
        if response.status_code == 200:
            return dict(response.json())
        if response.status_code != 404:
            raise self._refused("GET", path, response)
        # a Gitea that finds only open ones by branch: the closed are listed, newest first
        for pull in self._closed_pulls(repo):
            if (pull["head"]["ref"], pull["base"]["ref"]) == (branch, default):
                return dict(pull)
        return None

    def _closed_pulls(self, repo: str) -> list[dict[str, Any]]:
        query = {"state": "closed", "sort": "recentupdate", "limit": 50}
        return list(self._json("GET", f"{self._api(repo)}/pulls", 200, params=query) or [])

    def open_pull(self, repo: str, branch: str, title: str, body: str) -> PullRequest:
        found = self._pull_of(repo, branch)
        if found is not None and found["state"] == "open":
            return _as_pull(found)
        return self._create_pull(repo, branch, title, body)

    def _create_pull(self, repo: str, branch: str, title: str, body: str) -> PullRequest:
        _, default = self._remote(repo)
        path = f"{self._api(repo)}/pulls"
        asked = {"head": branch, "base": default, "title": title, "body": body}
        response = self._call("POST", path, json=asked)
        if response.status_code == 201:
            return _as_pull(response.json())
        if response.status_code == 409:  # opened meanwhile (by us, on a try the answer missed)
            found = self._pull_of(repo, branch)
            if found is not None and found["state"] == "open":
                return _as_pull(found)
        raise self._refused("POST", path, response)

    def find_pull(self, repo: str, branch: str) -> PullRequest | None:
        found = self._pull_of(repo, branch)
        return _as_pull(found) if found is not None else None

    def describe_pull(self, repo: str, number: int, title: str, body: str) -> None:
        path = f"{self._api(repo)}/pulls/{number}"
        self._json("PATCH", path, 201, json={"title": title, "body": body})

    def set_status(
        self,
        repo: str,
        sha: str,
        context: str,
        state: StatusState,
        description: str = "",
        target_url: str = "",
    ) -> None:
        status = {"state": str(state), "context": context, "description": description}
        if target_url:
            status["target_url"] = target_url
        self._json("POST", f"{self._api(repo)}/statuses/{sha}", 201, json=status)

    # -- merging -----------------------------------------------------------------------------

    def merge_candidate(
        self, repo: str, branch: str, expected_head: str, message: str
    ) -> Candidate:
        landed = self.find_merge(repo, expected_head)
        if landed:
            return Candidate(landed, landed, expected_head, landed=True)
        head = self.branch_head(repo, branch)
        if head not in (None, expected_head) and self._unlanded_candidate(
            repo, head, expected_head
        ):
            # an earlier land put its candidate on the branch, and the default branch moved
            # before Gitea merged it: the new candidate merges that one, a fast-forward again
            expected_head = head
        candidate = super().merge_candidate(repo, branch, expected_head, message)
        self._branches[(repo, candidate.sha)] = branch
        return candidate

    def _unlanded_candidate(self, repo: str, sha: str, head: str) -> bool:
        """Whether `sha` is a merge of exactly `head` onto a commit of the default branch, with
        nothing else in it: what `land` pushes to a task branch."""
        _, default = self._remote(repo)
        with self._locks[repo]:
            mirror = self.mirror(repo)
        parents = self._git("rev-list", "--parents", "-n1", sha, cwd=mirror, check=False)
        line = parents.stdout.split()
        if len(line) != 3 or line[2] != head:
            return False
        if not self.is_ancestor(repo, line[1], f"refs/remotes/origin/{default}"):
            return False
        tree = self._git("merge-tree", "--write-tree", line[1], head, cwd=mirror, check=False)
        own = self._git("rev-parse", f"{sha}^{{tree}}", cwd=mirror).stdout.strip()
        return tree.returncode == 0 and tree.stdout.split()[0] == own

    def land(self, repo: str, candidate: Candidate) -> str:
        """Put the candidate on its task branch, then have Gitea merge the branch's pull
        request with the candidate as the head it must have: only while the default branch is
        still the candidate's base (DefaultMoved otherwise)."""
        if candidate.landed:
            return candidate.sha
        if candidate.conflicts:
            raise MergeConflict(f"{candidate.sha[:12]} holds conflicts; it never lands")
        branch = self._branch_of(repo, candidate)
        self._expect_default(repo, candidate)
        closed = self._pull_of(repo, branch)
        if (
            closed is not None
            and closed["state"] == "closed"
            and not closed["merged"]
            and closed["head"]["sha"] in (candidate.head, candidate.sha)
        ):
            raise ForgeError(
                f"pull request #{closed['number']} of {branch} was closed without merging:"
                " orch does not merge what a person closed"
            )
        self._push_candidate(repo, branch, candidate)
        pull = self._pull_of(repo, branch)
        if pull is not None and pull["merged"] and pull["head"]["sha"] == candidate.sha:
            return str(pull["merge_commit_sha"])  # merged by an earlier try
        if pull is not None and pull["state"] == "open":
            number = int(pull["number"])
        else:  # nobody opened one yet: titled as the candidate's message is
            said = self._git("log", "-1", "--format=%s", candidate.sha, cwd=self.mirror_dir(repo))
            title = said.stdout.strip() or f"Merge {branch}"
            number = self._create_pull(repo, branch, title, "").number
        self._expect_default(repo, candidate)
        merged = self._merge(repo, number, candidate)
        with self._locks[repo]:
            self._fetch(repo, self.mirror_dir(repo))
        self._spares_wanted.set()  # at the head before this merge: made again
        return merged

    def _branch_of(self, repo: str, candidate: Candidate) -> str:
        known = self._branches.get((repo, candidate.sha))
        if known:
            return known
        url, _ = self._remote(repo)
        listed = self._git("ls-remote", "--heads", url).stdout.splitlines()
        for sha, ref in (line.split("\t") for line in listed if "\t" in line):
            if sha in (candidate.head, candidate.sha) and ref.startswith("refs/heads/orch/"):
                return ref.removeprefix("refs/heads/")
        raise ForgeError(f"no task branch is at {candidate.head[:12]} to land it from")

    def _expect_default(self, repo: str, candidate: Candidate) -> None:
        now = self._default_head(repo)
        if now != candidate.base:
            _, default = self._remote(repo)
            raise DefaultMoved(f"{default} moved from {candidate.base[:12]} to {now[:12]}")

    def _push_candidate(self, repo: str, branch: str, candidate: Candidate) -> None:
        """Move the task branch from the candidate's head to the candidate: a fast-forward,
        and only from that head."""
        url, _ = self._remote(repo)
        with self._locks[repo]:
            now = self.branch_head(repo, branch)
            if now == candidate.sha:
                return
            if now != candidate.head:
                raise HeadMoved(f"{branch} is at {now}, not {candidate.head}")
            mirror = self.mirror_dir(repo)
            lease = f"--force-with-lease=refs/heads/{branch}:{candidate.head}"
            refspec = f"{candidate.sha}:refs/heads/{branch}"
            pushed = self._git("push", "--quiet", lease, url, refspec, cwd=mirror, check=False)
            if pushed.returncode != 0:
                now = self.branch_head(repo, branch)
                if now not in (candidate.head, candidate.sha):
                    raise HeadMoved(f"{branch} moved to {now} as its merge was pushed")
            if pushed.returncode != 0 and now != candidate.sha:
                # (at candidate.sha: pushed, and only the answer was lost; git's own retry of it
                # was then refused as stale)
                said = self._redact(pushed.stderr.strip()).splitlines()
                raise git_failure(
                    f"git push failed: {said[-1] if said else pushed.returncode}", pushed.stderr
                )
            self._git("update-ref", f"refs/remotes/origin/{branch}", candidate.sha, cwd=mirror)

    def _merge(self, repo: str, number: int, candidate: Candidate) -> str:
        """Gitea's merge of the pull request, asked at most once unless Gitea said it did
        not do it: an answer lost after sending is resolved by asking whether it merged."""
        path = f"{self._api(repo)}/pulls/{number}/merge"
        asked = {"Do": self.merge_style, "head_commit_id": candidate.sha}
        for attempt in range(MERGE_TRIES):
            try:
                response = self._http.post(path, json=asked)
            except httpx.TransportError as exc:
                if isinstance(exc, _NOT_SENT) and attempt < MERGE_TRIES - 1:
                    self._sleep(self._wait(attempt))
                    continue
                return self._merged_or_fail(repo, number, self._failed("POST", path, exc))
            status, said = response.status_code, _message(response)
            if status == 200:
                crashpoints.hit("forge.request.sent")  # merged on Gitea, not yet recorded
                return self._merge_sha(repo, number)
            if status == 429 and attempt < MERGE_TRIES - 1:
                self._sleep(self._wait(attempt, response))
                continue
            if status >= 500:
                return self._merged_or_fail(repo, number, self._failed("POST", path, response))
            if status == 405:
                if self._json("GET", f"{self._api(repo)}/pulls/{number}", 200)["merged"]:
                    return self._merge_sha(repo, number)  # merged already (by us, or a person)
                if "try again later" in said.lower() and attempt < MERGE_TRIES - 1:
                    self._sleep(self._wait(attempt))
                    continue
            if status == 409 and "head out of date" in said.lower():
                raise HeadMoved(f"pull request #{number} is no longer at {candidate.sha[:12]}")
            if status in (405, 409):
                self._expect_default(repo, candidate)  # a moved default explains the refusal
            raise self._refused("POST", path, response)
        raise ForgeError(f"Gitea could not merge pull request #{number}: tried {MERGE_TRIES} times")

    def _merged_or_fail(self, repo: str, number: int, why: str) -> str:
        """After a merge whose answer never came: what Gitea did, asked before anything is
        sent again."""
        response = self._call("GET", f"{self._api(repo)}/pulls/{number}/merge")
        if response.status_code == 204:
            return self._merge_sha(repo, number)
        # not merged yet is no answer: Gitea may still carry out the request it took
        raise ForgeUnavailable(f"{why}; whether pull request #{number} will merge is unknown")

    def _merge_sha(self, repo: str, number: int) -> str:
        pull = self._json("GET", f"{self._api(repo)}/pulls/{number}", 200)
        return str(pull.get("merge_commit_sha") or self._default_head(repo))

    def find_merge(self, repo: str, head_sha: str) -> str | None:
        """Where `head_sha` landed: the merge of a merged pull request whose head held it (a
        squash leaves the head itself off the default branch), else the commit that brought
        it onto the default branch."""
        found = super().find_merge(repo, head_sha)
        for pull in self._closed_pulls(repo):
            if pull.get("merged") and self._carries(repo, pull["head"]["sha"], head_sha):
                return str(pull.get("merge_commit_sha") or found or "") or None
        return found

    def _carries(self, repo: str, pull_head: str, head_sha: str) -> bool:
        """Whether a pull request whose head was `pull_head` brought `head_sha` with it."""
        if pull_head == head_sha:
            return True
        mirror = self.mirror_dir(repo)
        found = self._git(
            "merge-base", "--is-ancestor", head_sha, pull_head, cwd=mirror, check=False
        )
        return found.returncode == 0

    # -- branches ----------------------------------------------------------------------------

    def delete_branch(self, repo: str, branch: str) -> None:
        """Delete a task branch through Gitea (which refuses a protected one), then its
        worktree and refs here. Never the default branch: refused before anything is asked."""
        _, default = self._remote(repo)
        if branch in (default, f"refs/heads/{default}") or not branch.startswith("orch/"):
            raise ForgeError(f"refusing to delete {branch}: orch deletes only its task branches")
        path = f"{self._api(repo)}/branches/{_seg(branch)}"
        response = self._call("DELETE", path)
        if response.status_code == 403:
            raise ForgeError(f"Gitea refuses to delete {branch}: it is protected")
        if response.status_code not in (204, 404):  # 404: gone already
            raise self._refused("DELETE", path, response)
        super().delete_branch(repo, branch)


def _seg(name: str) -> str:
    """A branch name as one path segment."""
    return quote(name, safe="")


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("message") or "") if isinstance(body, dict) else ""


def _as_pull(pull: Mapping[str, Any]) -> PullRequest:
    if pull.get("merged"):
        state = PullState.MERGED
    elif pull.get("state") == "closed":
        state = PullState.CLOSED
    else:
        state = PullState.OPEN
    return PullRequest(
        number=int(pull["number"]),
        url=str(pull.get("html_url") or ""),
        head=str((pull.get("head") or {}).get("sha") or ""),
        state=state,
        merge_sha=str(pull.get("merge_commit_sha") or ""),
    )
