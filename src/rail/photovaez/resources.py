"""Resource measurements for the benchmarks and the comparison harness."""

from __future__ import annotations

import resource
import sys

__all__ = ["peak_rss_mb"]


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    On Linux this is ``VmHWM`` from ``/proc/self/status``: the high-water mark of this process's
    own address space.  (``ru_maxrss`` is not: a child started by fork + exec keeps the RSS its
    parent had at the fork as a floor, so a light worker of a heavy driver would report the
    driver's memory.)  Elsewhere ``ru_maxrss`` is used.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20
