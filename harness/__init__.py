"""The soak harness: run a cycle thousands of times and say whether memory stays bounded.

    from harness import soak
    verdict = soak(cycle, cycles=2000)     # cycle(i): sync or async
    verdict.bounded                        # False when any channel grows
    verdict.channels["rss"].slope_per_cycle
    verdict.leak_sites                     # memray sites still live after the tracked cycles

See docs/harness.md. Importing this package is cheap: scipy, matplotlib, memray and rich are
imported when a soak needs them.
"""

from harness.analysis import ChannelResult, LeakSite, TypeGrowth, Verdict
from harness.child import SubprocessResult, run_in_subprocess
from harness.config import Settings
from harness.engine import soak, soak_async
from harness.errors import CycleError, ScenarioError, SoakError, SoakTimeout, UsageError
from harness.expect import Judgement, judge
from harness.model import Scenario, Workload, scenario
from harness.probes import Probe

__all__ = [
    "ChannelResult",
    "CycleError",
    "Judgement",
    "LeakSite",
    "Probe",
    "Scenario",
    "ScenarioError",
    "Settings",
    "SoakError",
    "SoakTimeout",
    "SubprocessResult",
    "TypeGrowth",
    "UsageError",
    "Verdict",
    "Workload",
    "judge",
    "run_in_subprocess",
    "scenario",
    "soak",
    "soak_async",
]
