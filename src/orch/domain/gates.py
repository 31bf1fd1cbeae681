"""Gate predicates: pure verdicts over what the gate runner observed."""

from __future__ import annotations

import re
from dataclasses import dataclass

# what a verdict gate accepts as a pass unless the gate names its own words
PASS_WORDS = ("approve", "approved", "pass", "passed")
# verdicts that are known to say no: their reasons go back as feedback
NO_WORDS = ("request-changes", "changes-requested", "reject", "rejected", "fail", "failed")


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


_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
_LINE = re.compile(r"^[\s>*_`-]*verdict[*_`\s]*:(.*)$", re.I)
_DECOR = "*_`'\".!;, \t"


@dataclass(frozen=True)
class _Statement:
    line: int  # 1-based
    text: str  # the line as written
    value: str  # what it says, lower case, emphasis and end punctuation stripped


def _statements(text: str) -> list[_Statement]:
    """Every place the file states a verdict: a `Verdict: X` line, or the first non-empty line
    under a `Verdict` heading."""
    out: list[_Statement] = []
    lines = text.splitlines()
    for i, raw in enumerate(lines):
        heading = _HEADING.match(raw)
        if heading is not None:
            if heading.group(1).strip(_DECOR).lower() == "verdict":
                body = next(
                    ((j, ln) for j, ln in enumerate(lines[i + 1 :], i + 1) if ln.strip()), None
                )
                if body is not None and not _HEADING.match(body[1]) and not _LINE.match(body[1]):
                    out.append(_Statement(body[0] + 1, body[1].strip(), _value(body[1])))
            continue
        m = _LINE.match(raw)
        if m is not None:
            out.append(_Statement(i + 1, raw.strip(), _value(m.group(1))))
    return out


def _value(said: str) -> str:
    return " ".join(said.strip().strip(_DECOR).lower().split())


def file_verdict(
    path: str,
    text: str | None,
    before: str | None,
    passes: tuple[str, ...] = PASS_WORDS,
    headings: tuple[str, ...] = (),
) -> Verdict:
    """The verdict a stage's agent wrote to `path` in this round (orch removes the file before
    the agent runs, so `text` is None unless the agent wrote it); `before` is the file as it
    stood when the round began. Fails closed: no file, no verdict, more than one, or one that is
    not exactly a pass word fails, and the reason quotes what was read."""
    if text is None and before is not None:
        return Verdict(
            False,
            f"no verdict written in this round: {path} was there when the round began, and the"
            " stage's agent did not write it again",
        )
    if text is None:
        return Verdict(False, f"{path} is missing")
    if headings:
        shape = artifact_verdict(path, text, headings)
        if not shape.passed:
            return shape
    found = _statements(text)
    if not found:
        why = (
            f"{path} states no verdict: it needs one line `Verdict: {passes[0]}` (or another"
            " verdict)"
        )
    elif len({s.value for s in found}) > 1:
        read = "; ".join(f"line {s.line}: {s.text!r}" for s in found)
        why = f"{path} states {len({s.value for s in found})} different verdicts ({read})"
    elif found[0].value in passes:
        return Verdict(True, f"{path}: verdict {found[0].value}")
    elif found[0].value in NO_WORDS:
        why = f"verdict is {found[0].value}"
    else:
        first = found[0]
        why = (
            f"{path} line {first.line} reads {first.text!r}: not a verdict orch knows; only"
            f" {' or '.join(passes)} passes"
        )
    # what the file says goes back with the failure: it is the next stage's feedback
    return Verdict(False, f"{why}: {_reasons(text, found)}")


def _reasons(text: str, statements: list[_Statement]) -> str:
    said = {s.line for s in statements}
    kept = [
        ln.strip()
        for i, ln in enumerate(text.splitlines(), 1)
        if ln.strip() and i not in said and not ln.lstrip().startswith("#")
    ]
    return " ".join(kept)[:1500] or "no reason given"


def command_verdict(command: str, exit_code: int | None, timed_out: bool, tail: str) -> Verdict:
    if timed_out:
        return Verdict(False, f"`{command}` timed out")
    if exit_code == 0:
        return Verdict(True, f"`{command}` passed")
    return Verdict(False, f"`{command}` exited {exit_code}: {tail[-800:]}")
