"""The demo's sample project: a tiny Python package in git, its bare remote beside it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FILES = {
    "README.md": "# sample\n\nA tiny package that orch's demo works on.\n",
    ".gitignore": "__pycache__/\n*.pyc\n",
    "sample/__init__.py": '"""A tiny package that orch\'s demo works on."""\n',
    "sample/text.py": (
        '"""Text helpers."""\n\n\n'
        "def word_count(text: str) -> int:\n"
        '    """How many whitespace-separated words `text` holds."""\n'
        "    return len(text.split())\n"
    ),
    "tests/__init__.py": "",
    "tests/test_text.py": (
        "import unittest\n\nfrom sample.text import word_count\n\n\n"
        "class WordCountTest(unittest.TestCase):\n"
        "    def test_counts_words_separated_by_any_whitespace(self):\n"
        '        self.assertEqual(word_count("a  b\\tc\\n"), 3)\n'
    ),
    "deploy.py": '''"""Deploys a release: copies the package into a target directory and logs it."""

import argparse
import os
import shutil
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--into", default="")
    p.add_argument("--log", required=True)
    p.add_argument("--check", action="store_true", help="exit 0 if this release is deployed")
    a = p.parse_args()
    release = os.environ["ORCH_RELEASE"]
    if a.check:
        try:
            with open(a.log, encoding="utf-8") as f:
                done = any(line.split()[1:3] == [a.target, release] for line in f if line.strip())
        except FileNotFoundError:
            done = False
        return 0 if done else 1
    dest = os.path.join(a.into, "sample")
    if os.path.exists(dest):
        shutil.rmtree(dest)
    shutil.copytree("sample", dest, ignore=shutil.ignore_patterns("__pycache__"))
    with open(os.path.join(a.into, "RELEASE"), "w", encoding="utf-8") as f:
        f.write(release + "\\n")
    with open(a.log, "a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {a.target} {release}\\n")
    print(f"deployed {release[:12]} to {a.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
''',
}

SLUGIFY = '''"""Slugs for titles."""

import re
import unicodedata


def slugify(text: str) -> str:
    """Lower-case ASCII words joined by hyphens: "Hello, World!" -> "hello-world"."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    return "-".join(words)
'''

SLUGIFY_TEST = """import unittest

from sample.slug import slugify


class SlugifyTest(unittest.TestCase):
    def test_joins_lowercase_words_with_hyphens(self):
        self.assertEqual(slugify("Hello, World!"), "hello-world")

    def test_drops_accents(self):
        self.assertEqual(slugify("Crème brûlée"), "creme-brulee")

    def test_empty_text_gives_empty_slug(self):
        self.assertEqual(slugify("  !! "), "")
"""

SPEC = """# {key}: a `slugify` helper

## Problem

Titles need URL slugs, and the package has no helper that makes them: callers each lower-case and
strip text their own way, and accented titles come out wrong.

## Acceptance criteria

- `sample.slug.slugify("Hello, World!")` returns `"hello-world"`.
- Accents are dropped: `slugify("Crème brûlée")` returns `"creme-brulee"`.
- Text with no letters or digits gives `""`.
- The tests in `tests/test_slug.py` cover each case and pass.
"""

ADR = """# ADR for {key}: slugs in `sample.slug`

## Context

The specification asks for `slugify(text)`. The package is small and has no dependencies.

## Decision

Add `sample/slug.py` with one function: NFKD-normalise, drop what is not ASCII, lower-case, keep
runs of letters and digits, join them with hyphens. Standard library only. Tests in
`tests/test_slug.py`, one per acceptance criterion.

## Consequences

One new module and its tests; nothing else changes.
"""

CHANGES = """# Changes for {key}

- `sample/slug.py`: `slugify(text)`.
- `tests/test_slug.py`: a test per acceptance criterion.
"""

REVIEW = """# Review of {key}

`slugify` matches the specification: lower-case ASCII words joined by hyphens, accents dropped,
punctuation removed. Each acceptance criterion has a test, and the tests pass.

Verdict: approve
"""

TEST_REPORT = """# Test report for {key}

## Results

- `slugify("Hello, World!") == "hello-world"`: pass (`test_joins_lowercase_words_with_hyphens`).
- Accents dropped: pass (`test_drops_accents`).
- Empty slug for text without letters or digits: pass (`test_empty_text_gives_empty_slug`).
- The whole suite passes.

## Verdict

pass
"""

TICKET_TITLE = "Add a `slugify` helper with tests"
TICKET_BODY = (
    "We need `sample.slug.slugify(text)` that turns a title into a URL slug: lower-case ASCII"
    " words joined by hyphens, accents dropped, punctuation removed."
)


def playbook() -> dict:
    """What the scripted agent writes for the demo ticket; other stages use its defaults."""
    return {
        "stages": {
            "development": {
                "files": {
                    "sample/slug.py": SLUGIFY,
                    "tests/test_slug.py": SLUGIFY_TEST,
                    "docs/work-items/{{key}}/changes.md": (
                        "# Changes for {{key}}\n\n- `sample/slug.py`: `slugify`\n"
                        "- `tests/test_slug.py`: its tests\n"
                    ),
                }
            }
        }
    }


def git(*args: str, cwd: Path) -> str:
    env_identity = [
        "-c",
        "user.name=orch demo",
        "-c",
        "user.email=demo@localhost",
        "-c",
        "init.defaultBranch=main",
    ]
    out = subprocess.run(
        ["git", *env_identity, *args], cwd=cwd, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def create(root: Path) -> tuple[Path, Path]:
    """Create `root/sample` (a working clone) and `root/sample.git` (its bare remote)."""
    remote = root / "sample.git"
    work = root / "sample"
    remote.mkdir(parents=True)
    git("init", "--quiet", "--bare", "-b", "main", str(remote), cwd=root)
    work.mkdir()
    git("init", "--quiet", "-b", "main", cwd=work)
    for rel, content in FILES.items():
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    git("add", "--all", cwd=work)
    git("commit", "--quiet", "-m", "Initial sample project", cwd=work)
    git("remote", "add", "origin", str(remote), cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    return work, remote


def test_command() -> str:
    return f"{_q(sys.executable)} -m unittest discover -s tests -t . -q"


def deploy_command(root: Path, target: str, check: bool = False) -> str:
    into = root / ("prod" if target == "production" else "staging")
    log = _q(str(root / "deploy.log"))
    cmd = f"{_q(sys.executable)} deploy.py --target {target} --into {_q(str(into))} --log {log}"
    return cmd + " --check" if check else cmd


def _q(s: str) -> str:
    import shlex

    return shlex.quote(s)
