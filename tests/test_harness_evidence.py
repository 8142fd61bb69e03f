"""The evidence of a leak names the user's code only: "types that grew" and the leak sites
leave out what the harness and memray's tracer allocate, and memory with no Python frame is
one line that says what it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import harness as harness_package
from harness.analysis import NO_PYTHON_FRAME, NO_PYTHON_FRAME_MEANS, LeakSite

CHECKOUT = str(Path(harness_package.__file__).resolve().parent.parent)

KEEPING_CYCLE = """
kept = []

def cycle(i):
    kept.append([i, i])
"""


def _soak(tmp_path: Path, *extra: str) -> tuple[str, dict[str, Any]]:
    """``python -m harness soak`` of a cycle that keeps one list a cycle: (output, verdict)."""
    (tmp_path / "keeping.py").write_text(KEEPING_CYCLE)
    verdict = tmp_path / "v.json"
    done = subprocess.run(
        [sys.executable, "-m", "harness", "soak", "--scenario", "keeping:cycle",
         "--cycles", "400", "--warmup", "40", "--quiet", "--json", str(verdict), *extra],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{CHECKOUT}"),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    return done.stdout, json.loads(verdict.read_text())


def test_types_that_grew_are_the_cycles_only(tmp_path: Path) -> None:
    """Counting the types made none of the harness's own (a Counter's ABC check cached the
    type of what it counted: weakrefs, their callbacks and sets, +15 to +40 each run)."""
    out, v = _soak(tmp_path)
    grown = {g["type"]: g["end"] - g["start"] for g in v["gc_growth"] if g["end"] > g["start"]}
    assert grown == {"builtins.list": 360}, grown
    assert "types that grew: builtins.list +360" in out


def test_a_site_with_no_python_frame_says_what_it_is(tmp_path: Path) -> None:
    out, v = _soak(tmp_path)
    sites = [LeakSite.from_dict(s) for s in v["leak_sites"]]
    assert sites[0].location.endswith("keeping.py:5"), sites
    assert f"{NO_PYTHON_FRAME} in ?" not in out
    for s in sites:
        assert s.location == NO_PYTHON_FRAME or s.location.endswith("keeping.py:5"), s
        if s.location == NO_PYTHON_FRAME:
            assert f"{NO_PYTHON_FRAME}: {NO_PYTHON_FRAME_MEANS}" in out


@pytest.mark.skipif(sys.platform != "linux", reason="memray's native traces: Linux")
def test_native_traces_leave_the_tracers_memory_out(tmp_path: Path) -> None:
    """With native stacks, the tracer's own memory (line tables and frames it makes for code
    it first sees, no Python frame in memray's stack) is recognised and left out: the only
    site is the line that keeps the lists, and the cycle's ``def`` line is none."""
    _out, v = _soak(tmp_path, "--native-traces")
    locations = [s["location"] for s in v["leak_sites"]]
    assert locations and all(loc.endswith("keeping.py:5") for loc in locations), locations


def test_where_shows_a_located_site_as_location_in_function() -> None:
    site = LeakSite("app.py:3", "handler", 10, 1)
    assert site.where == "app.py:3 in handler"
    assert LeakSite(NO_PYTHON_FRAME, "?", 10, 1).where.startswith(f"{NO_PYTHON_FRAME}: ")
