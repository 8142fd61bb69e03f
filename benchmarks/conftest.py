"""Ratios between benchmarks measured in the same run, printed at the end of the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

_medians: dict[str, float] = {}
_ratios: list[tuple[str, str, str, float | None]] = []


def record_median(name: str, median: float) -> None:
    """Remember a benchmark's median (seconds) under ``name``."""
    _medians[name] = median


def report_ratio(label: str, numerator: str, denominator: str, target: float | None) -> None:
    """Print ``numerator / denominator`` of medians at the end of the run."""
    _ratios.append((label, numerator, denominator, target))


@pytest.fixture(scope="session", autouse=True)
def _print_ratios() -> Iterator[None]:
    yield
    lines = []
    for label, num, den, target in _ratios:
        if num in _medians and den in _medians:
            ratio = _medians[num] / _medians[den]
            goal = f" (target {target})" if target is not None else ""
            lines.append(f"{label}: {ratio:.3f}{goal}  [{num} / {den}, medians]")
    if lines:
        print("\n" + "\n".join(lines))
