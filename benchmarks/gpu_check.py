"""The one-shot GPU check: resjax against PyTorch on the same chip, and the trainer
end to end, in one call of under 8 minutes. `benchmarks/gpu_check.sh` runs it (and keeps its log).

    bash benchmarks/gpu_check.sh --manual_dir=.fmnist          # on a GPU machine: ~7 min
    bash benchmarks/gpu_check.sh --tiny --data_dir=DIR         # every stage shrunk, on a CPU

Stages, in order of priority (each a process of its own, with its own time limit; a stage that
the deadline leaves no time for is recorded as skipped, and `--stages` reruns any subset):

  env       nvidia-smi, versions, JAX's devices
  resnet50  ResNet-50 at 224², bf16 compute, fp32 parameters, synthetic on-device data: resjax
            and torchvision + torch.compile in one process, windows alternating, at batch 256
            and 512 (gpu_side_by_side.py): images/s, ratio, MFU, compile time, memory
  trainer   `python -m resjax.train` on Fashion-MNIST in its on-disk format (prepared from the
            upstream archives with --manual_dir, or already prepared in --data_dir): a run to
            N steps, then the same command to N + more, which must resume from its checkpoint;
            the loop's images/s against the bare step's (`python -m resjax.bench --real-data`)
  cifar20   CIFAR ResNet-20 at batch 128, bf16 and fp32, resjax vs PyTorch: s per 45k epoch
  jpeg      the on-disk JPEG pipeline (grain workers) on this host's cores, on the generated
            ImageNet stand-in (`python -m resjax.data.bench --dataset=jpegs`), against the
            ResNet-50 step's appetite
  resnet1202  scanned ResNet-1202 with remat (`python -m resjax.bench`): compile, step, memory
  cifar56   CIFAR ResNet-56, as cifar20

Writes OUT/gpu_check.jsonl: one JSON object per line, each with a "stage"; every stage ends
with a {"stage": "status", ...} line (ok, seconds, skipped or error), and the last line is
{"stage": "summary", ...}: the table (model x batch x resjax img/s x PyTorch img/s x ratio x
MFU), the goals (ratio >= 1.1; >= 0.9 of MLPerf Training v4.0's ResNet-50 per chip), the
trainer's checks and loop/step ratio, and the minutes used. `--tiny` numbers are a smoke test
of the script on a CPU, not measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# MLPerf Training v4.0 (closed, ResNet-50): images/s per chip of the best 8-GPU submissions,
# the anchors the goal is stated against.
MLPERF_IMG_PER_S = {"H200": 7950.0, "H100": 7160.0}
GOAL_RATIO = 1.1  # resjax / PyTorch on the same chip
GOAL_OF_MLPERF = 0.9

PROFILES: dict[str, dict[str, Any]] = {
    "gpu": {
        "deadline_s": 420,
        "resnet50": dict(
            model="resnet50",
            batches="256,512",
            dtypes="bfloat16",
            image_size=224,
            steps=20,
            rounds=4,
            warmup=3,
            torch_compile="inductor",
            budget_s=210,
        ),
        "cifar20": dict(
            model="resnet20",
            batches="128",
            dtypes="bfloat16,float32",
            image_size=32,
            steps=50,
            rounds=4,
            warmup=5,
            torch_compile="inductor",
            budget_s=120,
        ),
        "cifar56": dict(
            model="resnet56",
            batches="128",
            dtypes="bfloat16,float32",
            image_size=32,
            steps=50,
            rounds=4,
            warmup=5,
            torch_compile="inductor",
            budget_s=150,
        ),
        "trainer": dict(
            batch=128,
            steps=300,
            more_steps=100,
            log_every=25,
            dtype="bfloat16",
            val_examples=5000,
            test_split="test",
            bench_steps=50,
            budget_s=150,
        ),
        "resnet1202": dict(
            model="resnet1202",
            batch=128,
            dtype="bfloat16",
            steps=5,
            windows=3,
            warmup=2,
            budget_s=100,
        ),
        "jpeg": dict(images=1024, batch=256, steps=20, rounds=2, workers=0, budget_s=90),
    },
    # Every stage shrunk so that the whole script runs on a 2-core CPU in minutes (8 min 9 s
    # with the cores shared by ~20 busy processes; not yet timed on a quiet machine)
    # resnet18 stands in for resnet50: the same ImageNet code path (torchvision net), smaller.
    "tiny": {
        "deadline_s": 900,
        "resnet50": dict(
            model="resnet18",
            batches="2,4",
            dtypes="bfloat16",
            image_size=32,
            steps=1,
            rounds=2,
            warmup=1,
            torch_compile="aot_eager",
            budget_s=300,
        ),
        "cifar20": dict(
            model="resnet8",
            batches="8",
            dtypes="bfloat16,float32",
            image_size=32,
            steps=1,
            rounds=2,
            warmup=1,
            torch_compile="aot_eager",
            budget_s=200,
        ),
        "cifar56": None,  # the same code as cifar20
        "trainer": dict(
            batch=32,
            steps=20,
            more_steps=10,
            log_every=5,
            dtype="float32",
            val_examples=500,
            test_split="test[:500]",
            bench_steps=2,
            budget_s=300,
        ),
        "resnet1202": dict(
            model="resnet110", batch=4, dtype="float32", steps=1, windows=1, warmup=1, budget_s=200
        ),
        "jpeg": dict(images=24, batch=8, steps=2, rounds=1, workers=2, budget_s=200),
    },
}
ORDER = ("env", "resnet50", "trainer", "cifar20", "jpeg", "resnet1202", "cifar56")


class Check:
    """Where the run writes, what it has written, and how much time is left."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.profile = PROFILES["tiny" if args.tiny else "gpu"]
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.out / "gpu_check.jsonl"
        self.scratch = Path(args.scratch)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.start = time.perf_counter()
        self.deadline_s = args.deadline_s or self.profile["deadline_s"]

    def left_s(self) -> float:
        return self.deadline_s - (time.perf_counter() - self.start)

    def write(self, row: dict[str, Any]) -> None:
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def rows(self, stage: str | None = None) -> list[dict[str, Any]]:
        if not self.jsonl.exists():
            return []
        rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line]
        return [r for r in rows if stage is None or r.get("stage") == stage]

    def env(self, torch_beside_jax: bool = False) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        if torch_beside_jax:
            # JAX would otherwise take 75% of the GPU's memory at start, leaving PyTorch too
            # little: half each (ResNet-50 at batch 512 needs tens of GB in either). A
            # framework that runs out records an error in that row; the others go on.
            env.update(XLA_PYTHON_CLIENT_PREALLOCATE="false", XLA_PYTHON_CLIENT_MEM_FRACTION="0.5")
        return env

    def run(
        self,
        cmd: list[str],
        timeout_s: float,
        torch_beside_jax: bool = False,
        capture: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Runs `cmd` from the repository root, its output into the log (and returned when
        `capture`); raises subprocess.TimeoutExpired past `timeout_s`."""
        print("$ " + " ".join(cmd), flush=True)
        result = subprocess.run(
            cmd,
            cwd=REPO,
            env=env or self.env(torch_beside_jax),
            timeout=timeout_s,
            text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=None,
        )
        if capture:
            print(result.stdout, end="", flush=True)
        return result


def stage_env(check: Check, timeout_s: float) -> None:
    row: dict[str, Any] = {"stage": "env", "tiny": check.args.tiny}
    if shutil.which("nvidia-smi"):
        smi = check.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            timeout_s,
            capture=True,
        )
        row["nvidia_smi"] = smi.stdout.strip()
    probe = (
        "import importlib.metadata as m, json, os, platform, jax\n"
        "v = {}\n"
        "for p in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy', 'torch',\n"
        "          'torchvision', 'tensorflow-datasets', 'grain', 'array_record'):\n"
        "    try: v[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: v[p] = None\n"
        "print(json.dumps({'python': platform.python_version(), 'versions': v,\n"
        "    'devices': [str(d) for d in jax.devices()], 'device_kind': jax.devices()[0].device_kind,\n"
        "    'cpus': os.cpu_count()}))\n"
    )
    out = check.run([sys.executable, "-c", probe], timeout_s, capture=True)
    out.check_returncode()
    row.update(json.loads(out.stdout.strip().splitlines()[-1]))
    check.write(row)


def side_by_side(name: str):
    def stage(check: Check, timeout_s: float) -> None:
        p = check.profile[name]
        cmd = [
            sys.executable,
            str(HERE / "gpu_side_by_side.py"),
            f"--stage={name}",
            f"--jsonl={check.jsonl}",
        ]
        cmd += [
            f"--{k}={p[k]}"
            for k in (
                "model",
                "batches",
                "dtypes",
                "image_size",
                "steps",
                "rounds",
                "warmup",
                "torch_compile",
            )
        ]
        check.run(cmd, timeout_s, torch_beside_jax=True).check_returncode()

    return stage


def resjax_bench(
    check: Check, args: list[str], timeout_s: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """`python -m resjax.bench ... --json` on one device; its JSON object."""
    cmd = [sys.executable, "-m", "resjax.bench", "--devices=1", "--json", *args]
    out = check.run(cmd, timeout_s, capture=True, env=env)
    out.check_returncode()
    return json.loads(out.stdout.strip().splitlines()[-1])


def stage_resnet1202(check: Check, timeout_s: float) -> None:
    p = check.profile["resnet1202"]
    result = resjax_bench(
        check,
        [
            f"--model={p['model']}",
            f"--batch={p['batch']}",
            f"--dtype={p['dtype']}",
            "--scan",
            "--remat",
            f"--steps={p['steps']}",
            f"--windows={p['windows']}",
            f"--warmup={p['warmup']}",
        ],
        timeout_s,
    )
    check.write({"stage": "resnet1202", **result})


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stage_trainer(check: Check, timeout_s: float) -> None:
    p = check.profile["trainer"]
    workdir = check.scratch / "trainer_run"
    shutil.rmtree(workdir, ignore_errors=True)
    data_dir = Path(check.args.data_dir or check.scratch / "tfds").absolute()
    until = time.perf_counter() + timeout_s
    flags = [
        f"--config={REPO / 'configs' / 'fashion_mnist_resnet.py'}",
        f"--workdir={workdir}",
        f"--config.batch_size={p['batch']}",
        f"--config.dtype={p['dtype']}",
        f"--config.log_every_steps={p['log_every']}",
        "--config.eval_every_steps=0",
        f"--config.checkpoint_every_steps={p['steps'] // 2}",
        f"--config.data.dir={data_dir}",
        f"--config.data.val_examples={p['val_examples']}",
        f"--config.data.test_split={p['test_split']}",
        f"--config.compilation_cache_dir={check.scratch / 'xla_cache'}",
    ]
    if check.args.manual_dir:
        flags.append(f"--config.data.manual_dir={Path(check.args.manual_dir).absolute()}")
    train = [sys.executable, "-m", "resjax.train", *flags]
    env = check.env()
    t0 = time.perf_counter()
    first = check.run([*train, f"--config.total_steps={p['steps']}"], until - t0, env=env)
    first_s = time.perf_counter() - t0
    first.check_returncode()
    checkpoints = sorted(
        int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit()
    )
    metrics_first = [r for r in read_jsonl(workdir / "metrics.jsonl") if "train_loss" in r]

    bench_env = dict(env, TFDS_DATA_DIR=str(data_dir))
    bare = resjax_bench(
        check,
        [
            "--model=resnet20",
            f"--batch={p['batch']}",
            f"--dtype={p['dtype']}",
            "--real-data",
            "--dataset=fashion_mnist",
            f"--steps={p['bench_steps']}",
            "--windows=3",
        ],
        until - time.perf_counter(),
        env=bench_env,
    )

    total = p["steps"] + p["more_steps"]
    t0 = time.perf_counter()
    second = check.run([*train, f"--config.total_steps={total}"], until - t0, env=env)
    second_s = time.perf_counter() - t0
    second.check_returncode()
    metrics = [r for r in read_jsonl(workdir / "metrics.jsonl") if "train_loss" in r]
    results = json.loads((workdir / "results.json").read_text())
    resumes = (
        read_jsonl(workdir / "resume_log.jsonl") if (workdir / "resume_log.jsonl").exists() else []
    )
    # The first window of a run includes compiling the step; the rest is the steady loop.
    steady = [r["images_per_s"] for r in metrics_first[1:]] or [metrics_first[-1]["images_per_s"]]
    loop = statistics.median(steady)
    check.write(
        {
            "stage": "trainer",
            "model": results.get("model"),
            "dataset": results.get("dataset"),
            "batch": p["batch"],
            "dtype": p["dtype"],
            "first_run_steps": p["steps"],
            "total_steps": total,
            "first_run_s": first_s,
            "second_run_s": second_s,
            "checkpoint_steps_after_first_run": checkpoints,
            "resumed_at_step": resumes[0]["resumed_at_step"] if resumes else None,
            "resumed": bool(resumes) and resumes[0]["resumed_at_step"] == p["steps"],
            "final_step": results.get("steps"),
            "first_loss": metrics[0]["train_loss"],
            "last_loss": metrics[-1]["train_loss"],
            "loss_fell": metrics[-1]["train_loss"] < metrics[0]["train_loss"],
            "test_error": results.get("test_error"),
            "loop_img_per_s": loop,
            "loop_img_per_s_windows": steady,
            "bare_step_img_per_s": bare["images_per_s"],
            "loop_over_step": loop / bare["images_per_s"],
            "pipeline_step_img_per_s": bare.get("real_images_per_s"),
            "pipeline_over_synthetic": bare.get("real_over_synthetic"),
            "device_kind": bare["device_kind"],
        }
    )


_MEDIAN = re.compile(r"^\s*median\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)", re.M)
_MAIN_MS = re.compile(r"main process: ([\d.]+) ms CPU per batch")


def stage_jpeg(check: Check, timeout_s: float) -> None:
    p = check.profile["jpeg"]
    cmd = [
        sys.executable,
        "-m",
        "resjax.data.bench",
        "--dataset=jpegs",
        f"--data_dir={check.scratch / 'jpegs'}",
        f"--images={p['images']}",
        f"--batch={p['batch']}",
        f"--steps={p['steps']}",
        f"--rounds={p['rounds']}",
        f"--cores={os.cpu_count()}",
    ]
    if p["workers"]:
        cmd.append(f"--workers={p['workers']}")
    out = check.run(cmd, timeout_s, capture=True)
    out.check_returncode()
    median, main_ms = _MEDIAN.search(out.stdout), _MAIN_MS.search(out.stdout)
    if not median or not main_ms:
        raise RuntimeError("resjax.data.bench printed no 'median' or 'main process' line")
    check.write(
        {
            "stage": "jpeg",
            "batch": p["batch"],
            "images": p["images"],
            "cpus": os.cpu_count(),
            "decode_limit_img_per_s": float(median.group(1).replace(",", "")),
            "pipeline_img_per_s": float(median.group(2).replace(",", "")),
            "pipeline_over_limit": float(median.group(3)),
            "main_process_ms_per_batch": float(main_ms.group(1)),
        }
    )


STAGES = {
    "env": stage_env,
    "resnet50": side_by_side("resnet50"),
    "trainer": stage_trainer,
    "cifar20": side_by_side("cifar20"),
    "jpeg": stage_jpeg,
    "resnet1202": stage_resnet1202,
    "cifar56": side_by_side("cifar56"),
}


def summary(check: Check) -> dict[str, Any]:
    """The table and the goals, from the rows written so far."""
    table = []
    for stage in ("resnet50", "cifar20", "cifar56"):
        for r in check.rows(stage):
            table.append(
                {
                    k: r.get(k)
                    for k in (
                        "stage",
                        "model",
                        "batch",
                        "dtype",
                        "jax_img_per_s",
                        "torch_img_per_s",
                        "ratio",
                        "jax_mfu",
                        "torch_mfu",
                        "jax_epoch_s",
                        "torch_epoch_s",
                        "jax_compile_s",
                        "torch_compile_s",
                        "jax_device_peak_gb",
                        "torch_device_peak_gb",
                    )
                }
            )
    out: dict[str, Any] = {"stage": "summary", "tiny": check.args.tiny, "table": table}
    r50 = [r for r in check.rows("resnet50") if r.get("jax_img_per_s")]
    if r50:
        best = max(r50, key=lambda r: r["jax_img_per_s"])
        out["resnet50_best_batch"] = best["batch"]
        out["resnet50_img_per_s"] = best["jax_img_per_s"]
        out["resnet50_ratio"] = best.get("ratio")
        if best.get("ratio") is not None:
            out["goal_ratio_met"] = best["ratio"] >= GOAL_RATIO
        anchor = next((v for k, v in MLPERF_IMG_PER_S.items() if k in best["device_kind"]), None)
        if anchor:
            out["resnet50_of_mlperf"] = best["jax_img_per_s"] / anchor
            out["goal_mlperf_met"] = out["resnet50_of_mlperf"] >= GOAL_OF_MLPERF
    for r in check.rows("trainer"):
        out["trainer"] = {
            k: r[k]
            for k in (
                "loss_fell",
                "resumed",
                "checkpoint_steps_after_first_run",
                "loop_over_step",
                "loop_img_per_s",
                "bare_step_img_per_s",
                "pipeline_over_synthetic",
            )
        }
    for r in check.rows("jpeg"):
        out["jpeg_pipeline_img_per_s"] = r["pipeline_img_per_s"]
        if r50:
            out["jpeg_over_resnet50_step"] = r["pipeline_img_per_s"] / out["resnet50_img_per_s"]
    status = check.rows("status")
    out["stages_ok"] = [s["name"] for s in status if s.get("ok")]
    out["stages_failed"] = [s["name"] for s in status if not s.get("ok") and not s.get("skipped")]
    out["stages_skipped"] = [s["name"] for s in status if s.get("skipped")]
    out["minutes"] = (time.perf_counter() - check.start) / 60
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="every stage shrunk, for a CPU (minutes)")
    p.add_argument(
        "--out",
        default=os.environ.get("OUT", "/tmp/resjax_gpu_check"),
        help="where gpu_check.jsonl goes (default: $OUT)",
    )
    p.add_argument(
        "--scratch",
        default="/tmp/resjax_gpu_check_work",
        help="the trainer's workdir, the XLA cache, generated JPEGs",
    )
    p.add_argument("--data_dir", help="TFDS data dir holding (or to hold) Fashion-MNIST")
    p.add_argument("--manual_dir", help="Fashion-MNIST's four upstream .gz archives")
    p.add_argument("--stages", default=",".join(ORDER), help=f"any of {','.join(ORDER)}")
    p.add_argument(
        "--deadline_s",
        type=float,
        default=0,
        help="stop starting stages after this (default: gpu 420, tiny 900)",
    )
    args = p.parse_args(argv)
    args.tiny = args.tiny or os.environ.get("GPU_CHECK_TINY") == "1"
    unknown = set(args.stages.split(",")) - set(ORDER)
    if unknown:
        p.error(f"unknown stages {sorted(unknown)}; choose from {', '.join(ORDER)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check = Check(args)
    print(
        f"gpu_check: {'tiny' if args.tiny else 'gpu'} profile, stages {args.stages}, "
        f"deadline {check.deadline_s:.0f} s, writing {check.jsonl}",
        flush=True,
    )
    wanted = set(args.stages.split(","))
    for name in (n for n in ORDER if n in wanted):
        params = check.profile.get(name, {"budget_s": 60})
        if params is None:
            continue  # not in this profile
        budget, left = params.get("budget_s", 60), check.left_s()
        status: dict[str, Any] = {"stage": "status", "name": name}
        if left < 30:
            check.write({**status, "ok": False, "skipped": f"deadline ({left:.0f} s left)"})
            print(f"--- {name}: skipped, {left:.0f} s left", flush=True)
            continue
        print(f"--- {name} (limit {min(budget, left):.0f} s)", flush=True)
        t0 = time.perf_counter()
        try:
            STAGES[name](check, min(budget, left))
            status["ok"] = True
        except subprocess.TimeoutExpired as e:
            status.update(ok=False, error=f"timed out after {e.timeout:.0f} s")
        except Exception as e:  # noqa: BLE001  (recorded; the next stage runs)
            status.update(ok=False, error=f"{type(e).__name__}: {e}")
        status["seconds"] = time.perf_counter() - t0
        check.write(status)
        print(
            f"--- {name}: {'ok' if status['ok'] else status['error']} ({status['seconds']:.0f} s)",
            flush=True,
        )
    result = summary(check)
    check.write(result)
    print(json.dumps(result, indent=1), flush=True)
    return 0 if not result["stages_failed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
