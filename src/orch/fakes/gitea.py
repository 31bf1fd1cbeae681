"""A fake Gitea (1.23): real git over smart HTTP (`git http-backend`) on bare repositories, and
the REST API orch uses (repositories, branches, pull requests and their merge, commit statuses,
comments), each request and response checked against Gitea's Swagger document.

Merges are done for real on the bare repository with git plumbing, with Gitea's answers: 405
while mergeability is being checked ("Please try again later") or for a PR merged already, 409
for a head that moved (`head_commit_id`), conflicts, or a fast-forward that is not possible."""

from __future__ import annotations

import base64
import hmac
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orch.fakes.server import FakeServer, Request, Response, json_response
from orch.fakes.swagger import Operation, SwaggerDocument

SPEC = Path(__file__).with_name("specs") / "gitea-swagger.v1.json"
API = "/api/v1"
# what Gitea's validation tags require beyond the document
_BINDING = {"CreatePullRequestOption": ("head", "base", "title")}
_GIT_PATH = re.compile(
    r"^/(?P<owner>[^/]+)/(?P<repo>[^/]+?)(?:\.git)?"
    r"/(?P<rest>info/refs|git-upload-pack|git-receive-pack|HEAD|objects/.+)$"
)
_ZERO = "0" * 40
_WHO = {"NAME": "gitea", "EMAIL": "gitea@example.org"}
GIT_ENV = {f"GIT_{role}_{k}": v for role in ("AUTHOR", "COMMITTER") for k, v in _WHO.items()}
GIT_ENV |= {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0"}


class GitFailed(Exception):
    """A git command of the fake's own failed."""


def _run(
    bare: Path, *args: str, env: Mapping[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", f"--git-dir={bare}", *args],
        env={**os.environ, **GIT_ENV, **(env or {})},
        input=input,
        capture_output=True,
        text=True,
        check=False,
    )


def git(bare: Path, *args: str, env: Mapping[str, str] | None = None, input: str = "") -> str:
    proc = _run(bare, *args, env=env, input=input)
    if proc.returncode != 0:
        raise GitFailed(f"git {args[0]}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def rev(bare: Path, ref: str) -> str | None:
    proc = _run(bare, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    return proc.stdout.strip() if proc.returncode == 0 else None


def init_bare(bare: Path, files: Mapping[str, str], default_branch: str = "main") -> str:
    """A bare repository whose default branch holds `files` in one commit."""
    bare.parent.mkdir(parents=True, exist_ok=True)
    git(bare, "init", "--quiet", "--bare", f"--initial-branch={default_branch}")
    git(bare, "config", "http.receivepack", "true")
    return commit_files(bare, default_branch, files, "initial")


def commit_files(
    bare: Path, branch: str, files: Mapping[str, str], message: str = "change", start: str = ""
) -> str:
    """A commit of `files` on top of `branch` (or of `start` for a new branch), as a push."""
    ref = f"refs/heads/{branch}"
    old = rev(bare, ref)
    parent = old or (rev(bare, start) if start else None)
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if parent:
            git(bare, "read-tree", parent, env=env)
        for path, text in files.items():
            blob = git(bare, "hash-object", "-w", "--stdin", input=text)
            git(bare, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
        tree = git(bare, "write-tree", env=env)
    commit = git(bare, "commit-tree", tree, *(["-p", parent] if parent else []), "-m", message)
    git(bare, "update-ref", ref, commit, old or _ZERO)
    return commit


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Pull:
    number: int
    head: str
    base: str
    title: str
    body: str
    created: str
    state: str = "open"
    merged: bool = False
    head_sha: str = ""  # frozen once it is closed
    base_sha: str = ""
    merge_sha: str = ""
    merged_at: str | None = None
    closed_at: str | None = None
    updated: str = ""


@dataclass(frozen=True)
class _Call:
    params: Mapping[str, str]  # the path's
    body: Any
    query: Mapping[str, list[str]]


@dataclass
class _Repo:
    id: int
    name: str
    default_branch: str
    bare: Path
    pulls: list[_Pull] = field(default_factory=list)
    protected: set[str] = field(default_factory=set)
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    comments: list[tuple[int, str]] = field(default_factory=list)
    checking: dict[int, int] = field(default_factory=dict)  # PR -> merges answered "try later"
    next_index: int = 1


class GiteaFake(FakeServer):
    """Gitea for one owner. `on_merge(repo, index)`, when set, runs as a merge starts (a test
    moves a branch under it there)."""

    def __init__(self, root: Path, token: str, owner: str = "orch") -> None:
        super().__init__()
        self.root = Path(root)
        self.token = token
        self.owner = owner
        self.spec = SwaggerDocument.load(SPEC, required=_BINDING)
        self.on_merge: Callable[[str, int], object] | None = None
        self._repos: dict[str, _Repo] = {}
        self._state = threading.RLock()
        self._ids = 0
        self._routes: dict[tuple[str, str], Callable[[_Repo, _Call], Response]] = {
            ("get", ""): lambda r, _: json_response(200, self._repo_json(r)),
            ("get", "/branches/{branch}"): self._get_branch,
            ("delete", "/branches/{branch}"): self._delete_branch,
            ("get", "/pulls"): self._list_pulls,
            ("post", "/pulls"): self._create_pull,
            ("get", "/pulls/{index}"): self._get_pull,
            ("patch", "/pulls/{index}"): self._edit_pull,
            ("get", "/pulls/{base}/{head}"): self._pull_by_branches,
            ("get", "/pulls/{index}/merge"): self._is_merged,
            ("post", "/pulls/{index}/merge"): self._merge,
            ("post", "/statuses/{sha}"): self._create_status,
            ("get", "/statuses/{sha}"): self._list_statuses,
            ("get", "/commits/{ref}/statuses"): self._list_statuses,
            ("get", "/commits/{ref}/status"): self._combined_status,
            ("post", "/issues/{index}/comments"): self._comment,
        }

    # -- what a test does as a person or as CI -----------------------------------------------

    def create_repo(self, name: str, files: Mapping[str, str], default_branch: str = "main") -> str:
        """A repository holding `files` on its default branch; its clone URL."""
        with self._state:
            bare = self.root / self.owner / f"{name}.git"
            init_bare(bare, files, default_branch)
            self._repos[name] = _Repo(self._next_id(), name, default_branch, bare)
        return self.clone_url(name)

    def clone_url(self, name: str) -> str:
        return f"{self.url}/{self.owner}/{name}.git"

    def bare(self, repo: str) -> Path:
        return self._repos[repo].bare

    def protect_branch(self, repo: str, branch: str) -> None:
        self._repos[repo].protected.add(branch)

    def checking(self, repo: str, index: int, times: int = 1) -> None:
        """The next `times` merges of the PR find its mergeability still being checked."""
        self._repos[repo].checking[index] = times

    def push(self, repo: str, branch: str, files: Mapping[str, str], message: str = "") -> str:
        r = self._repos[repo]
        with self._state:
            return commit_files(r.bare, branch, files, message or "pushed", r.default_branch)

    def push_to_default(self, repo: str, files: Mapping[str, str]) -> str:
        """Someone else's commit on the default branch."""
        return self.push(repo, self._repos[repo].default_branch, files, "someone else's change")

    def head(self, repo: str, branch: str) -> str | None:
        return rev(self._repos[repo].bare, f"refs/heads/{branch}")

    def merge_by_hand(self, repo: str, index: int) -> str:
        """A person presses the merge button (a merge commit)."""
        r = self._repos[repo]
        with self._state:
            pr = self._pull(r, index)
            assert pr is not None and pr.state == "open", f"no open PR #{index}"
            done = self._do_merge(r, pr, "merge", "")
            assert isinstance(done, str), "the merge by hand failed"
            return done

    def close_by_hand(self, repo: str, index: int) -> None:
        r = self._repos[repo]
        with self._state:
            pr = self._pull(r, index)
            assert pr is not None
            self._freeze(r, pr)
            pr.state, pr.closed_at = "closed", _now()

    def statuses(self, repo: str, sha: str) -> dict[str, str]:
        """What Gitea shows for the commit: the newest state of each context."""
        with self._state:
            return {s["context"]: s["status"] for s in self._latest(self._repos[repo], sha)}

    def pulls(self, repo: str) -> list[dict[str, Any]]:
        """Every PR of the repository as the API shows it, oldest first."""
        r = self._repos[repo]
        with self._state:
            return [self._pull_json(r, p) for p in r.pulls]

    def comments(self, repo: str, index: int) -> list[str]:
        return [body for n, body in self._repos[repo].comments if n == index]

    # -- serving -----------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        found = _GIT_PATH.match(request.path)
        if found and not request.path.startswith(API + "/"):
            return self._git(request, found["owner"], found["repo"], found["rest"])
        if {"token", "access_token"} & request.query.keys():
            self.violate(f"{request.method} {request.path}: a credential in the URL")
        if not self._authorized(request):
            self.violate(f"{request.method} {request.path}: not authenticated")
            return self._error(401, "token is required")
        checked = self.spec.check_request(
            request.method, request.path, request.query, request.headers, request.body
        )
        for problem in checked.problems:
            self.violate(problem)
        if checked.problems or checked.operation is None:
            return self._error(checked.status, "; ".join(checked.problems))
        op = checked.operation
        response = self._route(_Call(op.params, checked.body, request.query), op)
        for problem in self.spec.check_response(op, response.status, response.body):
            self.violate(f"the fake answered against the document: {problem}")
        return response

    def _route(self, c: _Call, op: Operation) -> Response:
        if (op.method, op.template) == ("get", "/user"):
            return json_response(200, {"id": 1, "login": self.owner, "full_name": "orch"})
        prefix = "/repos/{owner}/{repo}"
        handler = None
        if op.template.startswith(prefix):
            handler = self._routes.get((op.method, op.template[len(prefix) :]))
        if handler is None:
            self.violate(f"{op.method.upper()} {op.template} is not implemented by the fake")
            return self._error(500, "not implemented by the fake")
        with self._state:
            repo = self._repos.get(c.params["repo"])
            if c.params["owner"] != self.owner or repo is None:
                return self._error(404, "repository does not exist")
            return handler(repo, c)

    def _authorized(self, request: Request) -> bool:
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() in ("token", "bearer"):
            return hmac.compare_digest(value.strip(), self.token)
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except ValueError:
                return False
            return self.token in (user, password)
        return False

    def _error(self, status: int, message: str) -> Response:
        return json_response(status, {"message": message, "url": f"{self.url}/api/swagger"})

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    # -- git over HTTP -----------------------------------------------------------------------

    def _git(self, request: Request, owner: str, name: str, rest: str) -> Response:
        if not self._authorized(request):
            return Response(401, b"Unauthorized\n", {"WWW-Authenticate": 'Basic realm="Gitea"'})
        if owner != self.owner or name not in self._repos:
            return Response(404, b"Not found\n")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            **GIT_ENV,
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": f"/{self.owner}/{name}.git/{rest}",
            "REQUEST_METHOD": request.method,
            "QUERY_STRING": "&".join(f"{k}={v}" for k, vs in request.query.items() for v in vs),
            "CONTENT_TYPE": request.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(request.body)),
            "REMOTE_USER": self.owner,
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": request.headers.get("git-protocol", ""),
            "HTTP_CONTENT_ENCODING": request.headers.get("content-encoding", ""),
        }
        proc = subprocess.run(
            ["git", "http-backend"], input=request.body, env=env, capture_output=True, check=False
        )
        head, sep, body = proc.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, _, body = proc.stdout.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key and key.lower() != "content-length":
                headers[key] = value.strip()
        return Response(status, body, headers)

    # -- repositories and branches -----------------------------------------------------------

    def _user(self) -> dict[str, Any]:
        return {"id": 1, "login": self.owner, "email": f"{self.owner}@example.org"}

    def _repo_json(self, r: _Repo) -> dict[str, Any]:
        html = f"{self.url}/{self.owner}/{r.name}"
        names = {"id": r.id, "name": r.name, "full_name": f"{self.owner}/{r.name}"}
        urls = {"clone_url": self.clone_url(r.name), "html_url": html}
        rights = {"permissions": {"admin": True, "push": True, "pull": True}}
        flags = dict.fromkeys(("empty", "archived", "private"), False)
        merges = dict.fromkeys(("allow_merge_commits", "allow_fast_forward_only_merge"), True)
        return {**names, **urls, **rights, **flags, **merges, "owner": self._user()} | {
            "default_branch": r.default_branch
        }

    def _get_branch(self, r: _Repo, c: _Call) -> Response:
        name = c.params["branch"]
        sha = rev(r.bare, f"refs/heads/{name}")
        if sha is None:
            return self._error(404, f"branch {name} does not exist")
        message = git(r.bare, "log", "-1", "--format=%B", sha)
        commit = {"id": sha, "message": message, "timestamp": _now()}
        protected = name in r.protected
        rights = {"user_can_push": not protected, "user_can_merge": True}
        return json_response(200, {"name": name, "commit": commit, "protected": protected} | rights)

    def _delete_branch(self, r: _Repo, c: _Call) -> Response:
        name = c.params["branch"]
        if name == r.default_branch:
            return self._error(403, "can not delete default branch")
        if name in r.protected:
            return self._error(403, "branch protected")
        sha = rev(r.bare, f"refs/heads/{name}")
        if sha is None:
            return self._error(404, "branch does not exist")
        for pr in r.pulls:
            if pr.head == name:
                self._freeze(r, pr)
        git(r.bare, "update-ref", "-d", f"refs/heads/{name}", sha)
        return Response(204)

    # -- pull requests -----------------------------------------------------------------------

    def _pull(self, r: _Repo, index: int) -> _Pull | None:
        return next((p for p in r.pulls if p.number == index), None)

    def _index(self, r: _Repo, c: _Call) -> _Pull | None:
        return self._pull(r, int(c.params["index"]))

    def _freeze(self, r: _Repo, pr: _Pull) -> None:
        """Keep the heads a PR had, before it closes or loses its branch."""
        if pr.state == "open":
            pr.head_sha = rev(r.bare, f"refs/heads/{pr.head}") or pr.head_sha
            pr.base_sha = rev(r.bare, f"refs/heads/{pr.base}") or pr.base_sha

    def _pull_json(self, r: _Repo, pr: _Pull) -> dict[str, Any]:
        self._freeze(r, pr)
        mergeable = pr.state == "open" and not r.checking.get(pr.number)
        if mergeable and pr.head_sha and pr.base_sha:
            mergeable = self._merge_tree(r, pr.base_sha, pr.head_sha)[1]
        page = f"{self.url}/{self.owner}/{r.name}/pulls/{pr.number}"
        repo = self._repo_json(r)
        head = {"label": pr.head, "ref": pr.head, "sha": pr.head_sha, "repo_id": r.id}
        base = {"label": pr.base, "ref": pr.base, "sha": pr.base_sha, "repo_id": r.id}
        shown = {"id": pr.number, "number": pr.number, "url": page, "html_url": page}
        shown |= {"state": pr.state, "title": pr.title, "body": pr.body, "user": self._user()}
        shown |= {"mergeable": mergeable, "merged": pr.merged, "merged_at": pr.merged_at}
        shown |= {"merge_commit_sha": pr.merge_sha or None, "draft": False}
        shown |= {"head": head | {"repo": repo}, "base": base | {"repo": repo}}
        times = {"created_at": pr.created, "updated_at": pr.updated or pr.created}
        return shown | times | {"closed_at": pr.closed_at}

    def _list_pulls(self, r: _Repo, c: _Call) -> Response:
        state = c.query.get("state", ["open"])[0]
        chosen = [p for p in reversed(r.pulls) if state == "all" or p.state == state]
        shown = [self._pull_json(r, p) for p in chosen[:50]]
        return json_response(200, shown, {"X-Total-Count": str(len(chosen))})

    def _create_pull(self, r: _Repo, c: _Call) -> Response:
        head, base = c.body["head"], c.body["base"]
        for branch in (head, base):
            if rev(r.bare, f"refs/heads/{branch}") is None:
                return self._error(404, f"branch {branch} does not exist")
        if head == base:
            return self._error(422, "head and base are the same branch")
        for pr in r.pulls:
            if pr.state == "open" and (pr.head, pr.base) == (head, base):
                return self._error(
                    409,
                    f"pull request already exists for these targets [id: {pr.number},"
                    f" head_branch: {head}, base_branch: {base}]",
                )
        pr = _Pull(r.next_index, head, base, c.body["title"], c.body.get("body", ""), _now())
        r.next_index += 1
        r.pulls.append(pr)
        return json_response(201, self._pull_json(r, pr))

    def _get_pull(self, r: _Repo, c: _Call) -> Response:
        pr = self._index(r, c)
        if pr is None:
            return self._error(404, "pull request does not exist")
        return json_response(200, self._pull_json(r, pr))

    def _pull_by_branches(self, r: _Repo, c: _Call) -> Response:
        base, head = c.params["base"], c.params["head"]
        found = [p for p in r.pulls if (p.base, p.head) == (base, head)]
        if not found:
            return self._error(404, "pull request does not exist")
        return json_response(200, self._pull_json(r, found[-1]))

    def _edit_pull(self, r: _Repo, c: _Call) -> Response:
        pr = self._index(r, c)
        if pr is None:
            return self._error(404, "pull request does not exist")
        state = c.body.get("state")
        if state not in (None, "open", "closed"):
            return self._error(422, f"unknown state {state}")
        if state == "open" and pr.state == "closed":
            if pr.merged or any(p.state == "open" and p.head == pr.head for p in r.pulls):
                return self._error(409, "the pull request cannot be reopened")
            pr.state, pr.closed_at = "open", None
        elif state == "closed" and pr.state == "open":
            self._freeze(r, pr)
            pr.state, pr.closed_at = "closed", _now()
        pr.title = c.body.get("title", pr.title)
        pr.body = c.body.get("body", pr.body)
        pr.updated = _now()
        return json_response(201, self._pull_json(r, pr))

    def _is_merged(self, r: _Repo, c: _Call) -> Response:
        pr = self._index(r, c)
        return Response(204 if pr is not None and pr.merged else 404)

    # -- the merge ---------------------------------------------------------------------------

    def _merge(self, r: _Repo, c: _Call) -> Response:
        pr = self._index(r, c)
        if pr is None:
            return self._error(404, "pull request does not exist")
        if pr.merged:
            return self._error(405, "")  # Gitea: "PR already merged", with no message
        if pr.state != "open":
            return Response(404)  # a closed PR
        if r.checking.get(pr.number):
            r.checking[pr.number] -= 1
            return self._error(405, "Please try again later")
        if self.on_merge is not None:
            self.on_merge(r.name, pr.number)
        style = c.body["Do"]
        done = self._do_merge(r, pr, style, c.body.get("head_commit_id", ""))
        if isinstance(done, Response):
            return done
        if c.body.get("delete_branch_after_merge") and pr.head not in r.protected:
            git(r.bare, "update-ref", "-d", f"refs/heads/{pr.head}")
        return Response(200)

    def _do_merge(self, r: _Repo, pr: _Pull, style: str, expected: str) -> str | Response:
        base = rev(r.bare, f"refs/heads/{pr.base}")
        head = rev(r.bare, f"refs/heads/{pr.head}")
        if base is None or head is None:
            return self._error(404, "branch does not exist")
        if expected and expected != head:
            return self._error(409, "head out of date")
        title = f"Merge pull request '{pr.title}' (#{pr.number}) from {pr.head} into {pr.base}"
        up_to_date = self._ancestor(r, base, head)
        if style == "fast-forward-only" or (style == "rebase" and up_to_date):
            if not up_to_date:
                return self._error(409, "merge diverging fast-forward-only: not possible")
            merged = head
        else:  # a rebase that is not a fast-forward lands as one commit, as a squash would
            tree, clean = self._merge_tree(r, base, head)
            if not clean:
                conflict = {"Style": style, "StdOut": "", "StdErr": f"CONFLICT in {tree}"}
                return json_response(409, {**conflict, "Err": {}})
            parents = ["-p", base] if style in ("squash", "rebase") else ["-p", base, "-p", head]
            merged = git(r.bare, "commit-tree", tree, *parents, "-m", title)
        try:
            git(r.bare, "update-ref", f"refs/heads/{pr.base}", merged, base)
        except GitFailed:
            return self._error(409, "merge push out of date")
        self._mark_merged(r, pr, merged)
        return merged

    def _mark_merged(self, r: _Repo, pr: _Pull, merged: str) -> None:
        self._freeze(r, pr)
        pr.merged, pr.merge_sha, pr.state = True, merged, "closed"
        pr.merged_at = pr.closed_at = _now()

    def _merge_tree(self, r: _Repo, base: str, head: str) -> tuple[str, bool]:
        """The tree of merging `head` into `base` (on a conflict: the conflicted paths), and
        whether it merges cleanly."""
        proc = _run(r.bare, "merge-tree", "--write-tree", "--name-only", base, head)
        if proc.returncode == 0:
            return proc.stdout.split()[0], True
        paths = [ln for ln in proc.stdout.split("\n\n")[0].splitlines()[1:] if ln]
        return ", ".join(paths), False

    def _ancestor(self, r: _Repo, ancestor: str, descendant: str) -> bool:
        return _run(r.bare, "merge-base", "--is-ancestor", ancestor, descendant).returncode == 0

    # -- statuses and comments ---------------------------------------------------------------

    def _create_status(self, r: _Repo, c: _Call) -> Response:
        sha = c.params["sha"]
        if rev(r.bare, sha) is None:
            return self._error(404, f"commit {sha} does not exist")
        state = c.body.get("state", "")
        if state not in ("pending", "success", "error", "failure", "warning"):
            return self._error(400, f"invalid state {state!r}")
        now = _now()
        status = {"id": self._next_id(), "status": state, "creator": self._user()}
        status |= {k: c.body.get(k, "") for k in ("description", "target_url")}
        status |= {"context": c.body.get("context", "default"), "url": f"{self.url}/{sha}"}
        status |= {"created_at": now, "updated_at": now}
        r.statuses.setdefault(rev(r.bare, sha) or sha, []).append(status)
        return json_response(201, status)

    def _latest(self, r: _Repo, ref: str) -> list[dict[str, Any]]:
        newest: dict[str, dict[str, Any]] = {}
        for status in r.statuses.get(rev(r.bare, ref) or ref, []):
            newest[status["context"]] = status
        return list(newest.values())

    def _list_statuses(self, r: _Repo, c: _Call) -> Response:
        ref = c.params.get("sha") or c.params["ref"]
        return json_response(200, list(reversed(r.statuses.get(rev(r.bare, ref) or ref, []))))

    def _combined_status(self, r: _Repo, c: _Call) -> Response:
        ref = c.params["ref"]
        sha = rev(r.bare, ref)
        if sha is None:
            return self._error(404, f"{ref} does not exist")
        latest = self._latest(r, sha)
        states = {s["status"] for s in latest}
        worst = ("error", "failure", "pending", "warning", "success")
        state = next((s for s in worst if s in states), "")
        combined = {"sha": sha, "state": state, "statuses": latest}
        return json_response(200, combined | {"total_count": len(latest)})

    def _comment(self, r: _Repo, c: _Call) -> Response:
        index = int(c.params["index"])
        if self._pull(r, index) is None:
            return self._error(404, "issue does not exist")
        r.comments.append((index, c.body["body"]))
        now = _now()
        page = f"{self.url}/{self.owner}/{r.name}/pulls/{index}"
        comment = {"id": self._next_id(), "body": c.body["body"], "user": self._user()}
        comment |= {"html_url": f"{page}#issuecomment-{comment['id']}", "pull_request_url": page}
        return json_response(201, comment | {"created_at": now, "updated_at": now})
