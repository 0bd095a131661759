"""resjax.sweeps.report and `python -m resjax.report`: tables and plots from a hand-made sweep
workdir (no training)."""

import csv
import json
import sys

import pytest
from processes import command, run

from resjax import curves, workdir
from resjax.sweeps import report

PNG = b"\x89PNG\r\n\x1a\n"


def _point(workdir, name, *, depth, plain, seed, train_error, test_error, curve, finished=True):
    d = workdir / name
    d.mkdir(parents=True)
    model = f"{'plain' if plain else 'resnet'}{depth}"
    config = {"seed": seed, "model": {"name": model, "overrides": {"ordering": "post"}}}
    config.update(log_every_steps=10, batch_size=32, data={"augment": "none"})
    (d / "config.json").write_text(json.dumps(config))
    rows = [{"step": s, "train_loss": 2 * e, "train_error": e} for s, e in curve]
    rows.append({"step": curve[-1][0], "val_error": test_error, "test_error": test_error})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        results = {
            "model": model, "residual": not plain, "depth": depth, "params": 1000 * depth,
            "steps": curve[-1][0], "seed": seed, "wall_time_s": 10.0, "train_loss": 2 * train_error,
            "train_error": train_error, "val_error": test_error, "test_error": test_error,
        }  # fmt: skip
        (d / "results.json").write_text(json.dumps(results))


@pytest.fixture
def sweep_dir(tmp_path):
    """plain 8 (2 seeds) and 56, residual 8 and 56 finished; residual 20 failed; plain 20 never
    started; plain_d8_s1 was rerun (its step-20 row appears twice, the last one counts)."""
    curve = lambda start, end: [(10, start), (20, (start + end) / 2), (30, end)]  # noqa: E731
    _point(tmp_path, "plain_d8_s0", depth=8, plain=1, seed=0, train_error=0.20, test_error=0.22,
           curve=curve(0.5, 0.20))  # fmt: skip
    _point(tmp_path, "plain_d8_s1", depth=8, plain=1, seed=1, train_error=0.24, test_error=0.26,
           curve=curve(0.5, 0.24))  # fmt: skip
    with (tmp_path / "plain_d8_s1" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 20, "train_error": 0.33}) + "\n")
    _point(tmp_path, "plain_d56_s0", depth=56, plain=1, seed=0, train_error=0.45,
           test_error=0.46, curve=curve(0.8, 0.45))  # fmt: skip
    _point(tmp_path, "resnet_d8_s0", depth=8, plain=0, seed=0, train_error=0.21,
           test_error=0.22, curve=curve(0.5, 0.21))  # fmt: skip
    _point(tmp_path, "resnet_d56_s0", depth=56, plain=0, seed=0, train_error=0.19,
           test_error=0.20, curve=curve(0.6, 0.19))  # fmt: skip
    _point(tmp_path, "resnet_d20_s0", depth=20, plain=0, seed=0, train_error=0.3,
           test_error=0.3, curve=curve(0.6, 0.3), finished=False)  # fmt: skip
    names = ["plain_d8_s0", "plain_d8_s1", "plain_d20_s0", "plain_d56_s0", "resnet_d8_s0",
             "resnet_d20_s0", "resnet_d56_s0"]  # fmt: skip
    status = {n: {"status": "finished", "wall_time_s": 12.0} for n in names}
    status["plain_d20_s0"] = {"status": "pending", "depth": 20}
    status["resnet_d20_s0"] = {"status": "failed", "error": "RuntimeError: boom"}
    (tmp_path / "sweep_status.json").write_text(json.dumps({"points": status}))
    return tmp_path


def test_report_tables_and_plots(sweep_dir):
    paths = report.write_report(sweep_dir)
    for name in report.PLOTS:
        assert (sweep_dir / name).read_bytes()[:8] == PNG
    md = paths["markdown"].read_text()
    assert "5 of 7 points finished" in md
    assert "| plain_d8 | plain | 8 | 8,000 | 2/2 |" in md  # mean ± std over the two seeds
    assert "22.00 ± 2.83" in md  # train error: mean 22%, sample std 2.83 points
    assert "failed: RuntimeError: boom" in md and "| plain_d20_s0 | pending |" in md
    plain, residual = md.split("**residual**")
    assert "**plain**: 22.00 ± 2.83% (d8) → 45.00% (d56); rises with depth at every step" in plain
    assert "deepest − shallowest +23.00 points, 8.1× the larger seed std" in plain
    assert ": 21.00% (d8) → 19.00% (d56); falls with depth at every step" in residual
    assert "deepest − shallowest -2.00 points\n" in residual  # one seed each: no std to compare
    assert "0:00:12" in md  # the sweep's wall time of a point wins over results.json's
    assert "last logging window (10 steps, 320 examples)" in md and "without augmentation" in md

    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["point"] for r in rows][:3] == ["plain_d8_s0", "plain_d8_s1", "plain_d20_s0"]
    assert rows[2]["status"] == "pending" and rows[2]["train_error"] == ""
    assert float(rows[0]["test_error"]) == 0.22 and rows[0]["family"] == "plain"
    summary = {r["setting"]: r for r in csv.DictReader(paths["summary_csv"].open())}
    assert float(summary["plain_d8"]["train_error"]) == pytest.approx(0.22)
    assert summary["resnet_d56"]["train_error_std"] == ""  # one seed: no std


