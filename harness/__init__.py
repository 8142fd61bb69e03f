"""The soak harness: run a cycle thousands of times and say whether memory stays bounded.

    from harness import soak
    verdict = soak(cycle, cycles=2000)     # cycle(i): sync or async
    verdict.bounded                        # False when any channel grows
    verdict.channels["rss"].slope_per_cycle
    verdict.leak_sites                     # memray sites still live after the tracked cycles

What a user's code needs is here; the rest is in the submodules (``harness.child`` for the
scenario process, ``harness.expect`` for the judge of the CLI, the suite and the plugin). See
docs/harness.md. Importing this package is cheap: scipy, matplotlib, memray and rich are
imported when a soak needs them.
"""

from harness.analysis import ChannelResult, LeakSite, Verdict
from harness.config import Settings
from harness.engine import soak, soak_async
from harness.errors import (
    CycleError,
    CycleTimeout,
    ScenarioError,
    SoakError,
    SoakTimeout,
    UsageError,
)
from harness.model import Scenario, Workload, scenario
from harness.probes import Probe

__all__ = [
    "ChannelResult",
    "CycleError",
    "CycleTimeout",
    "LeakSite",
    "Probe",
    "Scenario",
    "ScenarioError",
    "Settings",
    "SoakError",
    "SoakTimeout",
    "UsageError",
    "Verdict",
    "Workload",
    "scenario",
    "soak",
    "soak_async",
]
