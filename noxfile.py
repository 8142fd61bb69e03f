"""Project sessions: `nox -s tests`, `nox -s lint`, `nox -s bench`, `nox -s soak`."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session, extras: str) -> None:
    session.install("--upgrade", "pip")
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, against a real Redis server started by the fixtures."""
    _install(session, "dev,harness,host")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, and mypy (strict on waclient/)."""
    _install(session, "dev,harness,host")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "waclient")
    session.run("mypy", "harness")


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
    Extra arguments go to `python -m harness suite` (e.g. `--only reconnect`).
    """
    _install(session, "harness")
    session.run("python", "-m", "harness", "suite", "--report", "soak-report", *session.posargs)


@nox.session(name="soak-long")
def soak_long(session: nox.Session) -> None:
    """The same scenarios with thousands of cycles each (not a default session)."""
    _install(session, "harness")
    session.run(
        "python", "-m", "harness", "suite", "--long", "--report", "soak-report-long",
        *session.posargs,
    )  # fmt: skip
