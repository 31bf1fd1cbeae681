"""Typed settings: defaults, then an optional YAML file, then ORCH_* environment variables.

Nested fields use a double underscore in the environment: ORCH_STORE__URL, ORCH_WORKER__SLOTS.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import platformdirs
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from orch.domain.agent_env import forbidden
from orch.domain.errors import ConfigError
from orch.domain.integrity import DEFAULT_PROTECTED


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreSettings(_Strict):
    url: str = ""  # empty: a SQLite file under the data directory
    busy_timeout_ms: int = Field(10_000, ge=0)
    synchronous: Literal["OFF", "NORMAL", "FULL"] = "NORMAL"


class WorkerSettings(_Strict):
    slots: int = Field(4, ge=1, le=256)
    lease_ttl_s: float = Field(30.0, gt=0)
    heartbeat_s: float = Field(10.0, gt=0)
    sweep_interval_s: float = Field(10.0, gt=0)
    poll_interval_s: float = Field(1.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    kill_grace_s: float = Field(10.0, ge=0)
    # what a run's log keeps of its output, the tail; the rest is dropped and the cut noted
    output_cap_bytes: int = Field(64 * 1024 * 1024, ge=4096)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    cancel_bound_s: float = Field(1860.0, gt=0)
    # worktrees per repository checked out ahead at the default branch's head, so a new task's
    # first agent starts without git (0: made when the task is claimed)
    spare_worktrees: int = Field(1, ge=0, le=16)
    # launchers started ahead of their commands, so an agent starts without waiting for an
    # interpreter (0: each is started when its command is)
    warm_launchers: int = Field(2, ge=0, le=16)
    # provider failures in a row (rate limits, network errors) that open an agent's circuit,
    # and how long it stays open before one probe may go
    breaker_threshold: int = Field(5, ge=1)
    breaker_cooldown_s: float = Field(30.0, gt=0)


class BudgetSettings(_Strict):
    usd: float | None = Field(None, ge=0)
    tokens: int | None = Field(None, ge=0)


class OverTimeSettings(_Strict):
    """What may be spent per UTC day and per UTC month; unset: no limit."""

    daily: BudgetSettings | None = None
    monthly: BudgetSettings | None = None


class DeployTargetSettings(_Strict):
    command: str
    check: str = ""


class RepoSettingsModel(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    remote: str
    default_branch: str = "main"
    test_command: str = "python -m pytest -q"
    key_prefix: str = Field("", pattern=r"^([A-Z][A-Z0-9]*)?$")
    max_active: int = Field(1, ge=1)
    deploy: dict[Literal["staging", "production"], DeployTargetSettings] = {}
    # how agents and gates are confined: Landlock, or none at all (said explicitly, never
    # assumed: without Landlock a run refuses to start)
    sandbox: Literal["landlock", "none"] = "landlock"
    # gitignore patterns orch's commits leave out, after the built-in list (`!x` takes one back)
    exclude: list[str] = []
    # a change that weakens the checks is flagged to the reviewer and in `task show`; `strict`
    # also makes its merge wait for a person
    protect: Literal["flag", "strict"] = "flag"
    protected_paths: list[str] = list(DEFAULT_PROTECTED)  # replaces the built-in list
    # what this repository's agent runs may spend per UTC day and month
    budgets: OverTimeSettings = OverTimeSettings()

    @field_validator("exclude")
    @classmethod
    def _one_line_each(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            if not p.strip() or "\n" in p or "\r" in p:
                raise ValueError(f"{p!r} is not one gitignore pattern")
        return patterns


class PricesSettings(_Strict):
    """US dollars per million tokens: the cost of an agent whose CLI reports none (Codex), and
    the running estimate a dollar budget is checked against between Claude Code's reports."""

    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)
    cache_read: float = Field(0.0, ge=0)
    cache_write: float = Field(0.0, ge=0)


def _not_credentials(names: list[str]) -> list[str]:
    refused = forbidden(names)
    if refused:
        raise ValueError(
            f"{', '.join(refused)} may not be given to an agent: orch's own settings and the"
            " credentials of its tracker, forge, notifier or store stay orch's; give the agent a"
            " variable of its own"
        )
    return names


