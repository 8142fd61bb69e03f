"""schemathesis against the running host's OpenAPI: every operation, every phase (examples,
coverage, fuzzing, stateful), with the key and without; no 5xx, no response that breaks the
schema (status codes, headers, content types, bodies), no ignored auth. (The session is
connected, so the QR routes answer 404: their 200s are tested in test_host_api.py.)

``positive_data_acceptance`` is left out on purpose: some rules cannot be said in JSON Schema
(a cron expression that never fires, a date in the past, an unknown time zone), so schema-valid
requests can rightly get 422. Everything else runs. ``WACLIENT_SCHEMATHESIS_EXAMPLES`` sets the
examples per operation (default 50).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_host_api import KEY, make_settings

from harness.faults import RedisServer
from waclient.host import create_app
from waclient.host.testing import serve

pytest.importorskip("schemathesis", reason="schemathesis is not installed (dev extra)")


def test_schemathesis_finds_nothing(tmp_path: Path, fresh_redis: RedisServer) -> None:
    app = create_app(make_settings(tmp_path, fresh_redis.url))
    examples = os.environ.get("WACLIENT_SCHEMATHESIS_EXAMPLES", "50")
    with serve(app) as srv:
        spec = app.openapi()
        operations = sum(len(ops) for ops in spec["paths"].values())
        app.state.host.transport.latest_qr = (
            "2@qr-for-schemathesis,abc,def"  # exercise the QR routes
        )
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                f"{srv.url}/openapi.json",
                "--header",
                f"X-API-Key: {KEY}",
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                examples,
                "--request-timeout",
                "30",
                "--workers",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=1200,
            cwd=tmp_path,
        )
    # A fuzzed URL can run to tens of kilobytes: shorten such tokens, keep the findings.
    output = re.sub(r"\S{300,}", "<long token>", proc.stdout + proc.stderr)
    assert proc.returncode == 0, output[-8000:]
    assert f"{operations}/{operations}" in output and " passed" in output
