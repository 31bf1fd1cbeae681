"""The YAML examples of the README and docs/, found and told apart: pipeline files, orch's
settings, and other programs' files."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from orch.config import IsolatedSettings
from orch.pipeline_file import PipelineModel

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.DOTALL | re.MULTILINE)
# examples of other programs' files
FOREIGN = {"scrape_configs"}


def examples() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append((f"{doc.name}:{line}", m.group(1)))
    return found


def kind(text: str) -> str:
    data = yaml.safe_load(text)
    assert isinstance(data, dict), "an example is a mapping"
    keys = set(data)
    if keys & FOREIGN:
        return "foreign"
    if keys <= set(PipelineModel.model_fields):
        return "pipeline"
    if keys <= set(IsolatedSettings.model_fields):
        return "settings"
    return f"unknown keys {sorted(keys)}"


EXAMPLES = examples()


def readme_pipeline(budget: bool) -> str:
    """The README's pipeline example with budgets (or the other one)."""
    for where, text in EXAMPLES:
        readme = where.startswith("README") and kind(text) == "pipeline"
        if readme and ("budget:" in text) == budget:
            return text
    raise AssertionError("the README has no such pipeline example")
