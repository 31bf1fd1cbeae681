"""The settings in force, as an admin may see them: everything but the secrets.

A secret hides in four places: a value under a name that says so (`api_key`, `token`,
`password`, a webhook URL...), an agent's `env` (where its API key is given), the user part of a
URL (`postgresql://orch:pw@db/orch`, `https://TOKEN@github.com/o/r.git`), and a command or an
argument list (`--api-key sk-...`, `TOKEN=... deploy.sh`, `-H "Authorization: Bearer ..."`,
`model_providers.x.api_key=...`), wherever they are written. Each is replaced by REDACTED; names
and shapes stay, so the view still says what is configured.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "<redacted>"

# a name holding one of these words (or ending in `key`: `api_key`, not `key_prefix`)
_SECRET_WORDS = frozenset(
    {"token", "secret", "password", "passwd", "pwd", "credential", "credentials", "auth"}
    | {"authorization", "cookie", "webhook", "dsn", "apikey", "private"}
)
# scheme://user:password@ or scheme://user@, in any text
_USERINFO = re.compile(r"\b(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
# a bare user in these is a token (https://TOKEN@github.com); in ssh://git@host it is not
_TOKEN_AS_USER = ("http://", "https://")


def settings_view(settings: Mapping[str, Any], store_url: str) -> dict[str, Any]:
    """`settings` as dumped to JSON, with its secrets redacted; `store_url` is the store's own
    display of its URL (the password hidden), shown in place of the configured one."""
    shown: dict[str, Any] = _redact(settings)
    store = dict(shown.get("store") or {})
    store["url"] = store_url
    shown["store"] = store
    return shown


def _redact(value: Any, name: str = "") -> Any:
    if isinstance(value, Mapping):
        if name == "env":  # an agent's variables: their names show, never their values
            return {str(k): REDACTED for k in value}
        return {str(k): _redact_field(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return _redact_argv([_redact(v, name) for v in value])
    if isinstance(value, str):
        return redact_command(redact_urls(value))
    return value


# `--api-key VALUE` or `--api-key=VALUE`; a value does not start with a dash (that is a flag)
_FLAG = re.compile(
    r"(?P<name>--?[A-Za-z][A-Za-z0-9_.-]*)(?P<sep>=|\s+)(?P<value>(?!-)(?:\"[^\"]*\"|'[^']*'|\S+))"
)
# `API_KEY=VALUE`, `x.api_key="VALUE"`
_ASSIGNED = re.compile(
    r"(?P<name>\b[A-Za-z_][A-Za-z0-9_.]*)(?P<sep>=)(?P<value>\"[^\"]*\"|'[^']*'|\S+)"
)
# an HTTP credential written into a command: `Authorization: Bearer x`, `Bearer x`, `Basic x`
_CREDENTIAL = re.compile(
    r"(?i)(?P<lead>authorization:\s*(?:(?:bearer|basic|token)\s+)?|\bbearer\s+|\bbasic\s+)"
    r"(?P<value>[^\s'\"]+)"
)


def redact_command(text: str) -> str:
    """`text`, a command or a setting, with each value given under a secret's name hidden, and
    any HTTP credential in it."""

    def hide(match: re.Match[str]) -> str:
        if secret_name(match["name"].rsplit(".", 1)[-1].lstrip("-")):
            return f"{match['name']}{match['sep']}{REDACTED}"
        return match.group(0)

    text = _ASSIGNED.sub(hide, _FLAG.sub(hide, text))
    return _CREDENTIAL.sub(lambda m: f"{m['lead']}{REDACTED}", text)


def _redact_argv(items: list[Any]) -> list[Any]:
    """An argument list with the value after a secret's flag (`["--api-key", "sk-..."]`)
    hidden."""
    out = list(items)
    for i, item in enumerate(items[:-1]):
        flag = isinstance(item, str) and item.startswith("-") and "=" not in item
        if flag and secret_name(item.lstrip("-")) and isinstance(items[i + 1], str):
            out[i + 1] = REDACTED
    return out


def _redact_field(name: str, value: Any) -> Any:
    if secret_name(name) and isinstance(value, str | int | float) and value != "":
        return REDACTED
    return _redact(value, name)


def secret_name(name: str) -> bool:
    """Whether a setting of this name holds a secret."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)  # accessToken: access, token
    words = [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]
    return bool(words) and (words[-1] == "key" or any(w in _SECRET_WORDS for w in words))


def redact_urls(text: str) -> str:
    """`text` with the user part of each URL in it hidden: a password always, a bare user
    only where it is how a token is passed (http and https)."""

    def hide(match: re.Match[str]) -> str:
        scheme, userinfo = match["scheme"], match["userinfo"]
        user, colon, _password = userinfo.partition(":")
        if colon:
            return f"{scheme}{user}:{REDACTED}@"
        if scheme.lower() in _TOKEN_AS_USER:
            return f"{scheme}{REDACTED}@"
        return match.group(0)

    return _USERINFO.sub(hide, text)
