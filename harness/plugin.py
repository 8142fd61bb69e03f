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

Settings, most specific first (merged in one place, :func:`harness.config.configure`):
``--soak-cycles N`` on the command line (it overrides every test's cycle count: the operator
decides how long a run soaks), then the call's arguments, then the marker's, then the ini
setting ``soak_cycles``, then the scenario's own default (2,000 for a plain cycle). An
undecided verdict fails the test unless the call or the marker says ``allow_undecided=True``.
``--soak-report DIR`` (ini: ``soak_report``) writes each test's report
to ``DIR/<test id>/``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.config import Settings

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

    Any other keyword is a setting of :func:`harness.soak`. Returns the
    :class:`~harness.Verdict`; fails the test (with the verdict's summary) unless it is as
    expected (:func:`harness.expect.judge`): bounded, or with ``expect_leak`` the expected leak
    found (``True`` for any channel, a name or names for those channels). An undecided verdict
    (still settling at ``max_cycles``) fails unless ``allow_undecided=True``.
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
        from harness.engine import soak

        call = {"cycles": cycles, "warmup": warmup, "thresholds": thresholds, **options}
        layer, runtime, expect = self._settings(call, expect_leak)
        return self._judge(soak(cycle, settings=layer, **runtime), expect, layer)

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
        from harness.engine import soak_async

        call = {"cycles": cycles, "warmup": warmup, "thresholds": thresholds, **options}
        layer, runtime, expect = self._settings(call, expect_leak)
        return self._judge(await soak_async(cycle, settings=layer, **runtime), expect, layer)

    # -- helpers ----------------------------------------------------------------------------

    _RUNTIME = ("probes", "registry", "progress", "name")
    """Arguments of a soak that are objects of this run, not settings."""

    def _settings(
        self, call: dict[str, Any], expect_leak: ExpectLeak
    ) -> tuple[Settings, dict[str, Any], ExpectLeak]:
        """One settings layer: ini < marker < the call < ``--soak-cycles``; the runtime args."""
        config = self._request.config
        marker = self._request.node.get_closest_marker("soak")
        marked: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
        if marker is not None and marker.args:
            marked.setdefault("cycles", marker.args[0])
        runtime = {k: call.pop(k) for k in self._RUNTIME if k in call}
        runtime.update({k: marked.pop(k) for k in self._RUNTIME if k in marked})
        expect = expect_leak if expect_leak is not False else marked.pop("expect_leak", False)
        marked.pop("expect_leak", None)
        ini = str(config.getini("soak_cycles") or "").strip()
        own_dir = "report_dir" in call or "report_dir" in marked
        layers = [
            Settings.of(
                cycles=int(ini) if ini else None, report_dir=None if own_dir else self._report_dir()
            ),
            Settings.of(**marked),
            Settings.of(**call),
            Settings.of(cycles=config.getoption("soak_cycles")),
        ]
        if isinstance(expect, str) or (expect is not True and expect):
            layers.append(Settings.of(expect_leak=expect))
        merged = Settings()
        for layer in layers:
            merged = layer.over(merged)
        return merged, runtime, expect

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

    def _judge(self, verdict: Verdict, expect: ExpectLeak, layer: Settings) -> Verdict:
        from harness.expect import judge

        self.verdicts.append(verdict)
        judgement = judge(verdict, expect, allow_undecided=bool(layer.allow_undecided))
        if not judgement.ok:
            pytest.fail(judgement.message, pytrace=False)
        return verdict


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> SoakFixture:
    """Soak a cycle or a scenario in this test; fails the test when memory grows."""
    return SoakFixture(request)
