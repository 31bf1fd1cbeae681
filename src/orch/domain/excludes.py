"""What orch never commits for an agent unless the repository says otherwise: the caches, virtual
environments and dependency trees that tools leave in a worktree."""

from __future__ import annotations

# gitignore syntax; a repository's `exclude` setting is read after these, so `!node_modules/`
# takes one back, and its own `.gitignore` wins over both
DEFAULT_EXCLUDES: tuple[str, ...] = (
    "__pycache__/",
    "*.py[cod]",
    ".venv/",
    "venv/",
    "*.egg-info/",
    ".pytest_cache/",
    ".mypy_cache/",
    ".ruff_cache/",
    ".hypothesis/",
    ".tox/",
    ".nox/",
    ".coverage",
    ".coverage.*",
    "htmlcov/",
    "node_modules/",
    ".npm/",
    ".DS_Store",
)
