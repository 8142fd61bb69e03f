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
    _install(session, "dev,harness")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, and mypy (strict on waclient/)."""
    _install(session, "dev,harness")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "waclient")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (pytest-benchmark); ratios against a baseline measured in the same run."""
    _install(session, "dev,harness")
    session.run(
        "pytest",
        "benchmarks",
        "-p",
        "no:cacheprovider",
        "--benchmark-only",
        "--benchmark-columns=min,median,mean,ops,rounds",
        *session.posargs,
    )
