"""Whether a verdict is what was expected: the one judge for the CLI, the suite and the plugin.

An expectation is ``False`` (memory must stay bounded), ``True`` (some channel must leak), or
channel names (each of them must leak). ``None`` takes the verdict's own ``expect_leak`` (the
scenario's known leaks). An undecided verdict (still settling) fails unless allowed; a
scenario that could not run (SKIPPED) fails unless allowed. A scenario expected to stall
(``expect_stall``) is judged on how its soak ended (:func:`judge_stall`): as expected only at
a cycle's deadline (CycleTimeout), never with a verdict.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from harness.analysis import Verdict

__all__ = ["STALLED", "Expectation", "Judgement", "judge", "judge_stall", "skipped"]

Expectation = bool | str | Collection[str] | None
STALLED = "CycleTimeout"
"""The error kind of a soak whose cycle ran past its deadline (the scenario process's report)."""


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


def judge_stall(
    verdict: Verdict | None,
    kind: str = "",
    reason: str = "",
    *,
    bug: tuple[str, int] | None = None,
    stacks: Mapping[str, Sequence[str]] | None = None,
) -> Judgement:
    """A scenario expected to stall: as expected when its soak ended at a cycle's deadline
    (error ``kind`` :data:`STALLED`, ``reason`` its one line); a verdict (bounded, leaking,
    undecided) or any other error is not. ``bug``: a mutant's line, which must be among the
    frames where the cycle, a task or a thread waited at the deadline (``stacks``)."""
    if kind == STALLED:
        if bug is None:
            return Judgement(True, "stalled as expected", reason)
        if not any(_at(frame, *bug) for frames in (stacks or {}).values() for frame in frames):
            return Judgement(
                False, "mutant stalled, but not at its line",
                f"{bug[0]}:{bug[1]} is not where anything waited at the deadline: {reason}",
            )  # fmt: skip
        return Judgement(True, "mutant caught", reason)
    if kind or verdict is None:
        return Judgement(False, f"ERROR: {reason}", f"expected a stall, got an error: {reason}")
    found = ", ".join(verdict.leaking_channels) or verdict.status
    return Judgement(
        False, f"MISSED STALL ({found})",
        "expected a cycle past its deadline, every cycle finished:\n" + verdict.summary(),
    )  # fmt: skip


def _at(frame: str, filename: str, line: int) -> bool:
    """Whether ``frame`` (``"path:line in function"``) is at ``filename:line``."""
    location = frame.split(" in ", 1)[0]
    suffix = f"{os.path.basename(filename)}:{line}"
    return location == f"{os.path.normpath(filename)}:{line}" or location.endswith("/" + suffix)


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
