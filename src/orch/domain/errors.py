"""The error tree. Each error carries a one-line message meant for a person."""

from __future__ import annotations


class OrchError(Exception):
    """Base of every error orch reports to a person."""


class ConfigError(OrchError):
    """Settings or a pipeline file are invalid."""


class PipelineError(ConfigError):
    """A pipeline definition is invalid; the message names the file, line and field."""


class TemplateError(ConfigError):
    """A prompt template names a variable that does not exist, or does not parse."""


class NotFound(OrchError):
    """An unknown ticket, task or repository."""


class StoreUnavailable(OrchError):
    """The database cannot be reached or opened."""


class AlreadyRunning(OrchError):
    """Another orch process holds the lock on this store."""


class WorkspaceError(OrchError):
    """A workspace root that cannot be written, or a path that escapes it."""


class ForgeError(OrchError):
    """A git or forge operation failed."""


class Unavailable(OrchError):
    """A service orch talks to did not answer, or said it cannot now (a 5xx, a 429, a
    timeout): not the failure of the task that needed it, which waits for it."""


class ForgeUnavailable(ForgeError, Unavailable):
    """The forge did not answer, or said it cannot now."""


class MergeConflict(ForgeError):
    """The task branch does not merge cleanly into the default branch."""


class HeadMoved(ForgeError):
    """The branch head is not the one the merge was authorised for."""


class DefaultMoved(ForgeError):
    """The default branch moved after the merge candidate was built on it."""


class CandidateFailed(OrchError):
    """The merge candidate (the task's head merged onto the default branch) failed its tests."""


class Interrupted(Exception):
    """Not an error but a signal: the job must stop what it is doing. Never an OrchError, so
    no handler of failures (which cost an attempt) can catch one by mistake."""


class LeaseLost(Interrupted):
    """This worker's lease was fenced off: another owner holds the job now. Write nothing."""


class CancelRequested(Interrupted):
    """A person pressed STOP: the job stops what it is doing and cancels the task."""


class ShuttingDown(Interrupted):
    """orch is shutting down: the job kills its children and gives its lease back."""


class Conflict(OrchError):
    """A compare-and-set found the task in another state than expected. Write nothing."""


class Busy(OrchError):
    """A resource the store keeps one of (a repository's merge slot) is taken; try later."""


def in_flight(kind: str, repo: str) -> str:
    """Why a job waits for the one slot of `kind` (a repository's merge, a target's deploy): a
    job retried for it is woken when an effect of that kind is resolved there."""
    return f"another {kind} is in flight for {repo}"


class WaitsForBudget(OrchError):
    """A budget over time is spent: the stage waits until its period ends, uncounted unless
    a run of it was stopped by that budget (`counts`)."""

    def __init__(self, message: str, wait_s: float, counts: bool = False) -> None:
        super().__init__(message)
        self.wait_s = wait_s
        self.counts = counts


class AgentError(OrchError):
    """An agent could not be started."""
