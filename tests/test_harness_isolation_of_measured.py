"""The process a soak measures holds only what the user's code imports: no WhatsApp stack, no
neonize, no protobuf, no thread the harness did not have to start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import harness as harness_package

CHECKOUT = str(Path(harness_package.__file__).resolve().parent.parent)

HEAVY = ("neonize", "google.protobuf", "waclient.client", "waclient.transports", "waclient.events")

RECORDING_CYCLE = """
import json, os, sys, threading

_recorded = []

def cycle(i):
    if not _recorded:
        _recorded.append(i)
        with open(os.environ["RECORD"], "w") as f:
            json.dump({
                "modules": sorted(sys.modules),
                "python_threads": threading.active_count(),
                "os_threads": len(os.listdir("/proc/self/task")),
            }, f)
    x = [i] * 10
"""

OS_THREADS = "import os; print(len(os.listdir('/proc/self/task')))"


def _env(*front: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([*front, CHECKOUT]))


def _soak_recording(tmp_path: Path, *front: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    """``python -m harness soak`` of the recording cycle; what the cycle saw at its first call."""
    (tmp_path / "recording.py").write_text(RECORDING_CYCLE)
    record = tmp_path / "record.json"
    done = subprocess.run(
        [sys.executable, "-m", "harness", "soak", "--scenario", "recording:cycle",
         "--cycles", "300", "--warmup", "30", "--quiet", "--json", str(tmp_path / "v.json")],
        cwd=tmp_path, env={**_env(*front), "RECORD": str(record)}, capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    assert record.exists(), done.stdout + done.stderr
    return done, json.loads(record.read_text())


def _os_threads_of(code: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120,
        check=True,
    )  # fmt: skip
    return int(done.stdout.split()[-1])


def test_a_soaked_cycle_runs_without_the_whatsapp_stack_neonize_or_protobuf(
    tmp_path: Path,
) -> None:
    done, seen = _soak_recording(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    loaded = [m for m in seen["modules"] if m.startswith(HEAVY) or m == "google"]
    assert loaded == []
    waclient_modules = [m for m in seen["modules"] if m.startswith("waclient")]
    assert waclient_modules == ["waclient", "waclient.heap"]  # the heap probe's reader only


def test_a_soaked_cycle_starts_with_the_threads_of_the_interpreter_and_its_imports(
    tmp_path: Path,
) -> None:
    """The harness starts no thread of its own before the cycles (its exit timer comes after
    the result). Its imports do: numpy and scipy each start an OpenBLAS pool (one thread per
    further core), the same as in a plain interpreter that imports them."""
    _, seen = _soak_recording(tmp_path)
    assert seen["python_threads"] == 1
    plain = _os_threads_of(OS_THREADS)
    with_imports = _os_threads_of("import numpy, scipy.stats, memray; " + OS_THREADS)
    assert plain == 1
    assert seen["os_threads"] == with_imports


def test_a_soak_decides_where_google_protobuf_cannot_be_imported(tmp_path: Path) -> None:
    stub = tmp_path / "stub"
    (stub / "google" / "protobuf").mkdir(parents=True)
    (stub / "google" / "__init__.py").write_text("")
    (stub / "google" / "protobuf" / "__init__.py").write_text(
        "raise ImportError(\"cannot import name 'runtime_version' from 'google.protobuf'\")\n"
    )
    broken = subprocess.run(
        [sys.executable, "-c", "import google.protobuf"], env=_env(str(stub)),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert broken.returncode != 0 and "runtime_version" in broken.stderr  # the stub is in effect
    done, seen = _soak_recording(tmp_path, str(stub))
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert verdict["bounded"] is True
    assert "google.protobuf" not in seen["modules"]


def test_importing_waclient_the_heap_reader_and_the_harness_loads_no_whatsapp_stack() -> None:
    code = (
        "import sys, waclient, waclient.heap, waclient.memory, harness, harness.cli, "
        "harness.plugin, harness.scenarios, harness.child; "
        "from harness import soak; soak(lambda i: None, cycles=100, memray=False); "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(HEAVY) or m == 'google')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", f"import json; HEAVY = {HEAVY!r}; {code}"], env=_env(),
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_the_lazy_package_gives_the_same_public_names() -> None:
    code = (
        "import waclient; from waclient import *; import waclient.client as c, "
        "waclient.transports as t; "
        "assert waclient.Client is c.Client and waclient.IsolatedTransport is t.IsolatedTransport; "
        "assert waclient.SimulatedTransport is t.SimulatedTransport; "
        "assert set(waclient.__all__) <= set(dir(waclient)); "
        "import sys; assert all(n in globals() for n in waclient.__all__)"
    )
    subprocess.run([sys.executable, "-c", code], env=_env(), timeout=120, check=True)
