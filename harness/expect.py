"""Whether a verdict is what was expected: the one judge for the CLI, the suite and the plugin.

An expectation is ``False`` (memory must stay bounded), ``True`` (some channel must leak), or
channel names (each of them must leak). ``None`` takes the verdict's own ``expect_leak`` (the
scenario's known leaks). An undecided verdict (still settling) fails unless allowed; a
scenario that could not run (SKIPPED) fails unless allowed.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from harness.analysis import Verdict

__all__ = ["Expectation", "Judgement", "judge", "skipped"]

Expectation = bool | str | Collection[str] | None


@dataclass(frozen=True)
class Judgement:
    """``ok``: as expected. ``status``: a few words for a table. ``message``: the details."""

    ok: bool
    status: str
    message: str


def judge(
    verdict: Verdict,
    expect: Expectation = None,
    *,
    bug: tuple[str, int] | None = None,
    allow_undecided: bool = False,
) -> Judgement:
    """Judge ``verdict`` against ``expect``; ``bug`` is a mutant's line the sites must name."""
    wanted = _wanted(verdict, expect)
    summary = verdict.summary()
    if verdict.status == "undecided":
        if allow_undecided:
            return Judgement(True, "undecided (allowed)", summary)
        return Judgement(False, "UNDECIDED", summary)
    leaking = set(verdict.leaking_channels)
    if wanted is False:
        if leaking:
            return Judgement(False, "UNEXPECTED LEAK", summary)
        return Judgement(True, "ok", summary)
    if wanted is True:
        if not leaking:
            return Judgement(False, "MISSED LEAK", "expected a leak, found none:\n" + summary)
        return Judgement(True, "leak detected", summary)
    missing = sorted(wanted - leaking)
    if missing:
        return Judgement(
            False, "MISSED LEAK", f"expected a leak in {', '.join(missing)}, not found:\n" + summary
        )
    if bug is None:
        return Judgement(True, "known upstream leak, detected", summary)
    if not any(site.mentions(*bug) for site in verdict.leak_sites):
        return Judgement(
            False, "mutant caught, but its line is not among the leak sites",
            f"{bug[0]}:{bug[1]} is not among the leak sites:\n" + verdict.summary(sites=10),
        )  # fmt: skip
    return Judgement(True, "mutant caught", summary)


def skipped(reason: str, *, allowed: bool = False) -> Judgement:
    """A scenario that could not run here: a failure unless skipping is allowed."""
    return Judgement(allowed, f"SKIPPED ({reason})" + (" (allowed)" if allowed else ""), reason)


def _wanted(verdict: Verdict, expect: Expectation) -> bool | set[str]:
    if expect is None:
        return set(verdict.expect_leak) or False
    if isinstance(expect, bool):
        return expect
    if isinstance(expect, str):
        return {expect}
    return set(expect) or False
