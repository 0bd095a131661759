"""Every CPU speed number the README quotes, in one run: the tables of its Speed section.

    python benchmarks/cpu_report.py --out=experiments/2026-11-28_cpu_speed
    python benchmarks/cpu_report.py --out=/tmp/speed --only=side_by_side --rounds=4

Runs each measurement in its own process (XLA reads its flags once per process), appends each
result to OUT/results.jsonl as it lands, and writes OUT/tables.md:

* resjax vs PyTorch 2.13 channels-last, per network and batch (benchmarks/side_by_side.py);
* compile time and the step's memory, unrolled vs scanned, with and without remat
  (`python -m resjax.bench --compile-only`);
* ResNet-1202 training steps, scanned with and without remat;
* real input pipeline vs synthetic data (`python -m resjax.bench --real-data`);
* `--only=stacks --python=PY,...`: the same ResNet-20 train step on every installed stack
  (each interpreter with its own jax), beside PyTorch, in alternating fresh processes:

    python benchmarks/cpu_report.py --out=/tmp/stacks --only=stacks \
        --python=/tmp/v312/bin/python,/tmp/v313/bin/python --rounds=6

Needs torch (`pip install torch==2.13.0`) and a quiet machine: check `uptime` first.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine_load import busy_s

HERE = Path(__file__).resolve().parent
CLEAN_BELOW = 0.1  # a clean run: other processes used less than this share of the cores
SIDE_BY_SIDE = [(20, 128), (20, 32), (56, 128), (110, 128)]  # (depth, batch)
COMPILE = [  # (model, flags)
    *((f"resnet{d}", ()) for d in (20, 56, 110)),
    *((f"resnet{d}", ("--scan",)) for d in (20, 56, 110, 1202)),
    ("resnet1202", ("--scan", "--remat")),
    ("resnet110", ("--remat",)),
    ("resnet1202", ()),  # unrolled: minutes to compile; bounded by --compile_timeout_s
]


def _json_run(cmd: list[str], timeout_s: float) -> dict:
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"timeout_s": timeout_s}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:], "returncode": proc.returncode}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - start, 1)
    return result


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _stack_name(python: str) -> str:
    code = (
        "import sys, importlib.metadata as m; "
        "print(f\"Python {sys.version.split()[0]}, jax {m.version('jax')}, "
        "jaxlib {m.version('jaxlib')}\")"
    )
    return subprocess.run(
        [python, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def stack_rounds(args: argparse.Namespace):
    """Rows of the stacks comparison: each round runs every stack's resjax.bench and PyTorch once,
    each in a fresh process, in an order rotated by one per round (a drift in the machine's speed
    falls on every side), and says what share of the cores other processes used meanwhile."""
    pythons = [sys.executable, *(p for p in args.python.split(",") if p)]
    common = ["--model=resnet20", "--batch=128", "--devices=1", f"--windows={args.windows}"]
    runs = [(_stack_name(py), [py, "-m", "resjax.bench", *common, "--json"]) for py in pythons]
    torch_cmd = [sys.executable, str(HERE / "torch_resnet.py"), "--batch_size=128", "--json"]
    torch = f"PyTorch {importlib.metadata.version('torch')} channels_last"
    runs.append((torch, [*torch_cmd, f"--windows={args.windows}"]))
    for i in range(args.rounds):
        for label, cmd in runs[i % len(runs) :] + runs[: i % len(runs)]:
            busy0, own0, t0 = busy_s(), _children_cpu_s(), time.perf_counter()
            result = _json_run(cmd, 1800)
            wall = time.perf_counter() - t0
            others = (busy_s() - busy0 - (_children_cpu_s() - own0)) / wall / os.cpu_count()
            rate = result.get("images_per_s", result.get("img_per_s"))
            yield {
                "kind": "stacks",
                "label": label,
                "round": i,
                "img_per_s": rate,
                "others_cores": round(max(others, 0.0), 3),
                "command": cmd,
                **result,
            }


def stacks_table(rows: list[dict], clean_below: float) -> str:
    labels = list(dict.fromkeys(r["label"] for r in rows if r["kind"] == "stacks"))
    if not labels:
        return ""
    rates, clean = {}, {}
    for label in labels:
        mine = [r for r in rows if r["label"] == label and r.get("img_per_s")]
        ok = [r for r in mine if r["others_cores"] < clean_below]
        clean[label] = f"{len(ok)}/{len(mine)}"
        rates[label] = [r["img_per_s"] for r in (ok if len(ok) >= 2 else mine)]
    oldest, torch = labels[0], labels[-1]
    median = {k: statistics.median(v) if v else float("nan") for k, v in rates.items()}
    out = ["## Every stack's ResNet-20 train step (batch 128, fp32, 1 CPU device) beside PyTorch\n"]
    out.append(
        f"Median images/s over the rounds in which other processes used under "
        f"{100 * clean_below:.0f}% of the cores; each round runs every row once, fresh "
        "processes, rotated order.\n"
    )
    out.append(
        f"| stack | img/s | vs {oldest.split(',')[0]}, {oldest.split(', ')[1]} | "
        "vs PyTorch | clean rounds | every round's img/s |"
    )
    out.append("|---|---:|---:|---:|---|---|")
    for label in labels:
        out.append(
            f"| {label} | {median[label]:.0f} | {median[label] / median[oldest]:.2f} | "
            f"**{median[label] / median[torch]:.2f}** | {clean[label]} | "
            f"{', '.join(f'{r:.0f}' for r in rates[label])} |"
        )
    return "\n".join(out) + "\n"


def measurements(args: argparse.Namespace):
    """(kind, label, command, timeout) of every measurement selected by --only."""
    py = sys.executable
    if args.only in ("all", "side_by_side"):
        for depth, batch in SIDE_BY_SIDE:
            cmd = [py, str(HERE / "side_by_side.py"), f"--depth={depth}", f"--batch_size={batch}"]
            cmd += [f"--rounds={args.rounds}", "--json"]
            yield "side_by_side", f"resnet{depth} b{batch}", cmd, 1800
    if args.only in ("all", "compile"):
        for model, flags in COMPILE:
            cmd = [py, "-m", "resjax.bench", f"--model={model}", "--batch=128", "--devices=1"]
            cmd += ["--compile-only", "--json", *flags]
            yield "compile", " ".join([model, *flags]), cmd, args.compile_timeout_s
    if args.only in ("all", "deep"):
        for flags in (("--scan", "--remat"), ("--scan",)):  # ResNet-1202 really training
            cmd = [py, "-m", "resjax.bench", "--model=resnet1202", "--batch=128", "--devices=1"]
            cmd += ["--steps=1", "--windows=2", "--warmup=1", "--json", *flags]
            yield "deep", " ".join(["resnet1202", *flags]), cmd, 1800
    if args.only in ("all", "real_data"):
        cmd = [py, "-m", "resjax.bench", "--model=resnet20", "--batch=128", "--devices=1"]
        cmd += ["--real-data", "--dataset=fashion_mnist", "--windows=7", "--json"]
        yield "real_data", "resnet20 b128 fashion_mnist", cmd, 1800


def tables(rows: list[dict], clean_below: float = CLEAN_BELOW) -> str:
    if any(r["kind"] == "stacks" for r in rows):
        return stacks_table(rows, clean_below)
    out = ["## resjax vs PyTorch 2.13 (channels_last), fp32 train step, same 2 cores\n"]
    out.append("| network | batch | resjax img/s | PyTorch img/s | ratio | clean rounds |")
    out.append("|---|---:|---:|---:|---:|---|")
    for r in (r for r in rows if r["kind"] == "side_by_side" and "ratio" in r):
        out.append(
            f"| ResNet-{r['depth']} | {r['batch_size']} | {r['jax_img_per_s']:.0f} | "
            f"{r['torch_img_per_s']:.0f} | **{r['ratio']:.2f}** | "
            f"{r['clean_rounds']}/{r['rounds']} |"
        )
    out.append("\n## Compile time and memory of the train step (batch 128, fp32, 1 CPU device)\n")
    out.append("| network | form | compile | step needs | of which temporaries | host RSS |")
    out.append("|---|---|---:|---:|---:|---:|")
    for r in (r for r in rows if r["kind"] == "compile"):
        model, *flags = r["label"].split()
        form = ("scanned" if "--scan" in flags else "unrolled") + (
            " + remat" if "--remat" in flags else ""
        )
        if "timeout_s" in r:
            out.append(f"| {model} | {form} | > {r['timeout_s']:.0f} s (stopped) | | | |")
        elif "error" in r:
            out.append(f"| {model} | {form} | error: {r['error']} | | | |")
        else:
            out.append(
                f"| {model} | {form} | {r['compile_s']:.1f} s | {r['step_total_gb']:.2f} GB | "
                f"{r['step_temp_gb']:.2f} GB | {r['host_peak_rss_gb']:.2f} GB |"
            )
    deep = [r for r in rows if r["kind"] == "deep" and "images_per_s" in r]
    if deep:
        out.append("\n## ResNet-1202 training at batch 128 (fp32, 1 CPU device)\n")
        out.append("| form | s/step | img/s | step needs | host peak RSS |")
        out.append("|---|---:|---:|---:|---:|")
        for r in deep:
            form = r["label"].split(" ", 1)[1].replace("--", "")
            out.append(
                f"| {form} | {r['step_ms'] / 1e3:.1f} | {r['images_per_s']:.1f} | "
                f"{r['step_total_gb']:.2f} GB | {r['host_peak_rss_gb']:.2f} GB |"
            )
    for r in (r for r in rows if r["kind"] == "real_data" and "real_over_synthetic" in r):
        out.append(
            f"\nReal pipeline (Fashion-MNIST, ResNet-20, batch 128): "
            f"{r['real_images_per_s']:.0f} img/s vs {r['images_per_s']:.0f} synthetic = "
            f"**{100 * r['real_over_synthetic']:.0f}%**"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="folder for results.jsonl and tables.md")
    p.add_argument(
        "--only",
        default="all",
        choices=("all", "side_by_side", "compile", "deep", "real_data", "stacks"),
        help="stacks: not part of all (it needs --python)",
    )
    p.add_argument("--rounds", type=int, default=6, help="side-by-side or stacks rounds")
    p.add_argument(
        "--python",
        default="",
        help="stacks: more interpreters, comma-separated, each with resjax installed; the one "
        "running this script (with torch) comes first and is the 'oldest' column",
    )
    p.add_argument("--windows", type=int, default=5, help="stacks: timed windows per process")
    p.add_argument(
        "--clean_below",
        type=float,
        default=CLEAN_BELOW,
        help="stacks: a clean run's other processes used less than this share of the cores",
    )
    p.add_argument("--compile_timeout_s", type=float, default=600)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only == "stacks":
        found = stack_rounds(args)
    else:
        found = (
            {"kind": kind, "label": label, **_json_run(cmd, timeout_s)}
            for kind, label, cmd, timeout_s in measurements(args)
        )
    rows = []
    with open(out / "results.jsonl", "a") as f:
        for row in found:
            print(
                f"[{time.strftime('%H:%M:%S')}] {row['kind']}: {row['label']} "
                f"{row.get('img_per_s') or ''}",
                flush=True,
            )
            rows.append(row)
            f.write(json.dumps(row) + "\n")
            f.flush()
    (out / "tables.md").write_text(tables(rows, args.clean_below))
    print(tables(rows, args.clean_below))


if __name__ == "__main__":
    main()
