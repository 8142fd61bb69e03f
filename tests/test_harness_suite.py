"""``python -m harness suite`` (what ``nox -s soak`` runs): expectations, skips, baselines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import harness

HIDE_CRONITER = """
import sys

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "croniter":
            raise ModuleNotFoundError(name)
        return None

sys.meta_path.insert(0, Hide())
from harness.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def suite(cwd: Path, *args: str, hide_croniter: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(harness.__file__).resolve().parent.parent)
    command = ["-c", HIDE_CRONITER] if hide_croniter else ["-m", "harness"]
    return subprocess.run(
        [sys.executable, *command, "suite", "--quiet", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def test_clean_bounded_and_a_mutant_caught_pass_and_the_next_run_compares(tmp_path: Path) -> None:
    p = suite(tmp_path, "--only", "reconnect", "--only", "mutant-session-refs", "--report", "a")
    assert p.returncode == 0, p.stdout + p.stderr
    table = json.loads((tmp_path / "a" / "suite.json").read_text())
    assert table["reconnect"] == {"expected": "bounded", "found": "bounded", "result": "ok",
                                  "ok": True}  # fmt: skip
    assert table["mutant-session-refs"]["result"] == "mutant caught"
    assert (tmp_path / "a" / "reconnect" / "report.html").exists()

    again = suite(tmp_path, "--only", "reconnect", "--report", "b", "--baseline", "a")
    assert again.returncode == 0, again.stdout + again.stderr
    verdict = json.loads((tmp_path / "b" / "reconnect" / "verdict.json").read_text())
    assert verdict["baseline"] == str(tmp_path / "a" / "reconnect" / "verdict.json")
    assert all(ch["baseline_slope"] is not None for ch in verdict["channels"].values())


def test_a_scenario_that_cannot_run_here_fails_the_suite_unless_allowed(tmp_path: Path) -> None:
    p = suite(tmp_path, "--only", "scheduler-churn", hide_croniter=True)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "SKIPPED (needs croniter)" in p.stdout
    assert "1 scenario(s) not as expected" in p.stderr
    table = json.loads((tmp_path / "soak-report" / "suite.json").read_text())
    assert table["scheduler-churn"]["ok"] is False

    allowed = suite(tmp_path, "--only", "scheduler-churn", "--allow-skipped", hide_croniter=True)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "SKIPPED (needs croniter) (allowed)" in allowed.stdout


def test_an_unknown_scenario_is_exit_2(tmp_path: Path) -> None:
    p = suite(tmp_path, "--only", "nope")
    assert p.returncode == 2 and "unknown scenario(s) nope" in p.stderr


def test_the_talkback_stall_mutant_is_caught_as_a_stall_at_its_line(tmp_path: Path) -> None:
    """The design before flow control (a call answered behind the events, no disk overflow):
    the first burst deadlocks; the suite reports the cycle past its deadline at the bug's line."""
    p = suite(tmp_path, "--only", "mutant-talkback-stall")
    assert p.returncode == 0, p.stdout + p.stderr
    table = json.loads((tmp_path / "soak-report" / "suite.json").read_text())
    assert table["mutant-talkback-stall"] == {
        "expected": "stalls", "found": "stalled", "result": "mutant caught", "ok": True,
    }  # fmt: skip
