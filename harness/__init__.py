"""The soak harness: run a cycle thousands of times and say whether memory stays bounded.

    from harness import soak
    verdict = soak(cycle, cycles=2000)     # cycle(i): sync or async
    verdict.bounded                        # False when any channel grows
    verdict.channels["rss"].slope_per_cycle
    verdict.leak_sites                     # memray sites still live after the measured cycles

See docs/harness.md. Importing this package is cheap: scipy, matplotlib, memray and rich are
imported when a soak needs them.
"""

from harness.analysis import ChannelResult, LeakSite, TypeGrowth, Verdict
from harness.probes import Probe
from harness.runner import (
    CycleError,
    Scenario,
    ScenarioError,
    SoakError,
    SoakTimeout,
    UsageError,
    Workload,
    run_in_subprocess,
    scenario,
    soak,
    soak_async,
)

__all__ = [
    "ChannelResult",
    "CycleError",
    "LeakSite",
    "Probe",
    "Scenario",
    "ScenarioError",
    "SoakError",
    "SoakTimeout",
    "TypeGrowth",
    "UsageError",
    "Verdict",
    "Workload",
    "run_in_subprocess",
    "scenario",
    "soak",
    "soak_async",
]
