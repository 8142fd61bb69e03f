"""pytest plugin (entry point ``pytest11``): the ``soak`` fixture and the ``soak`` marker.

    def test_no_leak(soak):
        cache = {}
        def cycle(i):
            cache[i % 100] = object()
        soak(cycle, cycles=2000)                    # fails the test on a leak

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
``--soak-report DIR`` (ini: ``soak_report``) writes each soak's report (``verdict.json``
among it) to ``DIR/<test id>/``.

What pytest reports (each soak judged once, by :func:`harness.expect.judge`):

- a failed soak fails the test with one line (the verdict's, or what was expected), status
  letter ``S`` and word ``SOAK LEAK``, ``SOAK UNDECIDED`` or ``SOAK MISSED LEAK``;
- every soak adds a report section ``soak verdict`` with :meth:`~harness.Verdict.summary`
  (channels, slopes, leak sites): shown with a failure, and for passed tests with ``-rP``
  or ``-rA``;
- every soak adds JUnit XML properties (``--junitxml``): ``soak_status``, ``soak_result``,
  ``soak_cycles``, ``soak_cycles_per_second``, ``soak_leak_channels``, ``soak_slope_<channel>``
  (units per cycle), ``soak_report``; a test's second soak is ``soak2_...``, and so on; a
  failed soak adds ``soak_failure``;
- the end of the session lists every soak (verdict, result, cycles, cycles/s, each channel's
  slope) unless ``--hide-soak-summary`` (ini: ``hide_soak_summary``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.config import Settings

if TYPE_CHECKING:
    from harness.analysis import Verdict
    from harness.expect import Judgement

__all__ = [
    "SoakFixture",
    "SoakRun",
    "pytest_addoption",
    "pytest_configure",
    "pytest_report_teststatus",
    "pytest_runtest_makereport",
    "pytest_terminal_summary",
    "soak",
]

_MARKER = (
    "soak(cycles=None, warmup=None, thresholds=None, expect_leak=False, **options): "
    "defaults for the soak fixture in this test (see harness.plugin)"
)
SECTION = "soak verdict"
"""The title of a soak's report section (``soak verdict 2`` for a test's second soak)."""
LETTER = "S"
"""The status letter of a test failed by its soak."""
_WORDS = {"UNEXPECTED LEAK": "SOAK LEAK", "UNDECIDED": "SOAK UNDECIDED"}
"""Status words by the judgement's status; any other failure is ``SOAK <its status>``."""


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
        help="write each soak's report (verdict.json, report.html) to DIR/<test id>/ "
        "(ini: soak_report)",
    )
    group.addoption(
        "--hide-soak-summary",
        action="store_true",
        default=False,
        help="no summary of the soaks at the end of the session (ini: hide_soak_summary)",
    )
    parser.addini("soak_cycles", "default cycles of a soak when the test gives none", default="")
    parser.addini("soak_report", "directory for soak reports, one per test", default="")
    parser.addini(
        "hide_soak_summary", "no summary of the soaks at the end of the session", type="bool"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER)
    config.stash[_RUNS] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Each soak of the test: a report section with its verdict (pytest decides when to show
    it: with a failure, and with ``-rP``/``-rA`` for a passed test)."""
    report = yield
    if call.when == "call":
        for run in _runs(item.config, item.nodeid):
            report.sections.append((run.section, run.verdict.summary()))
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(
    report: pytest.TestReport | pytest.CollectReport,
) -> tuple[str, str, tuple[str, Mapping[str, bool]]] | None:
    """A test failed by its soak: still a failure, with letter ``S`` and a word of its own."""
    if report.when != "call" or not report.failed:
        return None
    status = dict(report.user_properties).get(_FAILURE)
    if status is None:
        return None
    return "failed", LETTER, (_WORDS.get(str(status), f"SOAK {status}"), {"red": True})


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every soak of the session: verdict, result, cycles, cycles/s, each channel's slope."""
    config = terminalreporter.config
    runs = config.stash.get(_RUNS, [])
    if not runs or config.getoption("hide_soak_summary") or config.getini("hide_soak_summary"):
        return
    terminalreporter.write_sep("=", "soak summary")
    for line in _summary_lines(runs):
        terminalreporter.write_line(line)


ExpectLeak = bool | str | Collection[str]


