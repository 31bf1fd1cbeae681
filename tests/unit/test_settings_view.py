"""What an admin is shown of the settings: all of them, but never a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from orch.config import Settings
from orch.services.settings_view import (
    REDACTED,
    redact_command,
    redact_urls,
    secret_name,
    settings_view,
)


def test_a_password_or_token_in_any_url_is_hidden_and_the_rest_of_the_url_kept() -> None:
    assert redact_urls("postgresql://orch:s3cret@db:5432/orch") == (
        f"postgresql://orch:{REDACTED}@db:5432/orch"
    )
    assert redact_urls("git push https://ghp_abc123@github.com/o/r.git main") == (
        f"git push https://{REDACTED}@github.com/o/r.git main"
    )
    # a user alone is a name, not a secret, where a scheme does not pass tokens so
    assert redact_urls("ssh://git@example.org/o/r.git") == "ssh://git@example.org/o/r.git"
    assert redact_urls("/srv/git/r.git") == "/srv/git/r.git"


def test_a_setting_named_for_a_secret_is_one_and_others_are_not() -> None:
    for name in ("api_key", "token", "apiKey", "accessToken", "webhook_url", "password", "dsn"):
        assert secret_name(name), name
    for name in ("key_prefix", "max_tokens", "name", "remote", "budget_tokens", "command"):
        assert not secret_name(name), name


def test_the_settings_view_keeps_their_shape_and_drops_every_secret(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        store={"url": "postgresql://orch:s3cret@db/orch"},
        repos=[
            {
                "name": "app",
                "remote": "https://x-access-token:ghp_abc@github.com/o/app.git",
                "key_prefix": "APP",
                "deploy": {
                    "production": {
                        "command": "curl -u ops:hunter2 https://ops:hunter2@deploy.example/"
                    }
                },
            }
        ],
        agents={
            "codex": {
                "kind": "codex",
                "env": {"PROVIDER_KEY": "sk-live-1"},
                "provider": {
                    "base_url": "https://models.example/v1",
                    "env_key": "PROVIDER_KEY",
                    "options": {"api_key": "sk-live-2", "request_max_retries": 3},
                },
            }
        },
    )
    shown = settings_view(settings.model_dump(mode="json"), "postgresql://orch:***@db/orch")
    text = repr(shown)
    for secret in ("s3cret", "ghp_abc", "sk-live-1", "sk-live-2", "ops:hunter2@"):
        assert secret not in text, secret
    assert shown["store"]["url"] == "postgresql://orch:***@db/orch"
    repo = shown["repos"][0]
    assert repo["remote"] == f"https://x-access-token:{REDACTED}@github.com/o/app.git"
    assert (repo["name"], repo["key_prefix"]) == ("app", "APP")
    codex = shown["agents"]["codex"]
    assert codex["env"] == {"PROVIDER_KEY": REDACTED}
    assert codex["provider"]["options"] == {"api_key": REDACTED, "request_max_retries": 3}
    assert codex["provider"]["base_url"] == "https://models.example/v1"
    assert shown["worker"] == settings.model_dump(mode="json")["worker"]


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("deploy.sh --api-key sk-123 --env prod", "deploy.sh --api-key <redacted> --env prod"),
        ("tool --verbose --token=abc", "tool --verbose --token=<redacted>"),
        (
            'curl -H "Authorization: Bearer abc123" https://x',
            'curl -H "Authorization: Bearer <redacted>" https://x',
        ),
        ("TOKEN=abc ./deploy.sh", "TOKEN=<redacted> ./deploy.sh"),
        ('model_providers.x.api_key="sk-9"', "model_providers.x.api_key=<redacted>"),
        ("make test KEY_PREFIX=APP --maxfail=1", "make test KEY_PREFIX=APP --maxfail=1"),
    ],
)
def test_a_secret_written_into_a_command_is_hidden_and_the_rest_kept(
    command: str, shown: str
) -> None:
    assert redact_command(command) == shown


def test_the_value_after_a_secret_flag_in_an_argument_list_is_hidden() -> None:
    settings = {
        "agents": {
            "c": {"command": "claude", "extra_args": ["--api-key", "sk-1", "--model", "sonnet"]},
            "x": {"config": ["model_providers.p.api_key=sk-2", "model=o4"]},
        },
        "store": {"url": "sqlite:///x.db"},
    }

    shown = settings_view(settings, "sqlite:///x.db")

    assert shown["agents"]["c"]["extra_args"] == ["--api-key", REDACTED, "--model", "sonnet"]
    assert shown["agents"]["x"]["config"] == [f"model_providers.p.api_key={REDACTED}", "model=o4"]
