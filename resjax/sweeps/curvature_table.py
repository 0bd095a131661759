"""The sweep report's optional curvature table: top Hessian eigenvalue and trace per point.

Reads `<point>/curvature/curvature.json`, what

    python -m resjax.trainability curvature WORKDIR/<point> --out=WORKDIR/<point>/curvature

writes (resjax.trainability); points without one are left out, and a sweep where none has
one gets no table. Reads files only (no JAX), as the rest of the report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CURVATURE_FILE = Path("curvature") / "curvature.json"


def curvature_rows(workdir: str | Path, points: Sequence[str]) -> list[dict[str, Any]]:
    """One row per point that has a curvature estimate: that of its latest step."""
    rows = []
    for point in points:
        path = Path(workdir) / point / CURVATURE_FILE
        try:
            estimates = json.loads(path.read_text())["estimates"]
        except (OSError, ValueError, KeyError):
            continue
        if not estimates:
            continue
        e = max(estimates, key=lambda e: e["step"] or 0)
        rows.append(
            {
                "point": point,
                "net": e["label"],
                "step": e["step"],
                "top_eigenvalue": e["lanczos"]["eigenvalues"][0],
                "trace": e["hutchinson"]["trace"],
                "trace_stderr": e["hutchinson"]["stderr"],
                "examples": e["examples"]["count"],
                "lanczos_steps": e["lanczos"]["lanczos_steps"],
                "trace_probes": e["hutchinson"]["probes"],
            }
        )
    return rows


def curvature_section(workdir: str | Path, points: Sequence[str]) -> str:
    """The Markdown section ('' when no point has a curvature estimate)."""
    rows = curvature_rows(workdir, points)
    if not rows:
        return ""
    lines = [
        "",
        "## Curvature of the training loss",
        "",
        "Top Hessian eigenvalue (Lanczos) and trace (Hutchinson, ± standard error) of the mean "
        "training loss, BatchNorm in evaluation mode (`python -m resjax.trainability curvature`).",
        "",
        "| point | net | step | top eigenvalue | trace | examples | Lanczos steps | probes |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['point']} | {r['net']} | {r['step'] if r['step'] is not None else '–'} | "
            f"{r['top_eigenvalue']:.4g} | {r['trace']:.4g} ± {r['trace_stderr']:.2g} | "
            f"{r['examples']:,} | {r['lanczos_steps']} | {r['trace_probes']} |"
        )
    return "\n".join(lines) + "\n"
