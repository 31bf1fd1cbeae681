"""`orch chaos --world plane-gitea` end to end: a small run in which tickets come from a fake
Plane and land through a fake Gitea, both injecting faults, with webhook deliveries duplicated,
reordered and replayed, while orch's processes are killed; every invariant must hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from .running import processes_inside, report_of, run_chaos

KILLS = 10


@pytest.mark.slow
def test_a_run_in_the_plane_and_gitea_world_breaks_no_invariant(tmp_path: Path) -> None:
    result = run_chaos(
        "--world",
        "plane-gitea",
        "--dir",
        str(tmp_path / "run"),
        "--kills",
        str(KILLS),
        "--tickets",
        "6",
        "--fault-rate",
        "0.2",
        "--webhook-share",
        "0.5",
        "--settle",
        "60",
        "--json",
        bound_s=300,
    )
    detail = f"stdout:\n{result.stdout[-8000:]}\nstderr:\n{result.stderr[-4000:]}"

    assert result.returncode == 0, detail
    assert result.stdout.splitlines()[-1] == "duplicates=0 lost=0 zombies=0", detail
    report = report_of(result.stdout)
    assert report["ok"] is True
    names = {i["name"] for i in report["invariants"]}
    assert {"I1", "I6", "F11 pulls", "F12 starts", "F12 answers", "fakes"} <= names
    assert all(i["ok"] for i in report["invariants"]), detail
    assert report["figures"]["kills"] >= KILLS
    outside = report["outside"]
    assert outside["faults"]["forge"]["injected"] > 0
    assert outside["faults"]["tracker"]["injected"] > 0
    hooks = outside["webhooks"]
    assert hooks["duplicates"] > 0
    assert hooks["reversed"] + hooks["late"] + hooks["stale_starts"] > 0
    assert hooks["replayed_renamed"] > 0
    assert processes_inside(tmp_path) == []


def test_an_unknown_world_is_refused(tmp_path: Path) -> None:
    result = run_chaos("--world", "elsewhere", "--dir", str(tmp_path), bound_s=60)

    assert result.returncode == 2
    assert "--world" in result.stderr
