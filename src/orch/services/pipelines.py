"""Each repository's pipeline, kept parsed as its default branch's head holds it.

Filing a ticket takes the pipeline from here, so no git runs (and no repository lock is waited
on) between a request and its answer. A background loop asks the forge for each default
branch's head (one `ls-remote`, no fetch), and reads and parses `.orch/pipeline.yaml` again only
when the head moved; a forge that says the branch moved (its push webhook) has it looked at
once. A pipeline that does not parse is kept as its error, which filing raises as before. Only
the first filing for a repository nobody has looked at yet reads it in the request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orch.domain import pipeline as pl
from orch.domain.errors import ConfigError, OrchError, PipelineError

log = logging.getLogger("orch.pipelines")


@dataclass(frozen=True)
class _Read:
    head: str | None  # the default branch's head it was read at, as the forge said before
    pipeline: pl.Pipeline | None
    error: OrchError | None  # the pipeline's own fault: filing raises it until the head moves


class Pipelines:
    def __init__(
        self,
        repos: Callable[[], Sequence[str]],
        head_of: Callable[[str], str | None],
        load: Callable[[str], pl.Pipeline],
    ) -> None:
        """`head_of(repo)` is the default branch's head at the forge; `load(repo)` reads and
        parses the pipeline file there (raising ConfigError or PipelineError for a bad one)."""
        self._repos = repos
        self._head_of = head_of
        self._load = load
        self._lock = threading.Lock()
        self._read: dict[str, _Read] = {}
        self._moved = threading.Event()
        self._stale: set[str] = set()
        self._looking = False  # whether `run` keeps the pipelines current

    @property
    def current(self) -> bool:
        """Whether a loop keeps what is held current (it has looked at every repository)."""
        with self._lock:
            return self._looking

    def get(self, repo: str) -> pl.Pipeline:
        with self._lock:
            found, looking = self._read.get(repo), self._looking
        if found is None or not looking:
            # nobody has looked yet, or no loop looks (a command, not a server): look now, and
            # let the forge's errors reach the caller
            self.refresh(repo)
            with self._lock:
                found = self._read[repo]
        if found.error is not None:
            raise found.error
        assert found.pipeline is not None
        return found.pipeline

    def moved(self, repo: str) -> None:
        """The forge says `repo`'s default branch moved: look again now."""
        with self._lock:
            self._stale.add(repo)
        self._moved.set()

    def refresh(self, repo: str) -> bool:
        """Read the pipeline again if the default branch's head moved; whether it was read."""
        head = self._head_of(repo)
        with self._lock:
            found = self._read.get(repo)
            stale = repo in self._stale
            self._stale.discard(repo)
        if found is not None and head is not None and found.head == head and not stale:
            return False
        self._look(repo, head)
        return True

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Look at every repository now, then every `interval_s` or when told one moved."""
        try:
            self._loop(stop, interval_s)
        finally:
            with self._lock:
                self._looking = False

    def _loop(self, stop: threading.Event, interval_s: float) -> None:
        while not stop.is_set():
            for repo in self._repos():
                if stop.is_set():
                    return
                try:
                    self.refresh(repo)
                except OrchError as exc:  # the forge's: the copy held stays until it answers
                    log.warning("the pipeline of %s was not looked at: %s", repo, exc)
            with self._lock:
                self._looking = True  # from the first round on, what is held is current
            self._moved.wait(interval_s)
            self._moved.clear()

    def nudge(self) -> None:
        """Wake the loop (it then sees its stop)."""
        self._moved.set()

    def _look(self, repo: str, head: str | None) -> _Read:
        try:
            found = _Read(head, self._load(repo), None)
        except (ConfigError, PipelineError) as exc:
            found = _Read(head, None, exc)
        with self._lock:
            self._read[repo] = found
        return found