class _AgentCommon(_Strict):
    env: dict[str, str] = {}  # values the agent gets, e.g. its base URL
    pass_env: list[str] = []  # more variables from orch's environment the agent may see
    prices: PricesSettings | None = None
    # a non-root user the agent runs as (orch must run as root to switch); its worktree is
    # handed to that user before each run
    run_as: str | None = None

    _pass_env = field_validator("pass_env")(_not_credentials)

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        _not_credentials(list(env))
        return env


class ScriptedAgentSettings(_Strict):
    kind: Literal["scripted"] = "scripted"
    playbook: Path | None = None


class CommandAgentSettings(_AgentCommon):
    kind: Literal["command"] = "command"
    command: list[str] | str


class ClaudeCodeAgentSettings(_AgentCommon):
    kind: Literal["claude_code"] = "claude_code"
    # on: the agent reaches its provider through orch's metering proxy with a token of its own,
    # and the key stays orch's; off: it uses the key and endpoint it is given, as it would alone
    proxy: bool = True
    command: str = "claude"  # a name on PATH or a path; ORCH_CLAUDE_BIN overrides the name
    model: str = "sonnet"
    permission_mode: Literal[
        "acceptEdits", "auto", "bypassPermissions", "manual", "dontAsk", "plan"
    ] = "acceptEdits"
    allowed_tools: list[str] = ["Bash", "Edit", "Read", "Write", "Glob", "Grep"]
    max_turns: int = Field(40, ge=1)
    extra_args: list[str] = []


class CodexProviderSettings(_Strict):
    """A provider speaking the OpenAI Responses API (`wire_api = "responses"`)."""

    name: str = Field("orch", pattern=r"^[A-Za-z0-9_-]+$")
    base_url: str
    env_key: str = ""  # the variable holding its API key; give its value in the agent's env
    # more keys of codex's provider table, e.g. request_max_retries, stream_idle_timeout_ms
    options: dict[str, int | str | bool] = {}

    @field_validator("env_key")
    @classmethod
    def _own_key(cls, name: str) -> str:
        _not_credentials([name] if name else [])
        return name


class CodexAgentSettings(_AgentCommon):
    kind: Literal["codex"] = "codex"
    proxy: bool = True  # as for claude_code
    command: str = "codex"  # a name on PATH or a path; ORCH_CODEX_BIN overrides the name
    model: str = "gpt-5-codex"
    sandbox: Literal["read-only", "workspace-write", "danger-full-access"] = "workspace-write"
    provider: CodexProviderSettings | None = None
    config: list[str] = []  # more `-c key=value` overrides
    extra_args: list[str] = []


AgentSettings = Annotated[
    ScriptedAgentSettings | CommandAgentSettings | ClaudeCodeAgentSettings | CodexAgentSettings,
    Field(discriminator="kind"),
]


def _env_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{name!r} is not the name of an environment variable")
    return name


EnvName = Annotated[str, AfterValidator(_env_name)]


class PlaneStates(_Strict):
    """The names of the Plane states that mean something to orch. A missing one fails closed:
    `orch doctor` says which, and orch does not act on that project until it exists."""

    start: str = "To Analyse"  # file the ticket and start its pipeline
    approve: str = "Approved"  # approve the plan
    reject: str = "Rejected"  # reject the plan; its reason is the latest comment
    confirm_deploy: str = "Confirm Deploy"  # release production
    stop: str = "STOP"  # cancel the task, at any stage


class PlaneProjectSettings(_Strict):
    id: str = Field(min_length=1)  # the project's id (a uuid)
    repo: str  # the repository its work items are worked in
    states: PlaneStates = PlaneStates()
    # the state orch moves a work item to as its task moves: keys are stage names
    # (analysis, development, ...) and the statuses waiting, needs_operator, done, cancelled;
    # a move not listed leaves the item where it is
    report: dict[str, str] = {}

    @model_validator(mode="after")
    def _reports_ask_nothing(self) -> PlaneProjectSettings:
        """orch never reports a task into a state a person asks something with: its own move
        there would read as their start, answer or STOP."""
        s = self.states
        asking = {s.start, s.approve, s.reject, s.confirm_deploy, s.stop}
        wrong = sorted({f"{k} -> {v}" for k, v in self.report.items() if v in asking})
        if wrong:
            raise ValueError(
                f"project {self.id}: report moves into a state that asks something of orch"
                f" ({', '.join(wrong)}); report into states of their own"
            )
        return self


