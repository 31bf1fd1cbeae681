"""Gate predicates: pure verdicts over what the gate runner observed."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str


def artifact_verdict(path: str, text: str | None, headings: tuple[str, ...]) -> Verdict:
    if text is None:
        return Verdict(False, f"{path} is missing")
    if not text.strip():
        return Verdict(False, f"{path} is empty")
    present = {
        m.group(1).strip().lower() for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)
    }
    missing = [h for h in headings if h.lower() not in present]
    if missing:
        return Verdict(False, f"{path} lacks the heading(s): {', '.join(missing)}")
    return Verdict(True, f"{path} present")


_VERDICT = re.compile(r"^\W*verdict\W*:?\s*\**\s*([a-z-]+)", re.I | re.M)


def review_verdict(path: str, text: str | None) -> Verdict:
    if text is None:
        return Verdict(False, f"{path} is missing")
    found = _VERDICT.findall(text)
    if not found:
        return Verdict(False, f"{path} states no verdict")
    last = found[-1].lower()
    if last in ("approve", "approved"):
        return Verdict(True, "review approved")
    return Verdict(False, f"review verdict is {last}: {_reasons(text)}")


def _reasons(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    kept = [ln for ln in lines if not _VERDICT.match(ln)]
    return " ".join(kept)[:500] or "no reason given"


def command_verdict(command: str, exit_code: int | None, timed_out: bool, tail: str) -> Verdict:
    if timed_out:
        return Verdict(False, f"`{command}` timed out")
    if exit_code == 0:
        return Verdict(True, f"`{command}` passed")
    return Verdict(False, f"`{command}` exited {exit_code}: {tail[-800:]}")