@dataclass(frozen=True)
class SoakRun:
    """One soak of a test: its verdict and how :func:`harness.expect.judge` judged it."""

    nodeid: str
    index: int
    """1 for the test's first soak, 2 for its second..."""
    verdict: Verdict
    judgement: Judgement

    @property
    def label(self) -> str:
        return self.nodeid if self.index == 1 else f"{self.nodeid} (soak {self.index})"

    @property
    def section(self) -> str:
        return SECTION if self.index == 1 else f"{SECTION} {self.index}"

    def properties(self) -> list[tuple[str, object]]:
        """The JUnit XML properties of this soak (``soak_...``, ``soak2_...``, ...)."""
        v = self.verdict
        prefix = "soak" if self.index == 1 else f"soak{self.index}"
        props: list[tuple[str, object]] = [
            ("status", v.status),
            ("result", self.judgement.status),
            ("cycles", v.cycles),
            ("cycles_per_second", round(v.measured_cycles_per_second, 1)),
            ("leak_channels", ",".join(v.leaking_channels)),
            *((f"slope_{name}", ch.slope_per_cycle) for name, ch in v.channels.items()),
        ]
        if v.report_dir:
            props.append(("report", v.report_dir))
        return [(f"{prefix}_{name}", value) for name, value in props]


class SoakFixture:
    """Callable: ``soak(cycle, cycles=..., warmup=..., thresholds=..., expect_leak=False, ...)``.

    Any other keyword is a setting of :func:`harness.soak`. Returns the
    :class:`~harness.Verdict`; fails the test unless it is as expected
    (:func:`harness.expect.judge`): bounded, or with ``expect_leak`` the expected leak found
    (``True`` for any channel, a name or names for those channels). An undecided verdict
    (still settling at ``max_cycles``) fails unless ``allow_undecided=True``. Each soak is a
    :class:`SoakRun` of the session: the report section, the status, the JUnit properties
    and the summary are made from them.
    """

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request
        self._runs = 0

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
        """Judge the verdict, record it (a :class:`SoakRun` and the test's properties), and
        fail the test with one line unless it is as expected."""
        from harness.expect import judge

        judgement = judge(verdict, expect, allow_undecided=bool(layer.allow_undecided))
        node = self._request.node
        runs = self._request.config.stash[_RUNS]
        run = SoakRun(node.nodeid, len(_runs(self._request.config, node.nodeid)) + 1, verdict,
                      judgement)  # fmt: skip
        runs.append(run)
        node.user_properties.extend(run.properties())
        if not judgement.ok:
            node.user_properties.append((_FAILURE, judgement.status))
            pytest.fail(_headline(judgement), pytrace=False)
        return verdict


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> SoakFixture:
    """Soak a cycle or a scenario in this test; fails the test when memory grows."""
    return SoakFixture(request)


# -- helpers ---------------------------------------------------------------------------------------

_RUNS = pytest.StashKey[list[SoakRun]]()
"""Every soak of the session, in order."""
_FAILURE = "soak_failure"
"""The user property of a test failed by a soak: the judgement's status."""


def _runs(config: pytest.Config, nodeid: str) -> list[SoakRun]:
    return [run for run in config.stash.get(_RUNS, []) if run.nodeid == nodeid]


def _headline(judgement: Judgement) -> str:
    """The one line a failed soak fails its test with; the details are in its section."""
    return judgement.message.splitlines()[0].rstrip(":")


def _summary_lines(runs: list[SoakRun]) -> list[str]:
    """A line per soak (test, verdict, result, cycles, cycles/s), then its channels' slopes."""
    from harness.analysis import format_quantity

    head = ("test", "verdict", "result", "cycles", "cycles/s")
    rows = [
        (r.label, r.verdict.status, r.judgement.status, f"{r.verdict.cycles:,}",
         f"{r.verdict.measured_cycles_per_second:,.0f}")
        for r in runs
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(len(head))]

    def line(row: tuple[str, ...]) -> str:
        left = "  ".join(f"{cell:<{w}}" for cell, w in zip(row[:3], widths[:3], strict=True))
        right = "  ".join(f"{cell:>{w}}" for cell, w in zip(row[3:], widths[3:], strict=True))
        return f"{left}  {right}"

    lines = [line(head)]
    for run, row in zip(runs, rows, strict=True):
        lines.append(line(row))
        slopes = [
            f"{name} {format_quantity(ch.slope_per_cycle, ch.unit, signed=True)}/cycle"
            + (f" {ch.kind.upper()}" if ch.leaking or ch.undecided else "")
            for name, ch in run.verdict.channels.items()
        ]
        lines.append("    " + ", ".join(slopes))
    return lines
