"""How resjax writes a duration for people: H:MM:SS, in the training log's ETA, the sweep's log
lines and report, and launch.sh (whose shell `duration` mirrors `hms`, tested equal)."""

from __future__ import annotations

import math


def hms(seconds: float) -> str:
    """`seconds` rounded to the second as H:MM:SS ('0:01:05', '27:46:40'); '?' when it is not a
    finite number (an ETA before the first step)."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