def test_the_final_weights_train_error_is_compared_where_every_point_has_it(sweep_dir):
    finished = [d for d in sweep_dir.iterdir() if (d / "results.json").exists()]
    for d in finished:  # the final weights fit better than the window's mean: 5 points less
        results = json.loads((d / "results.json").read_text())
        results["train_eval_error"] = results["train_error"] - 0.05
        (d / "results.json").write_text(json.dumps(results))
    md = report.markdown(report.load_points(sweep_dir))
    assert "**plain**: 17.00 ± 2.83% (d8) → 40.00% (d56); rises" in md
    assert "| 22.00 ± 2.83 | 17.00 ± 2.83 |" in md  # both train errors in the seed table
    assert "Final-weights train error: the final weights on every training example" in md
    one = sweep_dir / "resnet_d56_s0" / "results.json"
    one.write_text(json.dumps({**json.loads(one.read_text()), "train_eval_error": None}))
    assert "**plain**: 22.00" in report.markdown(report.load_points(sweep_dir))  # not all: window


def test_the_report_is_titled_by_its_sweep(sweep_dir):
    assert report.markdown(report.load_points(sweep_dir)).startswith("# Sweep\n")
    assert report.sweep_title(sweep_dir) == f"Sweep: {sweep_dir.name}"  # no sweep recorded
    status = json.loads((sweep_dir / "sweep_status.json").read_text())
    status["sweep"] = "configs/depth_sweep.py:preact"
    (sweep_dir / "sweep_status.json").write_text(json.dumps(status))
    first = report.write_report(sweep_dir)["markdown"].read_text().splitlines()[0]
    assert first == f"# Sweep configs/depth_sweep.py:preact ({sweep_dir.name})"


def test_the_report_places_a_run_against_the_committed_reference(sweep_dir, tmp_path_factory):
    reference = tmp_path_factory.mktemp("reference") / "report_summary.csv"
    reference.write_text(
        "setting,seeds,steps,train_error,train_error_std,test_error,test_error_std\n"
        "plain_d8,3,30,0.21,0.02,0.25,0.01\n"
        "resnet_d56,3,30,0.18,0.005,0.21,\n"
        "resnet_d8,3,999,0.2,0.01,0.2,0.01\n"  # another length: not the same points
    )
    status = json.loads((sweep_dir / "sweep_status.json").read_text())
    (sweep_dir / "sweep_status.json").write_text(
        json.dumps({**status, "reference": str(reference)})
    )
    md = report.write_report(sweep_dir)["markdown"].read_text()
    against = md.split("## Against the reference")[1].split("##")[0]
    assert (
        f"3 seeds, mean ± std ({reference})" in against
        and "within about the seed spread" in against
    )
    assert "| plain_d8 | 2 | 22.00 | 21.00 ± 2.00 | +0.5 | 24.00 | 25.00 ± 1.00 | -1.0 |" in against
    assert "| resnet_d56 | 1 | 19.00 | 18.00 ± 0.50 | +2.0 | 20.00 | 21.00 | – |" in against
    assert "resnet_d8 " not in against and "plain_d56" not in against


def test_rerun_rows_and_unfinished_points(sweep_dir):
    points = {p.point: p for p in report.load_points(sweep_dir)}
    assert dict(points["plain_d8_s1"].curve)[20] == 0.33  # the rerun's row wins
    failed = points["resnet_d20_s0"]
    assert failed.status == "failed" and failed.train_error == 0.3  # its last logged window
    assert points["plain_d20_s0"].status == "pending" and points["plain_d20_s0"].depth == 20


