"""The fake Gitea: real git over HTTP behind the token, Gitea's merge answers, and every request
the Gitea document forbids remembered as a violation and refused as Gitea would."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orch.fakes.gitea import GiteaFake, git

TOKEN = "fake-gitea-token-42"
REPO = "sample"
API = f"/api/v1/repos/orch/{REPO}"


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[GiteaFake]:
    with GiteaFake(tmp_path / "gitea", TOKEN) as fake:
        fake.create_repo(REPO, {"README.md": "hello\n"})
        yield fake


@pytest.fixture
def api(fake: GiteaFake) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"token {TOKEN}"}
    with httpx.Client(base_url=fake.url, headers=headers) as client:
        yield client


def open_pull(fake: GiteaFake, api: httpx.Client, branch: str = "orch/T-1") -> int:
    fake.push(REPO, branch, {"NOTES.md": f"{branch}\n"})
    made = api.post(f"{API}/pulls", json={"head": branch, "base": "main", "title": branch})
    assert made.status_code == 201
    return int(made.json()["number"])


def git_env(fake: GiteaFake, token: str | None) -> dict[str, str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_GLOBAL": os.devnull}
    if token is not None:
        env |= {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"http.{fake.url}/.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: token {token}",
        }
    return env


# -- what the document forbids ----------------------------------------------------------------


def test_a_merge_without_its_style_is_refused_and_remembered(
    fake: GiteaFake, api: httpx.Client
) -> None:
    number = open_pull(fake, api)
    answer = api.post(f"{API}/pulls/{number}/merge", json={"head_commit_id": "abc"})
    assert answer.status_code == 422
    assert len(fake.violations) == 1 and '"Do" is a required property' in fake.violations[0]
    assert fake.pulls(REPO)[0]["merged"] is False


def test_a_merge_style_gitea_does_not_have_is_refused(fake: GiteaFake, api: httpx.Client) -> None:
    number = open_pull(fake, api)
    answer = api.post(f"{API}/pulls/{number}/merge", json={"Do": "octopus"})
    assert answer.status_code == 422
    assert len(fake.violations) == 1 and "octopus" in fake.violations[0]


def test_a_pull_request_without_a_title_is_refused(fake: GiteaFake, api: httpx.Client) -> None:
    fake.push(REPO, "orch/T-1", {"NOTES.md": "x\n"})
    answer = api.post(f"{API}/pulls", json={"head": "orch/T-1", "base": "main"})
    assert answer.status_code == 422
    assert fake.pulls(REPO) == []
    assert len(fake.violations) == 1 and "title" in fake.violations[0]


def test_fields_and_parameters_the_document_does_not_name_are_violations(
    fake: GiteaFake, api: httpx.Client
) -> None:
    number = open_pull(fake, api)
    assert api.post(f"{API}/pulls/{number}/merge", json={"do": "merge"}).status_code == 422
    assert api.get(f"{API}/pulls", params={"head": "orch/T-1"}).status_code == 422
    assert api.get(f"{API}/nothing/here").status_code == 404
    assert api.put(f"{API}/pulls/{number}/merge", json={"Do": "merge"}).status_code == 405
    said = "\n".join(fake.violations)
    assert "'do' was unexpected" in said and '"Do" is a required property' in said
    assert "unknown query parameter 'head'" in said
    assert "/nothing/here: no such path" in said and "PUT" in said
    assert len(fake.violations) == 5


def test_a_request_without_the_token_is_unauthorized(fake: GiteaFake) -> None:
    with httpx.Client(base_url=fake.url) as anonymous:
        assert anonymous.get(API).status_code == 401
    with httpx.Client(base_url=fake.url, headers={"Authorization": "token wrong"}) as wrong:
        assert wrong.get(API).status_code == 401
    assert len(fake.violations) == 2


def test_answers_match_the_document(fake: GiteaFake, api: httpx.Client) -> None:
    number = open_pull(fake, api)
    pull = api.get(f"{API}/pulls/{number}").json()
    assert (pull["state"], pull["merged"], pull["head"]["ref"]) == ("open", False, "orch/T-1")
    assert pull["head"]["sha"] == fake.head(REPO, "orch/T-1")
    assert api.get(f"{API}/pulls/main/orch%2FT-1").json()["number"] == number
    assert api.get(f"{API}/branches/orch%2FT-1").json()["commit"]["id"] == pull["head"]["sha"]
    assert api.get(API).json()["default_branch"] == "main"
    assert [p["number"] for p in api.get(f"{API}/pulls", params={"state": "all"}).json()] == [1]
    edited = api.patch(f"{API}/pulls/{number}", json={"title": "T-1", "state": "closed"})
    assert (edited.status_code, edited.json()["state"]) == (201, "closed")
    comment = api.post(f"{API}/issues/{number}/comments", json={"body": "done"})
    assert comment.status_code == 201 and fake.comments(REPO, number) == ["done"]
    assert fake.violations == []


# -- merges -----------------------------------------------------------------------------------


def test_a_pull_request_merges_once(fake: GiteaFake, api: httpx.Client) -> None:
    number = open_pull(fake, api)
    head = fake.head(REPO, "orch/T-1")
    assert api.get(f"{API}/pulls/{number}/merge").status_code == 404
    merged = api.post(f"{API}/pulls/{number}/merge", json={"Do": "fast-forward-only"})
    assert (merged.status_code, merged.content) == (200, b"")
    assert fake.head(REPO, "main") == head
    assert api.get(f"{API}/pulls/{number}/merge").status_code == 204
    pull = api.get(f"{API}/pulls/{number}").json()
    assert (pull["merged"], pull["state"], pull["merge_commit_sha"]) == (True, "closed", head)
    again = api.post(f"{API}/pulls/{number}/merge", json={"Do": "merge"})
    assert again.status_code == 405
    assert fake.head(REPO, "main") == head
    assert fake.violations == []


def test_a_fast_forward_is_refused_once_the_default_branch_moved(
    fake: GiteaFake, api: httpx.Client
) -> None:
    number = open_pull(fake, api)
    moved = fake.push_to_default(REPO, {"OTHER.md": "x\n"})
    refused = api.post(f"{API}/pulls/{number}/merge", json={"Do": "fast-forward-only"})
    assert refused.status_code == 409
    assert fake.head(REPO, "main") == moved
    # a merge commit is still possible, on top of what moved
    assert api.post(f"{API}/pulls/{number}/merge", json={"Do": "merge"}).status_code == 200
    parents = git(fake.bare(REPO), "rev-list", "--parents", "-n1", "main").split()[1:]
    assert parents == [moved, fake.pulls(REPO)[0]["head"]["sha"]]
    assert fake.violations == []


def test_the_head_guard_refuses_a_head_that_moved(fake: GiteaFake, api: httpx.Client) -> None:
    number = open_pull(fake, api)
    tested = fake.head(REPO, "orch/T-1")
    fake.push(REPO, "orch/T-1", {"LATE.md": "late\n"})
    asked = {"Do": "fast-forward-only", "head_commit_id": tested}
    refused = api.post(f"{API}/pulls/{number}/merge", json=asked)
    assert (refused.status_code, refused.json()["message"]) == (409, "head out of date")
    assert api.get(f"{API}/pulls/{number}/merge").status_code == 404


def test_a_merge_while_mergeability_is_checked_is_asked_again_later(
    fake: GiteaFake, api: httpx.Client
) -> None:
    number = open_pull(fake, api)
    fake.checking(REPO, number, times=2)
    answers = [api.post(f"{API}/pulls/{number}/merge", json={"Do": "merge"}) for _ in range(3)]
    assert [a.status_code for a in answers] == [405, 405, 200]
    assert answers[0].json()["message"] == "Please try again later"
    assert fake.violations == []


def test_conflicting_changes_do_not_merge(fake: GiteaFake, api: httpx.Client) -> None:
    fake.push(REPO, "orch/T-1", {"README.md": "ours\n"})
    made = api.post(f"{API}/pulls", json={"head": "orch/T-1", "base": "main", "title": "T-1"})
    fake.push_to_default(REPO, {"README.md": "theirs\n"})
    number = made.json()["number"]
    assert api.get(f"{API}/pulls/{number}").json()["mergeable"] is False
    assert api.post(f"{API}/pulls/{number}/merge", json={"Do": "merge"}).status_code == 409
    assert api.get(f"{API}/pulls/{number}/merge").status_code == 404


def test_a_closed_pull_request_is_not_merged(fake: GiteaFake, api: httpx.Client) -> None:
    number = open_pull(fake, api)
    fake.close_by_hand(REPO, number)
    assert api.post(f"{API}/pulls/{number}/merge", json={"Do": "merge"}).status_code == 404


def test_a_second_open_pull_request_for_the_same_branches_is_a_conflict(
    fake: GiteaFake, api: httpx.Client
) -> None:
    open_pull(fake, api)
    again = api.post(f"{API}/pulls", json={"head": "orch/T-1", "base": "main", "title": "x"})
    assert again.status_code == 409
    assert len(fake.pulls(REPO)) == 1


# -- branches and statuses --------------------------------------------------------------------


def test_default_and_protected_branches_are_not_deleted(fake: GiteaFake, api: httpx.Client) -> None:
    fake.push(REPO, "orch/T-1", {"a": "1\n"})
    fake.push(REPO, "orch/T-2", {"b": "2\n"})
    fake.protect_branch(REPO, "orch/T-2")
    assert api.delete(f"{API}/branches/main").status_code == 403
    assert api.delete(f"{API}/branches/orch%2FT-2").status_code == 403
    assert api.delete(f"{API}/branches/orch%2FT-1").status_code == 204
    assert api.delete(f"{API}/branches/orch%2FT-1").status_code == 404
    assert fake.head(REPO, "main") is not None and fake.head(REPO, "orch/T-2") is not None
    assert fake.head(REPO, "orch/T-1") is None
    assert fake.violations == []


def test_the_combined_status_is_the_worst_newest_state(fake: GiteaFake, api: httpx.Client) -> None:
    sha = fake.head(REPO, "main")
    for context, state in [("orch/a", "pending"), ("orch/b", "success"), ("orch/a", "success")]:
        made = api.post(f"{API}/statuses/{sha}", json={"context": context, "state": state})
        assert made.status_code == 201
    combined = api.get(f"{API}/commits/main/status").json()
    assert (combined["state"], combined["total_count"]) == ("success", 2)
    assert len(api.get(f"{API}/statuses/{sha}").json()) == 3
    api.post(f"{API}/statuses/{sha}", json={"context": "orch/b", "state": "failure"})
    assert api.get(f"{API}/commits/{sha}/status").json()["state"] == "failure"
    assert fake.statuses(REPO, str(sha)) == {"orch/a": "success", "orch/b": "failure"}
    assert fake.violations == []


# -- git over HTTP ----------------------------------------------------------------------------


def test_git_clones_and_pushes_with_the_token(fake: GiteaFake, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    url = fake.clone_url(REPO)
    env = git_env(fake, TOKEN)
    subprocess.run(["git", "clone", "-q", url, str(clone)], env=env, check=True)
    assert (clone / "README.md").read_text() == "hello\n"
    (clone / "NEW.md").write_text("new\n")
    who = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "-C", str(clone), "add", "NEW.md"], check=True)
    subprocess.run(["git", "-C", str(clone), *who, "commit", "-qm", "new"], check=True)
    subprocess.run(
        ["git", "-C", str(clone), "push", "-q", url, "HEAD:orch/T-9"], env=env, check=True
    )
    pushed = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert fake.head(REPO, "orch/T-9") == pushed
    assert fake.violations == []


def test_git_without_the_token_is_refused(fake: GiteaFake, tmp_path: Path) -> None:
    url = fake.clone_url(REPO)
    for token in (None, "wrong-token"):
        cloned = subprocess.run(
            ["git", "clone", "-q", url, str(tmp_path / f"clone-{token}")],
            env=git_env(fake, token),
            capture_output=True,
            text=True,
        )
        assert cloned.returncode != 0
        assert not (tmp_path / f"clone-{token}" / "README.md").exists()
    refs = f"/orch/{REPO}.git/info/refs?service=git-upload-pack"
    with httpx.Client(base_url=fake.url) as client:
        anonymous = client.get(refs)
        assert anonymous.status_code == 401 and "Basic" in anonymous.headers["WWW-Authenticate"]
        assert client.get(refs, auth=("orch", TOKEN)).status_code == 200


def test_a_push_larger_than_gits_post_buffer_arrives_whole(fake: GiteaFake, tmp_path: Path) -> None:
    # git sends a pack over http.postBuffer (1 MiB) in chunks, without a Content-Length
    clone = tmp_path / "clone"
    url = fake.clone_url(REPO)
    env = git_env(fake, TOKEN)
    subprocess.run(["git", "clone", "-q", url, str(clone)], env=env, check=True)
    (clone / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    who = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "-C", str(clone), "add", "big.bin"], check=True)
    subprocess.run(["git", "-C", str(clone), *who, "commit", "-qm", "big"], check=True)
    subprocess.run(
        ["git", "-C", str(clone), "push", "-q", url, "HEAD:orch/T-10"], env=env, check=True
    )
    pushed = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert fake.head(REPO, "orch/T-10") == pushed
    assert fake.violations == []
