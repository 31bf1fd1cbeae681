"""Gate integrity: what in a change could make the gates pass without the work being right.

A change that deletes tests, removes assertions, adds skip markers or touches the files that
define the checks (the pipeline, CI configuration) is not wrong by itself, but a person or the
reviewer should look at it on purpose. These are pure readings of the change's diff."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pathspec import GitIgnoreSpec

# where the checks themselves live; a repository's `protected_paths` replaces this list
DEFAULT_PROTECTED: tuple[str, ...] = (
    ".orch/**",
    ".ci/**",
    ".github/workflows/**",
    ".gitea/workflows/**",
    ".forgejo/workflows/**",
    ".gitlab-ci.yml",
    ".circleci/**",
    ".woodpecker/**",
    ".woodpecker.yml",
    ".drone.yml",
    "Jenkinsfile",
)

MARKERS = "leaves merge conflict markers in"  # the one finding that never merges

TEST_FILES: tuple[str, ...] = (
    "test_*.py",
    "*_test.py",
    "conftest.py",
    "tests/",
    "test/",
    "__tests__/",
    "*.test.*",
    "*.spec.*",
    "*_test.go",
    "*Test.java",
    "*Tests.cs",
)

# gitignore semantics: a pattern without a slash matches a name in any directory, `dir/` any
# directory of that name
_TESTS = GitIgnoreSpec.from_lines(TEST_FILES)
_ASSERTION = re.compile(
    r"\bassert\w*\b|\bexpect\s*\(|\.should\b|\bt\.(Error|Errorf|Fatal|Fatalf)\(|\bassert_\w+!"
)
# the opening and closing lines only: a line of seven `=` is also a Markdown heading's underline
_MARKER = re.compile(r"^(<{7}|>{7})( |$)")
_SKIP = re.compile(
    r"pytest\.mark\.(skip|skipif|xfail)\b|\bpytest\.skip\(|\bunittest\.skip\w*\b|@skip\w*\b"
    r"|\b(it|test|describe)\.(skip|todo)\(|\bx(it|describe|test)\(|\bt\.Skip(Now|f)?\("
    r"|\.skipTest\(|@Disabled\b|@Ignore\b|#\[ignore\]"
)


@dataclass
class FileChange:
    path: str
    status: str = "M"  # A added, M modified, D deleted
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def parse_diff(text: str) -> list[FileChange]:
    """The files of a `git diff` (any context size), with the lines each adds and removes."""
    changes: list[FileChange] = []
    current: FileChange | None = None
    for line in text.splitlines():
        if line.startswith("diff --git "):
            # the header's last path, until the ---/+++ lines say exactly (binary files have none)
            current = FileChange(line.rsplit(" b/", 1)[-1])
            changes.append(current)
        elif current is None:
            continue
        elif line.startswith("new file mode"):
            current.status = "A"
        elif line.startswith("deleted file mode"):
            current.status = "D"
        elif line.startswith("--- a/"):
            current.path = line.removeprefix("--- a/")
        elif line.startswith("+++ b/"):
            current.path = line.removeprefix("+++ b/")
        elif line.startswith(("+++ ", "--- ")):
            continue
        elif line.startswith("+"):
            current.added.append(line[1:])
        elif line.startswith("-"):
            current.removed.append(line[1:])
    return changes


def is_test_file(path: str) -> bool:
    return _TESTS.match_file(path)


def findings(changes: list[FileChange], protected: tuple[str, ...]) -> list[str]:
    """What a person or the reviewer should look at on purpose, one line each."""
    guarded = GitIgnoreSpec.from_lines(protected)
    out: list[str] = []
    for c in changes:
        if guarded.match_file(c.path):
            out.append(f"touches protected path {c.path}")
        if is_test_file(c.path):
            if c.status == "D":
                out.append(f"deletes test file {c.path}")
            else:
                gone = _count(_ASSERTION, c.removed) - _count(_ASSERTION, c.added)
                if gone > 0:
                    out.append(f"removes {gone} assertion(s) in {c.path}")
        if _count(_MARKER, c.added):
            out.append(f"{MARKERS} {c.path}")
        skips = _count(_SKIP, c.added) - _count(_SKIP, c.removed)
        if skips > 0:
            out.append(f"adds {skips} skip marker(s) in {c.path}")
    return out


def _count(pattern: re.Pattern[str], lines: list[str]) -> int:
    return sum(1 for ln in lines if pattern.search(ln))
