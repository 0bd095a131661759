"""benchmarks/gpu_check.sh in its tiny mode, end to end on the CPU: every stage of the GPU check
runs (shrunk) and writes the JSON lines the GPU run will, so the script cannot rot while no GPU
is lent. Its numbers are a smoke test, not measurements. Marked `gpu_check`: a command of its own
(`python -m pytest -m gpu_check -n 0`), which CI runs after the main suite."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu_check

REPO = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None


def positive(row, *keys):
    for key in keys:
        value = row.get(key)
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, row)


def test_tiny_mode_runs_every_stage_and_writes_its_lines(tmp_path, fashion_mnist_dir):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_TINY="1")
    proc = subprocess.run(
        [
            "bash",
            "benchmarks/gpu_check.sh",
            f"--out={out}",
            f"--scratch={tmp_path / 'work'}",
            f"--data_dir={fashion_mnist_dir}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    by_stage = {}
    for row in rows:
        by_stage.setdefault(row["stage"], []).append(row)
    assert "--- trainer" in (out / "gpu_check.log").read_text()

    status = {r["name"]: r for r in by_stage["status"]}
    assert list(status) == ["env", "resnet50", "trainer", "cifar20", "jpeg", "resnet1202"]
    assert all(s["ok"] for s in status.values()), status

    assert by_stage["env"][0]["tiny"] is True
    assert by_stage["env"][0]["device_kind"] == "cpu"

    # resjax vs PyTorch, alternating windows, at two batch sizes (ResNet-50's code path)
    side = by_stage["resnet50"] + by_stage["cifar20"]
    assert [(r["model"], r["batch"], r["dtype"]) for r in side] == [
        ("resnet18", 2, "bfloat16"),
        ("resnet18", 4, "bfloat16"),
        ("resnet8", 8, "bfloat16"),
        ("resnet8", 8, "float32"),
    ]
    for r in side:
        assert not [k for k in r if k.endswith("_error")], r
        positive(
            r,
            "jax_img_per_s",
            "jax_compile_s",
            "flops_per_step",
            "params",
            "jax_step_total_gb",
            "host_peak_rss_gb",
        )
        assert len(r["jax_img_per_s_windows"]) == r["rounds"] == 2
        if HAS_TORCH:
            positive(r, "torch_img_per_s", "torch_compile_s", "ratio")
            assert r["params_match"], r  # the same network in both frameworks
            assert len(r["ratios"]) == 2
        else:
            assert "torch_img_per_s" not in r
    for r in by_stage["cifar20"]:
        positive(r, "jax_epoch_s", *(("torch_epoch_s",) if HAS_TORCH else ()))

    (trainer,) = by_stage["trainer"]
    assert trainer["loss_fell"], trainer
    assert trainer["resumed"] and trainer["resumed_at_step"] == 20, trainer
    assert trainer["final_step"] == trainer["total_steps"] == 30
    assert trainer["checkpoint_steps_after_first_run"][-1] == 20
    assert trainer["dataset"] == "fashion_mnist"
    positive(
        trainer,
        "loop_img_per_s",
        "bare_step_img_per_s",
        "loop_over_step",
        "pipeline_step_img_per_s",
        "first_loss",
        "test_error",
    )

    (jpeg,) = by_stage["jpeg"]
    positive(
        jpeg,
        "decode_limit_img_per_s",
        "pipeline_img_per_s",
        "pipeline_over_limit",
        "main_process_ms_per_batch",
    )

    (deep,) = by_stage["resnet1202"]
    assert deep["scan"] and deep["remat"]
    positive(deep, "images_per_s", "compile_s", "step_total_gb")

    summary = rows[-1]
    assert summary["stage"] == "summary" and summary["tiny"] is True
    assert summary["stages_failed"] == [] and summary["stages_skipped"] == []
    assert len(summary["table"]) == 4
    assert summary["resnet50_best_batch"] in (2, 4)
    assert summary["trainer"]["resumed"] and summary["trainer"]["loss_fell"]
    positive(summary, "jpeg_over_resnet50_step", "minutes")
