"""How busy the whole machine is, from /proc/stat: a speed number means something only when
nothing else was running beside it."""

from __future__ import annotations

import os


def busy_s() -> float:
    """Seconds of non-idle CPU time of the whole machine so far (0 where /proc/stat is absent)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
