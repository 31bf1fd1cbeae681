"""Each repository's pipeline is held parsed per default-branch head: once the background loop
has looked, filing a ticket runs no git; a moved head, or a forge saying it moved, has the file
read again; a pipeline that does not parse is refused until it is fixed."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

import pytest

from orch.domain import pipeline as pl
from orch.domain.errors import ForgeUnavailable, PipelineError
from orch.services.pipelines import Pipelines

WAIT_S = 30.0


@dataclass
class Remote:
    """A forge as the pipelines see it: a default branch's head and the file at it."""

    head: str = "c1"
    broken: bool = False
    down: bool = False
    heads_asked: int = 0
    reads: list[str] = field(default_factory=list)

    def head_of(self, repo: str) -> str | None:
        self.heads_asked += 1
        if self.down:
            raise ForgeUnavailable("the forge did not answer")
        return self.head

    def load(self, repo: str) -> pl.Pipeline:
        if self.down:
            raise ForgeUnavailable("the forge did not answer")
        self.reads.append(self.head)
        if self.broken:
            raise PipelineError(f"{repo}:.orch/pipeline.yaml: stages: not a list")
        return replace(pl.default_pipeline(), deadline_s=float(self.head[1:]))  # names the head


def pipelines(remote: Remote) -> Pipelines:
    return Pipelines(lambda: ["app"], remote.head_of, remote.load)


class Looping:
    """The background loop, run for a test and stopped after it."""

    def __init__(self, p: Pipelines) -> None:
        self.p, self.stop = p, threading.Event()
        self.thread = threading.Thread(target=p.run, args=(self.stop, 3600.0), daemon=True)

    def __enter__(self) -> Looping:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.p.nudge()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive()


def settle(p: Pipelines, remote: Remote, reads: int, heads: int) -> None:
    """Wait until the loop has asked for `heads` heads and read `reads` times, and holds what
    it read as current."""
    done = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        if len(remote.reads) >= reads and remote.heads_asked >= heads and p.current:
            done.set()
            break
        done.wait(0.01)
    assert done.is_set(), f"the loop did not look: {remote}"


def test_once_the_loop_has_looked_filing_runs_no_git() -> None:
    remote = Remote()
    p = pipelines(remote)
    with Looping(p):
        settle(p, remote, reads=1, heads=1)
        asked, read = remote.heads_asked, list(remote.reads)
        got = [p.get("app") for _ in range(5)]

    assert {g.deadline_s for g in got} == {1.0}
    assert (remote.heads_asked, remote.reads) == (asked, read)


def test_a_moved_head_is_read_again_and_an_unmoved_one_is_not() -> None:
    remote = Remote()
    p = pipelines(remote)

    assert p.refresh("app") is True
    assert p.refresh("app") is False
    remote.head = "c2"
    assert p.refresh("app") is True

    assert remote.reads == ["c1", "c2"]


def test_a_forge_saying_the_branch_moved_has_it_read_at_once() -> None:
    remote = Remote()
    p = pipelines(remote)
    with Looping(p):
        settle(p, remote, reads=1, heads=1)
        remote.head = "c2"
        p.moved("app")
        settle(p, remote, reads=2, heads=2)
        got = p.get("app")

    assert got.deadline_s == 2.0


def test_a_pipeline_that_does_not_parse_is_refused_until_the_head_moves() -> None:
    remote = Remote(broken=True)
    p = pipelines(remote)
    p.refresh("app")

    with pytest.raises(PipelineError, match="not a list"):
        p.get("app")
    remote.broken, remote.head = False, "c2"
    assert p.get("app").deadline_s == 2.0


def test_without_the_loop_every_filing_looks_at_the_head() -> None:
    remote = Remote()
    p = pipelines(remote)

    first = p.get("app")
    remote.head = "c2"
    second = p.get("app")
    third = p.get("app")

    assert (first.deadline_s, second.deadline_s, third.deadline_s) == (1.0, 2.0, 2.0)
    assert remote.reads == ["c1", "c2"]


def test_a_forge_that_is_down_leaves_the_copy_held() -> None:
    remote = Remote()
    p = pipelines(remote)
    p.refresh("app")
    remote.down = True

    with pytest.raises(ForgeUnavailable):
        p.refresh("app")
    with Looping(p):
        settle(p, remote, reads=1, heads=3)
        got = p.get("app")

    assert got.deadline_s == 1.0


def test_a_repository_nobody_looked_at_yet_is_read_by_its_first_filing() -> None:
    remote = Remote(down=True)
    p = pipelines(remote)
    with Looping(p):
        with pytest.raises(ForgeUnavailable):
            p.get("app")
        remote.down = False
        got = p.get("app")

    assert got.deadline_s == 1.0
