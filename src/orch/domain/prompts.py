"""Strict template rendering for prompts, artifact paths and gate commands.

An unknown variable is an error rather than an empty string: a prompt silently missing the
reviewer's feedback is worse than a task that stops and says why.
"""

from __future__ import annotations

import functools
from typing import Any

import jinja2

from orch.domain.errors import TemplateError

_ENV = jinja2.Environment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
)


@functools.lru_cache(maxsize=256)
def _compile(template: str) -> jinja2.Template:
    return _ENV.from_string(template)


def render(template: str, context: dict[str, Any]) -> str:
    try:
        return _compile(template).render(**context)
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"template uses an unknown variable: {exc.message}") from exc
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template does not parse: {exc.message} (line {exc.lineno})") from exc


def sample_context() -> dict[str, Any]:
    """A context with every variable a template may use, for validating templates at load."""
    return {
        "ticket": {"key": "KEY-1", "title": "title", "body": "body", "url": ""},
        "stage": "analysis",
        "role": "analyst",
        "attempt": 1,
        "round": 0,
        "feedback": "",
        "previous_error": "",
        "repo": {"name": "repo", "default_branch": "main", "test_command": "true"},
        "workdir": "/tmp/work",
        "artifacts": [{"stage": "analysis", "path": "docs/spec.md", "text": "text"}],
        "integrity": ["deletes test file tests/test_a.py"],
    }