def test_report_without_status_file_and_family_labels(tmp_path):
    _point(tmp_path, "a", depth=20, plain=0, seed=0, train_error=0.1, test_error=0.1,
           curve=[(5, 0.3), (10, 0.1)])  # fmt: skip
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    config["model"]["overrides"].update(ordering="pre", shortcut="B")
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    (tmp_path / "not_a_point").mkdir()
    points = report.load_points(tmp_path)
    assert [p.point for p in points] == ["a"] and points[0].family == "residual"
    assert "Every network: ordering pre, shortcut B." in report.markdown(points)
    # A family is labelled by the block fields in which the sweep's points differ.
    _point(tmp_path, "b", depth=20, plain=0, seed=0, train_error=0.1, test_error=0.1,
           curve=[(5, 0.3), (10, 0.1)])  # fmt: skip
    _point(tmp_path, "c", depth=20, plain=1, seed=0, train_error=0.1, test_error=0.1,
           curve=[(5, 0.3), (10, 0.1)])  # fmt: skip
    families = {p.point: p.family for p in report.load_points(tmp_path)}
    assert families == {"a": "residual (pre)", "b": "residual (post)", "c": "plain (post)"}
    assert "Every network: shortcut B." in report.markdown(report.load_points(tmp_path))
    with pytest.raises(FileNotFoundError, match="holds no sweep points"):
        report.write_report(tmp_path / "not_a_point")


def test_cli_and_import_without_jax(sweep_dir, tmp_path_factory):
    code = (
        "import sys, resjax.report, resjax.sweep, resjax.sweeps.report; "
        "assert 'jax' not in sys.modules, 'jax imported'"
    )
    imported = run([sys.executable, "-c", code])
    assert imported.returncode == 0, imported.stderr
    result = run(command("report", sweep_dir))
    assert result.returncode == 0, result.stderr
    assert "Training error vs depth" in result.stdout and (sweep_dir / "report.md").exists()
    # One run's directory: its learning curves.
    run_dir = sweep_dir / "plain_d8_s0"
    one = run(command("report", run_dir))
    assert one.returncode == 0, one.stderr
    assert "# Learning curves: plain_d8_s0" in one.stdout and "- test error at step" in one.stdout
    assert (run_dir / curves.PLOT).stat().st_size > 10_000
    empty = run(command("report", tmp_path_factory.mktemp("empty")))
    assert empty.returncode == 1 and "holds no sweep points" in empty.stderr


def test_learning_curves_keep_the_last_row_of_a_step_and_report_the_last_evaluation(tmp_path):
    rows = [
        {"step": 10, "train_loss": 2.0, "train_error": 0.8, "epoch": 0.5},
        {"step": 20, "train_loss": 1.5, "train_error": 0.6, "epoch": 1.0},
        {"step": 20, "val_error": 0.5, "val_loss": 1.4, "test_error": 0.3, "test_loss": 1.0},
        {"step": 30, "train_loss": 1.2, "train_error": 0.5, "epoch": 1.5},  # killed here
        {"step": 30, "train_loss": 1.1, "train_error": 0.4, "epoch": 1.5},  # the resumed run
        {"step": 40, "val_error": 0.45, "test_error": 0.35, "test_loss": 1.1},
        {"resumed_at_step": 20},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{trunc")
    got = curves.curves(workdir.read_rows(tmp_path / "metrics.jsonl"))
    assert got["error"]["train"] == [(10, 0.8), (20, 0.6), (30, 0.4)]
    assert got["error"]["test"] == [(20, 0.3), (40, 0.35)]  # the last, not the best
    assert got["loss"]["val"] == [(20, 1.4)]
    assert curves.steps_per_epoch(rows) == 20
    text = curves.summary(tmp_path)
    assert "- test error at step 40: 35.00%" in text and "Not finished" in text
    assert curves.plot(tmp_path).stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match="holds no metrics.jsonl"):
        curves.summary(tmp_path / "nothing")


def test_report_gains_a_diagnostics_section_from_logged_rows(fashion_mnist_dir, tmp_path):
    from conftest import tiny_run

    from resjax.training import train_and_evaluate

    for name, residual in (("plain_d8_s0", False), ("resnet_d8_s0", True)):
        config = tiny_run(
            fashion_mnist_dir,
            diagnostics_every_steps=4,
            eval_every_steps=0,
            eval_batch_size=64,
            **{
                "model.overrides.widths": (4, 8, 8),
                "data.test_split": "test[:128]",
                "model.overrides.residual": residual,
            },
        ).config()
        train_and_evaluate(config, tmp_path / name)
    paths = report.write_report(tmp_path)
    text = paths["markdown"].read_text()
    assert "## Gradient flow at the end of training" in text
    assert "| plain-8 | 4 |" in text and "| ResNet-8 | 4 |" in text
    assert paths["diagnostics"].stat().st_size > 10_000
