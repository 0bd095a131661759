"""`python -m resjax.bench`: the numbers it reports exist and are sane (not how fast they are)."""

import json

import pytest

from resjax import bench


def _run(capsys, *flags, model="resnet8"):
    bench.main([f"--model={model}", "--batch=8", "--devices=1", "--json", *flags])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_reports_throughput_flops_and_memory(capsys):
    r = _run(capsys, "--steps=2", "--windows=2", "--warmup=1")
    assert r["images_per_s"] > 0 and len(r["window_images_per_s"]) == 2
    assert r["step_ms"] == pytest.approx(1e3 * 8 / r["images_per_s"])
    assert r["flops_per_step"] > 1e8  # ResNet-8 fwd+bwd on 8 images of 32x32
    assert 0 < r["step_temp_gb"] <= r["step_total_gb"] < 1
    assert r["compile_s"] > 0 and r["cpu_convs"] is None  # auto
    assert "mfu" not in r  # no known peak for the CPU


def test_bench_compile_only_reports_remat_memory(capsys):
    # Under scan, remat keeps one block's activations per stage instead of every block's.
    # (Unrolled, XLA:CPU merges the recomputation back: no saving; see the README.)
    scanned = _run(capsys, "--compile-only", "--scan", model="resnet32")
    remat = _run(capsys, "--compile-only", "--scan", "--remat", model="resnet32")
    assert "images_per_s" not in scanned
    assert remat["step_temp_gb"] < 0.7 * scanned["step_temp_gb"]


def test_bench_text_output_names_the_xla_flags(capsys):
    bench.main(["--model=resnet8", "--batch=8", "--devices=1", "--compile-only"])
    out = capsys.readouterr().out
    assert "compile" in out and "XLA_FLAGS=" in out and "step needs" in out


def test_bench_unknown_model_is_one_line_error(capsys):
    assert bench.main(["--model=resnet21", "--compile-only"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: CIFAR ResNet depth must be 6n+2") and err.count("\n") == 1