class PlaneSettings(_Strict):
    kind: Literal["plane"] = "plane"
    url: str = Field(pattern=r"^https?://")  # without /api/v1
    workspace: str = Field(min_length=1)  # the workspace's slug
    token_env: EnvName = "PLANE_API_KEY"  # the variable in orch's environment holding the key
    webhook_secret_env: EnvName = "PLANE_WEBHOOK_SECRET"
    poll_interval_s: float = Field(60.0, gt=0)  # the reconciler's round
    timeout_s: float = Field(10.0, gt=0)
    projects: list[PlaneProjectSettings] = Field(min_length=1)


TrackerSettings = Annotated[PlaneSettings, Field(discriminator="kind")]


class GiteaSettings(_Strict):
    """Repositories whose `remote` is an https URL on this Gitea are worked through its API:
    pull requests, commit statuses and the merge."""

    kind: Literal["gitea"] = "gitea"
    url: str = Field(pattern=r"^https?://")  # without /api/v1
    token_env: EnvName = "GITEA_TOKEN"
    webhook_secret_env: EnvName = "GITEA_WEBHOOK_SECRET"
    # how the pull request is merged: fast-forward-only lands exactly the tested merge commit;
    # the others land Gitea's own merge of the tested head onto the same base
    merge_style: Literal["fast-forward-only", "merge", "rebase", "rebase-merge", "squash"] = (
        "fast-forward-only"
    )
    timeout_s: float = Field(10.0, gt=0)


ForgeSettings = Annotated[GiteaSettings, Field(discriminator="kind")]


class LogNotifierSettings(_Strict):
    kind: Literal["log"] = "log"


class WebhookNotifierSettings(_Strict):
    """A JSON POST of each piece of news, signed with HMAC-SHA256 of the body."""

    kind: Literal["webhook"] = "webhook"
    url: str = Field(pattern=r"^https?://")
    secret_env: EnvName = "NOTIFY_WEBHOOK_SECRET"
    timeout_s: float = Field(10.0, gt=0)


class TelegramSettings(_Strict):
    kind: Literal["telegram"] = "telegram"
    token_env: EnvName = "TELEGRAM_BOT_TOKEN"
    api_url: str = Field("https://api.telegram.org", pattern=r"^https?://")
    chats: list[int | str] = Field(min_length=1)  # where news goes: ids, or @channel names
    # who may act (buttons, /approve, /stop): Telegram user ids, in one of `chats`
    users: list[int] = []
    # how button presses and commands arrive: long polling needs no public URL
    updates: Literal["poll", "webhook", "off"] = "poll"
    webhook_secret_env: EnvName = "TELEGRAM_WEBHOOK_SECRET"
    # with `updates: webhook`: orch's public URL for it, registered with Telegram as it starts
    webhook_url: str = Field("", pattern=r"^(https://.*)?$")
    dashboard_url: str = ""  # links in messages point here when set
    timeout_s: float = Field(10.0, gt=0)


NotifierSettings = Annotated[
    LogNotifierSettings | WebhookNotifierSettings | TelegramSettings,
    Field(discriminator="kind"),
]


class LogSettings(_Strict):
    level: str = "INFO"
    # console: key=value lines for a person; json: one JSON object a line, with the task, stage,
    # job and agent run a line was logged for
    format: Literal["console", "json"] = "console"


class ApiSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8077, ge=0, le=65535)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ORCH_", env_nested_delimiter="__", extra="forbid", env_ignore_empty=True
    )

    data_dir: Path = Path(platformdirs.user_data_dir("orch"))
    workspace_root: Path | None = None  # default: <data_dir>/workspaces
    logs_dir: Path | None = None  # default: <data_dir>/logs
    store: StoreSettings = StoreSettings()
    worker: WorkerSettings = WorkerSettings()
    api: ApiSettings = ApiSettings()
    repos: list[RepoSettingsModel] = []
    agents: dict[str, AgentSettings] = {"default": ScriptedAgentSettings()}
    tracker: TrackerSettings | None = None  # a hosted tracker; the built-in board is always there
    forge: ForgeSettings | None = None  # a forge's API; without one, plain git remotes
    notifiers: list[NotifierSettings] = [LogNotifierSettings()]
    agent_env_allow: list[str] = []  # more variables an agent may see, beyond the base allowlist
    # what all agent runs together may spend per UTC day and month
    budgets: OverTimeSettings = OverTimeSettings()
    # how often `orch serve` looks for a new `.orch/pipeline.yaml` on each default branch (one
    # ls-remote; the file is read again only when the branch moved)
    pipeline_refresh_s: float = Field(30.0, gt=0)

    _agent_env_allow = field_validator("agent_env_allow")(_not_credentials)
    log: LogSettings = LogSettings()
    log_level: str = "INFO"  # the older spelling of log.level; either may be given, not both

    isolated: ClassVar[bool] = False
    # the settings file they were read from: no agent may read it
    _source_file: Path | None = PrivateAttr(default=None)

    @field_validator("repos")
    @classmethod
    def _unique_repos(cls, repos: list[RepoSettingsModel]) -> list[RepoSettingsModel]:
        names = [r.name for r in repos]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"repository named twice: {', '.join(dupes)}")
        return repos

    @property
    def credential_names(self) -> list[str]:
        """The variables holding the credentials of the services orch talks to, as named here."""
        names: list[str] = []
        if self.tracker is not None:
            names += [self.tracker.token_env, self.tracker.webhook_secret_env]
        if self.forge is not None:
            names += [self.forge.token_env, self.forge.webhook_secret_env]
        for n in self.notifiers:
            if isinstance(n, TelegramSettings):
                names += [n.token_env, n.webhook_secret_env]
            elif isinstance(n, WebhookNotifierSettings):
                names.append(n.secret_env)
        return names

    @model_validator(mode="after")
    def _credentials_stay_orchs(self) -> Settings:
        """No agent may be given a variable that holds one of orch's credentials."""
        own = set(self.credential_names)
        given = set(self.agent_env_allow)
        for agent in self.agents.values():
            if isinstance(agent, _AgentCommon):
                given |= set(agent.pass_env) | set(agent.env)
        leaked = sorted(own & given)
        if leaked:
            raise ValueError(
                f"{', '.join(leaked)} hold(s) the credentials of orch's tracker, forge or"
                " notifiers and may not be given to an agent"
            )
        return self

    @model_validator(mode="after")
    def _one_log_level(self) -> Settings:
        """`log_level` and `log.level` name one setting: whichever was given is both."""
        old, new = "log_level" in self.model_fields_set, "level" in self.log.model_fields_set
        if old and new and self.log_level.upper() != self.log.level.upper():
            raise ValueError(
                f"log_level ({self.log_level}) and log.level ({self.log.level}) disagree:"
                " give the level once, as log.level"
            )
        if old and not new:
            self.log = self.log.model_copy(update={"level": self.log_level})
        else:
            self.log_level = self.log.level
        return self

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.data_dir / 'orch.db'}"

    @property
    def workspace(self) -> Path:
        return self.workspace_root or self.data_dir / "workspaces"

    @property
    def logs(self) -> Path:
        return self.logs_dir or self.data_dir / "logs"

    @property
    def source_file(self) -> Path | None:
        return self._source_file

    @property
    def homes(self) -> Path:
        """Each task's agent home (HOME, TMPDIR, the CLIs' config) lives under it."""
        return self.data_dir / "homes"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if cls.isolated:
            return (init_settings,)
        # the environment wins over the file, which is merged in by `load_settings`
        return (env_settings, init_settings)


class IsolatedSettings(Settings):
    """Settings from what the caller passes alone: no environment, no file. For `orch demo`,
    which must never touch a user's configured store or repositories."""

    isolated: ClassVar[bool] = True


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from a YAML file (or $ORCH_CONFIG), the environment and `overrides`."""
    path = config_file or (
        Path(os.environ["ORCH_CONFIG"]) if os.environ.get("ORCH_CONFIG") else None
    )
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data.update(loaded)
    data.update(overrides)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        source = f"{path}: " if path else ""
        raise ConfigError(f"{source}invalid setting {where}: {err['msg']}") from exc
    settings._source_file = path.resolve() if path is not None else None
    return settings
