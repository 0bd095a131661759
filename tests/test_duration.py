"""resjax.duration: H:MM:SS, and launch.sh's shell copy of it."""

import math
import re
import subprocess
from pathlib import Path

from resjax.duration import hms

ROOT = Path(__file__).resolve().parents[1]
SECONDS = (0, 1, 59, 60, 65, 3599, 3600, 3661, 36_000, 100_000)


def test_hms():
    assert [hms(s) for s in (0, 65, 3661, 100_000)] == ["0:00:00", "0:01:05", "1:01:01", "27:46:40"]
    assert hms(59.5) == "0:01:00" and hms(0.4) == "0:00:00"  # rounded, not cut
    assert hms(math.nan) == "?" and hms(math.inf) == "?"  # an ETA before the first step


def test_launch_sh_duration_mirrors_hms():
    text = (ROOT / "launch.sh").read_text()
    function = re.search(r"^duration\(\) \{.*?^\}\n", text, re.M | re.S).group(0)
    script = function + "".join(f"duration {s}; echo\n" for s in SECONDS)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [hms(s) for s in SECONDS]
