"""Why a soak could not produce a verdict: exit status 2 of ``python -m harness soak``."""

from __future__ import annotations

import traceback

__all__ = [
    "CycleError",
    "CycleTimeout",
    "ScenarioError",
    "SoakError",
    "SoakTimeout",
    "UsageError",
]


class SoakError(Exception):
    """A soak could not produce a verdict."""


class UsageError(SoakError, ValueError):
    """Bad arguments or a target that is not a cycle or a scenario."""


class ScenarioError(SoakError):
    """The scenario's setup failed."""


class CycleError(SoakError):
    """A cycle raised. ``cycle`` is its index, ``phase`` warm-up, measured or tracked."""

    def __init__(self, cycle: int, phase: str, exc: BaseException) -> None:
        self.cycle = cycle
        self.phase = phase
        self.where = where(exc)
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        super().__init__(
            f"cycle {cycle} ({phase}) raised {detail}" + (f" at {self.where}" if self.where else "")
        )


class SoakTimeout(SoakError):
    """The run took longer than its timeout."""

    def __init__(self, timeout: float, cycle: int | None, total: int) -> None:
        self.timeout = timeout
        self.cycle = cycle
        at = f" during cycle {cycle} of {total}" if cycle is not None else " before the first cycle"
        super().__init__(f"timed out after {timeout:g} s{at}")


class CycleTimeout(SoakTimeout):
    """One cycle ran past its deadline (``cycle_timeout``): the workload stalled.

    ``cycle`` is its index, ``phase`` warm-up, measured or tracked, ``timeout`` the deadline
    in seconds, ``scenario`` the soak's name, ``where`` the cycle's innermost frame outside
    the harness when the deadline came, ``stacks`` where every other task and thread waited
    then (:func:`harness.threads.stacks_now`; the cycle's own frames as ``"cycle"``).
    """

    def __init__(
        self,
        cycle: int,
        phase: str,
        deadline: float,
        scenario: str,
        *,
        where: str = "",
        stacks: dict[str, list[str]] | None = None,
    ) -> None:
        self.timeout = deadline
        self.cycle = cycle
        self.phase = phase
        self.scenario = scenario
        self.where = where
        self.stacks = stacks or {}
        SoakError.__init__(
            self,
            f"cycle {cycle} ({phase}) of {scenario} did not finish within its {deadline:g} s "
            "deadline: stalled" + (f" at {where}" if where else ""),
        )


def where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame of the traceback outside the harness's machinery."""
    return innermost(traceback.extract_tb(exc.__traceback__))


def innermost(frames: traceback.StackSummary) -> str:
    """``file:line`` of the innermost of ``frames`` outside the harness's machinery."""
    from harness.analysis import display_path, is_machinery

    outside = [f for f in frames if not is_machinery(f.filename)]
    if not outside:
        return ""
    return f"{display_path(outside[-1].filename)}:{outside[-1].lineno}"
