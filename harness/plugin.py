"""pytest plugin (entry point ``pytest11``): the ``soak`` fixture and the ``soak`` marker.

    def test_no_leak(soak):
        cache = {}
        def cycle(i):
            cache[i % 100] = object()
        soak(cycle, cycles=2000)                    # fails with the verdict's summary on a leak

    @pytest.mark.soak(cycles=3000, warmup=300, thresholds={"rss": 4096})
    def test_reconnects(soak):
        soak(my_scenario)                           # the marker's settings are the defaults

    def test_known_leak(soak):
        verdict = soak(cycle, expect_leak="rss")    # fails unless rss leaks; returns the verdict

In async tests use ``await soak.run_async(...)``: it runs on the test's event loop.

Settings, most specific first: ``--soak-cycles N`` on the command line (it overrides every
test's cycle count: the operator decides how long a run soaks), then the call's arguments,
then the marker's, then the ini setting ``soak_cycles``, then the scenario's own default
(2,000 for a plain cycle). ``--soak-report DIR`` (ini: ``soak_report``) writes each test's report
to ``DIR/<test id>/``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness.analysis import Verdict

__all__ = ["SoakFixture", "pytest_addoption", "pytest_configure", "soak"]

_MARKER = (
    "soak(cycles=None, warmup=None, thresholds=None, expect_leak=False, **options): "
    "defaults for the soak fixture in this test (see harness.plugin)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("soak", "waclient soak harness")
    group.addoption(
        "--soak-cycles",
        type=int,
        default=None,
        metavar="N",
        help="cycles for every soak (overrides the tests' own counts; ini: soak_cycles)",
    )
    group.addoption(
        "--soak-report",
        default=None,
        metavar="DIR",
        help="write each soak's report to DIR/<test id>/ (ini: soak_report)",
    )
    parser.addini("soak_cycles", "default cycles of a soak when the test gives none", default="")
    parser.addini("soak_report", "directory for soak reports, one per test", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER)


ExpectLeak = bool | str | Collection[str]


class SoakFixture:
    """Callable: ``soak(cycle, cycles=..., warmup=..., thresholds=..., expect_leak=False, ...)``.

    Any other keyword goes to :func:`harness.soak`. Returns the :class:`~harness.Verdict`;
    fails the test (with the verdict's summary) when a channel leaks, or, with
    ``expect_leak``, when the expected leak is not found: ``True`` for any channel, a name or
    names for those channels.
    """

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request
        self._runs = 0
        self.verdicts: list[Verdict] = []

    def __call__(
        self,
        cycle: Callable[..., Any] | Any,
        cycles: int | None = None,
        warmup: int | None = None,
        thresholds: Mapping[str, float] | None = None,
        *,
        expect_leak: ExpectLeak = False,
        **options: Any,
    ) -> Verdict:
        from harness.runner import soak

        kwargs, expect = self._settings(cycle, cycles, warmup, thresholds, expect_leak, options)
        return self._judge(soak(cycle, **kwargs), expect)

    async def run_async(
        self,
        cycle: Callable[..., Any] | Any,
        cycles: int | None = None,
        warmup: int | None = None,
        thresholds: Mapping[str, float] | None = None,
        *,
        expect_leak: ExpectLeak = False,
        **options: Any,
    ) -> Verdict:
        """The same on the running event loop (async tests)."""
        from harness.runner import soak_async

        kwargs, expect = self._settings(cycle, cycles, warmup, thresholds, expect_leak, options)
        return self._judge(await soak_async(cycle, **kwargs), expect)

    # -- helpers ----------------------------------------------------------------------------

    def _settings(
        self,
        cycle: Any,
        cycles: int | None,
        warmup: int | None,
        thresholds: Mapping[str, float] | None,
        expect_leak: ExpectLeak,
        options: dict[str, Any],
    ) -> tuple[dict[str, Any], ExpectLeak]:
        from harness.runner import as_scenario

        config = self._request.config
        marker = self._request.node.get_closest_marker("soak")
        marked: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
        if marker is not None and marker.args:
            marked.setdefault("cycles", marker.args[0])
        sc = as_scenario(cycle)

        marked_cycles = marked.pop("cycles", None)
        marked_warmup = marked.pop("warmup", None)
        marked_thresholds = marked.pop("thresholds", None) or {}
        marked_expect = marked.pop("expect_leak", False)
        n = config.getoption("soak_cycles")
        if n is None:
            n = cycles if cycles is not None else marked_cycles
        if n is None:
            ini = str(config.getini("soak_cycles") or "").strip()
            n = int(ini) if ini else sc.cycles
        w = warmup if warmup is not None else marked_warmup
        th = {**dict(marked_thresholds), **dict(thresholds or {})}
        expect = expect_leak if expect_leak is not False else marked_expect
        merged = {**marked, **options}
        report = merged.pop("report_dir", None) or self._report_dir()
        out = {"cycles": int(n), "warmup": w, "thresholds": th or None, "report_dir": report}
        out.update(merged)
        if isinstance(expect, str):
            out["expect_leak"] = [expect]
        elif expect is not True and expect:
            out["expect_leak"] = sorted(expect)
        return out, expect

    def _report_dir(self) -> Path | None:
        config = self._request.config
        root = config.getoption("soak_report") or str(config.getini("soak_report") or "").strip()
        if not root:
            return None
        self._runs += 1
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self._request.node.nodeid).strip("_")
        if self._runs > 1:
            name += f"-{self._runs}"
        return Path(root) / name

    def _judge(self, verdict: Verdict, expect: ExpectLeak) -> Verdict:
        self.verdicts.append(verdict)
        if expect is False:
            if not verdict.bounded:
                pytest.fail(verdict.summary(), pytrace=False)
            return verdict
        if expect is True:
            if verdict.bounded:
                pytest.fail("expected a leak, found none:\n" + verdict.summary(), pytrace=False)
            return verdict
        wanted = {expect} if isinstance(expect, str) else set(expect)
        missing = sorted(wanted - set(verdict.leaking_channels))
        if missing:
            pytest.fail(
                f"expected a leak in {', '.join(missing)}, not found:\n" + verdict.summary(),
                pytrace=False,
            )
        return verdict


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> SoakFixture:
    """Soak a cycle or a scenario in this test; fails the test when memory grows."""
    return SoakFixture(request)
