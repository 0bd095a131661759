"""resjax.trainability: answers known in advance. Quadratics with a chosen Hessian, a network
small enough for a dense `jax.hessian`, filter norms, the landscape's origin against the run's
own evaluation step, device-parallel against one point at a time, resumed against whole, a
linear model's gradient correlation."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from resjax.loss import cross_entropy
from resjax.models import get_model
from resjax.trainability import curvature, directions, gradient_correlation, landscape

# --- curvature on a quadratic: H = A exactly ---


def _spd_with_spectrum(n: int, eigenvalues: np.ndarray, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return (q * eigenvalues) @ q.T


def _quadratic_hvp(a: np.ndarray):
    """v -> Hv of ½ θᵀAθ by forward-over-reverse, as a network's: H = A."""
    a = jnp.asarray(a, jnp.float32)

    def loss(theta):
        return 0.5 * theta @ a @ theta

    theta0 = jnp.ones(a.shape[0], jnp.float32)
    return jax.jit(lambda v: jax.jvp(jax.grad(loss), (theta0,), (v,))[1])


def test_lanczos_top_eigenvalues_of_a_known_matrix():
    n = 200
    spectrum = np.concatenate([[50.0, 40.0, 30.0, 25.0], np.linspace(-2.0, 10.0, n - 4)])
    a = _spd_with_spectrum(n, spectrum)
    top = curvature.top_eigenvalues(_quadratic_hvp(a), n, k=4, steps=40, key=jax.random.key(0))
    # Well-separated extreme eigenvalues converge to float32 rounding within 40 steps:
    # relative 1e-4 leaves 100x room above float32's 1e-6 per product.
    np.testing.assert_allclose(top["eigenvalues"], [50, 40, 30, 25], rtol=1e-4)
    assert max(top["residuals"]) < 1e-2  # and the bound Lanczos reports says so


def test_lanczos_with_reorthogonalisation_has_no_ghost_eigenvalues():
    # n steps on an n x n matrix give all of its eigenvalues, each once: without full
    # reorthogonalisation, converged ones come back as copies and others are missed.
    n = 60
    spectrum = np.geomspace(1e-2, 1e2, n)
    run = curvature.lanczos(
        _quadratic_hvp(_spd_with_spectrum(n, spectrum, 1)),
        jax.random.normal(jax.random.key(1), (n,)),
        n,
    )
    np.testing.assert_allclose(np.sort(run.ritz_values), spectrum, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(run.ritz_weights.sum(), 1.0, rtol=1e-6)


def test_hutchinson_trace_of_a_known_matrix():
    n, probes = 100, 400
    a = _spd_with_spectrum(n, np.linspace(0.0, 2.0, n), 2)
    est = curvature.hutchinson_trace(_quadratic_hvp(a), n, probes, jax.random.key(2))
    # Rademacher probes: variance per probe 2 Σ_{i≠j} A_ij². Allow 4 standard errors.
    sd = np.sqrt(2 * (np.sum(a**2) - np.sum(np.diag(a) ** 2)) / probes)
    assert abs(est["trace"] - np.trace(a)) < 4 * sd
    assert est["probes"] == probes and est["stderr"] > 0
    # A diagonal matrix is estimated exactly by every Rademacher probe.
    diag = np.diag(np.linspace(1.0, 3.0, 10))
    exact = curvature.hutchinson_trace(_quadratic_hvp(diag), 10, 3, jax.random.key(3))
    np.testing.assert_allclose(exact["trace"], np.trace(diag), rtol=1e-6)


def test_slq_density_and_trace_of_a_known_matrix():
    n = 120
    spectrum = np.concatenate([np.full(60, 1.0), np.full(60, 5.0)])  # two point masses
    a = _spd_with_spectrum(n, spectrum, 3)
    slq = curvature.spectral_density(
        _quadratic_hvp(a), n, steps=20, probes=8, key=jax.random.key(4)
    )
    # Two distinct eigenvalues: the Krylov space is 2-dimensional, so Lanczos stops early
    # and its quadrature is exact: nodes 1 and 5, weights the start vector's split (~1/2).
    for nodes in slq["nodes"]:
        np.testing.assert_allclose(sorted(nodes), [1.0, 5.0], rtol=1e-4)
    # Each probe's trace estimate n·Σwθ is a Gaussian-probe Hutchinson estimate: mean of 8
    # within 4 standard errors (weights on 5 are Beta(30, 30)-like: sd ~ 4n/sqrt(4·61)/√8).
    assert abs(slq["trace"] - np.trace(a)) < 4 * 4 * n / np.sqrt(4 * 61) / np.sqrt(8)
    grid = np.linspace(0, 6, 601)
    density, sigma = curvature.smooth_density(slq["nodes"], slq["weights"], grid)
    np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, rtol=1e-3)
    assert sigma > 0 and grid[np.argmax(density)] in (1.0, 5.0)


# --- curvature of a real (tiny) network against the dense Hessian ---


@functools.cache
def _tiny_net_and_batch():
    model = get_model("resnet8", widths=(2, 4, 4), stem_width=2, num_classes=3)  # 700 params
    images = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
    # Jitted: an eager init dispatches op by op, seconds even for this net.
    variables = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(images)
    # Running statistics that are not the initial (0, 1), so evaluation-mode BN does something.
    variables = {
        "params": variables["params"],
        "batch_stats": jax.tree.map(
            lambda x: x + 0.1 * jax.random.uniform(jax.random.key(2), x.shape),
            variables["batch_stats"],
        ),
    }
    batch = {
        "image": images,
        "label": jax.random.randint(jax.random.key(3), (16,), 0, 3),
        "mask": jnp.ones(16).at[-3:].set(0.0),  # padding rows must not count
    }
    return model, variables, batch


def test_network_curvature_matches_the_dense_hessian():
    model, variables, batch = _tiny_net_and_batch()
    flat, unravel = ravel_pytree(variables["params"])

    def mean_loss(p):
        out = model.apply(
            {"params": unravel(p), "batch_stats": variables["batch_stats"]},
            batch["image"],
            train=False,
        )
        return jnp.sum(cross_entropy(out, batch["label"]) * batch["mask"]) / batch["mask"].sum()

    dense = np.asarray(jax.jit(jax.hessian(mean_loss))(flat), np.float64)  # eagerly: op by op
    exact = np.linalg.eigvalsh((dense + dense.T) / 2)
    # The same examples in two batches: the matvec sums batches on the host.
    halves = [jax.tree.map(lambda x, s=s: x[s], batch) for s in (slice(0, 8), slice(8, 16))]
    matvec, n = curvature.network_hvp(
        model.apply, variables["params"], variables["batch_stats"], halves
    )
    assert n == flat.size
    v = jax.random.normal(jax.random.key(5), (n,))
    np.testing.assert_allclose(matvec(v), dense @ np.asarray(v), rtol=1e-3, atol=1e-5)
    top = curvature.top_eigenvalues(matvec, n, k=3, steps=60, key=jax.random.key(6))
    # float32 HVPs of a ~700-parameter net: top eigenvalues to 0.5% relative (float32 rounding
    # in the matvec is ~1e-6 relative; Lanczos' bound, reported, is checked to be small too).
    np.testing.assert_allclose(top["eigenvalues"], exact[::-1][:3], rtol=5e-3)
    trace = curvature.hutchinson_trace(matvec, n, 200, jax.random.key(7))
    offdiag = np.sum(dense**2) - np.sum(np.diag(dense) ** 2)
    assert abs(trace["trace"] - np.trace(dense)) < 4 * np.sqrt(2 * offdiag / 200)


# --- directions ---


def test_filter_normalised_directions():
    model, variables, _ = _tiny_net_and_batch()
    w = variables["params"]
    (d,) = directions.random_directions(jax.random.key(0), w, 1)
    norms_w, norms_d = directions.filter_norms(w), directions.filter_norms(d)
    kernels = [x for x in jax.tree.leaves(w) if x.ndim >= 2]  # filter_norms: None for the rest
    assert len(kernels) == len(jax.tree.leaves(norms_w)) == len(jax.tree.leaves(norms_d)) > 5
    for leaf, nd, nw in zip(
        kernels, jax.tree.leaves(norms_d), jax.tree.leaves(norms_w), strict=False
    ):
        assert nd.shape == (leaf.shape[-1],)  # one norm per output channel: the last axis
        np.testing.assert_allclose(nd, nw, rtol=1e-5)
    for leaf_d, leaf_w in zip(jax.tree.leaves(d), jax.tree.leaves(w), strict=False):
        if leaf_w.ndim <= 1:  # biases and BN γ/β: no direction by default
            assert not np.any(leaf_d)
        else:
            assert not np.allclose(leaf_d, leaf_w)  # random, not the weights themselves
    (with_1d,) = directions.random_directions(jax.random.key(0), w, 1, include_1d=True)
    for leaf_d, leaf_w in zip(jax.tree.leaves(with_1d), jax.tree.leaves(w), strict=False):
        if leaf_w.ndim <= 1:
            np.testing.assert_array_equal(leaf_d, leaf_w)
    # A conv kernel (HWIO): filter j is kernel[..., j]; check one by hand.
    k = np.arange(2 * 2 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 4) + 1
    dk = directions.filter_normalize(np.ones_like(k), k)
    for j in range(4):
        np.testing.assert_allclose(np.linalg.norm(dk[..., j]), np.linalg.norm(k[..., j]), rtol=1e-6)
        np.testing.assert_allclose(dk[..., j], dk[0, 0, 0, j])  # a direction of ones, rescaled


# --- gradient correlation ---


def test_linear_model_gradient_correlation_is_one():
    w = jax.random.normal(jax.random.key(0), (5, 6, 6, 1))  # logits = <w_c, x> + b

    def apply_fn(variables, x, train=False):
        return jnp.einsum("nhwc,khwc->nk", x, variables["w"]) + variables["b"]

    f = gradient_correlation.scalar_fn(apply_fn, {"w": w, "b": jnp.arange(5.0)}, "logit")
    start, end = jnp.zeros((6, 6, 1)), jax.random.normal(jax.random.key(1), (6, 6, 1))
    out = gradient_correlation.along_line(f, start, end, label=2, points=32, max_lag=8)
    np.testing.assert_allclose(out["neighbour_correlation"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(out["neighbour_cosine"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(out["directional"], float(jnp.vdot(w[2], end)), rtol=1e-5)
    assert np.isnan(out["autocorrelation"][1:]).all()  # a constant has no autocorrelation
    images = jax.random.normal(jax.random.key(2), (8, 6, 6, 1))
    pairs = gradient_correlation.nearest_pairs(np.asarray(images))
    corr = gradient_correlation.pair_correlation(f, images, jnp.zeros(8, jnp.int32), pairs)
    np.testing.assert_allclose(corr, 1.0, rtol=1e-6)


def test_correlation_and_autocorrelation_know_their_answers():
    a = np.random.default_rng(0).normal(size=(4, 50))
    np.testing.assert_allclose(gradient_correlation.correlations(a, 3 * a + 1), 1.0)
    np.testing.assert_allclose(gradient_correlation.correlations(a, -a), -1.0)
    alternating = np.array([1.0, -1.0] * 20)
    ac = gradient_correlation.autocorrelation(alternating, 2)
    np.testing.assert_allclose(ac, [1.0, -39 / 40, 38 / 40])
    x = np.array([0.0, 0.1, 1.0, 2.2, 3.5])
    np.testing.assert_array_equal(gradient_correlation.nearest_pairs(x[:, None]), [1, 0, 1, 2, 3])


# --- the landscape of a (tiny) run ---


@pytest.fixture(scope="module")
def weights_file(fashion_mnist_dir, tmp_path_factory):
    """A tiny run's network as a portable weights file, its weights moved away from their
    initial values (so that the init -> final line has somewhere to go) and its BatchNorm
    statistics away from (0, 1)."""
    import optax
    from conftest import tiny_run

    from resjax.config import model_overrides
    from resjax.models import save_params
    from resjax.training.step import create_train_state

    config = tiny_run(fashion_mnist_dir).config()
    overrides = model_overrides(config, 10)
    model = get_model(config.model.name, **overrides)
    state = create_train_state(config, model, optax.identity(), (28, 28, 1))
    key = jax.random.key(7)
    params = jax.tree.map(lambda x: x * 1.2 + 0.01 * jax.random.normal(key, x.shape), state.params)
    stats = jax.tree.map(lambda x: x + 0.2, state.batch_stats)
    path = tmp_path_factory.mktemp("weights") / "tiny.msgpack"
    save_params(
        path,
        {"params": params, "batch_stats": stats},
        model_name=config.model.name,
        model_overrides=overrides,
        config=config,
    )
    return path


@pytest.fixture(scope="module")
def tiny_landscape(weights_file, fashion_mnist_dir):
    from resjax.trainability.runs import load_run, training_examples

    run = load_run(weights_file)
    examples = training_examples(run, 80, 32, str(fashion_mnist_dir))  # 3 batches, last padded
    variables = jax.tree.map(jnp.asarray, run.weights.variables)
    dirs = directions.random_directions(jax.random.key(0), variables["params"], 2)
    return run, examples, {**variables, "directions": dirs}


def _eval_loss(run, examples, variables):
    from resjax.training.step import eval_sums

    step = jax.jit(
        lambda v, b: eval_sums(run.weights.model().apply, v, b, examples.splits.normalize_images)
    )
    sums = [step(variables, b) for b in examples.batches]
    total = {k: sum(float(s[k]) for s in sums) for k in sums[0]}
    return total["loss"] / total["count"], 1 - total["correct"] / total["count"], total["count"]


def _grid(run, examples, operands, mesh, variables_at=landscape.plane, **kw):
    evaluate = landscape.point_evaluator(
        run.weights.model().apply, variables_at, mesh, examples.splits.normalize_images
    )
    axes = kw.pop("axes", [np.linspace(-1, 1, 3, dtype=np.float32)] * 2)
    return landscape.evaluate_grid(
        evaluate,
        landscape.replicate(operands, mesh),
        [landscape.replicate(b, mesh) for b in examples.batches],
        axes,
        {"test": 1},
        devices=mesh.size,
        **kw,
    )


def test_landscape_origin_is_the_runs_evaluation_and_devices_equal_a_loop(tiny_landscape):
    run, examples, operands = tiny_landscape
    assert len(jax.devices()) == 4
    grid = _grid(run, examples, operands, landscape.points_mesh())  # 9 points over 4 devices
    loss, error, count = _eval_loss(run, examples, jax.tree.map(jnp.asarray, run.weights.variables))
    assert count == 80  # the padding rows of the last batch are masked out
    # The origin is the weights themselves, evaluated by the run's own eval step.
    np.testing.assert_allclose(grid["loss"][1, 1], loss, rtol=1e-6)
    np.testing.assert_allclose(grid["error"][1, 1], error, atol=1e-7)
    # Every point, one at a time on one device, is the same number.
    for i, x in enumerate((-1.0, 0.0, 1.0)):
        for j, y in enumerate((-1.0, 0.0, 1.0)):
            variables = landscape.plane(operands, jnp.array([x, y]))
            np.testing.assert_allclose(
                grid["loss"][i, j], _eval_loss(run, examples, variables)[0], rtol=1e-5
            )
    assert grid["loss"][0, 0] != grid["loss"][1, 1]  # the directions do move the weights


def test_interrupted_grid_resumes_to_the_uninterrupted_one(tiny_landscape, tmp_path):
    run, examples, operands = tiny_landscape
    mesh = landscape.points_mesh(jax.devices()[:2])
    whole = _grid(run, examples, operands, mesh)

    class Stop(Exception):
        pass

    def stop_after_two_groups(done, total):
        if done >= 4:
            raise Stop

    path = tmp_path / "grid.npz"
    with pytest.raises(Stop):
        _grid(
            run,
            examples,
            operands,
            mesh,
            path=path,
            save_every_s=0,
            on_progress=stop_after_two_groups,
        )
    partial = landscape.read_grid(path)
    assert np.sum(np.isfinite(partial["loss"])) == 4  # written as it filled
    resumed = _grid(run, examples, operands, mesh, path=path)
    np.testing.assert_allclose(resumed["loss"], whole["loss"], rtol=1e-6)
    np.testing.assert_allclose(resumed["error"], whole["error"], rtol=1e-6)
    before = path.stat().st_mtime_ns
    _grid(run, examples, operands, mesh, path=path)  # finished: nothing evaluated or written
    assert path.stat().st_mtime_ns == before
    with pytest.raises(landscape.GridMismatchError, match="holds a grid of other"):
        evaluate = landscape.point_evaluator(run.weights.model().apply, landscape.plane, mesh)
        landscape.evaluate_grid(
            evaluate, None, [], [np.zeros(3)] * 2, {"test": 2}, devices=2, path=path
        )


def test_interpolation_ends_are_the_initial_and_final_weights(tiny_landscape):
    from resjax.trainability.runs import initial_variables

    run, examples, _ = tiny_landscape
    start = jax.tree.map(jnp.asarray, initial_variables(run, (28, 28, 1)))
    end = jax.tree.map(jnp.asarray, run.weights.variables)
    mesh = landscape.points_mesh(jax.devices()[:1])
    grid = _grid(
        run,
        examples,
        {"start": start, "end": end},
        mesh,
        variables_at=landscape.interpolation,
        axes=[np.array([0.0, 1.0], np.float32)],
    )
    np.testing.assert_allclose(
        grid["loss"],
        [_eval_loss(run, examples, start)[0], _eval_loss(run, examples, end)[0]],
        rtol=1e-5,
    )


# --- the command ---


def test_landscape_command_writes_and_resumes(weights_file, fashion_mnist_dir, tmp_path, capsys):
    from resjax.trainability.__main__ import main

    out = tmp_path / "land"
    args = [
        "landscape",
        str(weights_file),
        "--out",
        str(out),
        "--examples=48",
        "--batch-size=32",
        "--resolution=3",
        f"--data-dir={fashion_mnist_dir}",
        "--save-every-s=0",
    ]
    assert main(args) == 0
    for name in ("plane.json", "plane.csv", "plane.png", "plane_3d.png", "resnet8_plane.npz"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "plane.json").read_text())["runs"][0]
    assert summary["points_done"] == 9 and summary["examples"]["count"] == 48
    assert summary["examples"]["which"].startswith("examples [0, 48) of the training part")
    before = (out / "resnet8_plane.npz").stat().st_mtime_ns
    assert main(args) == 0  # finished: redrawn, not recomputed
    assert (out / "resnet8_plane.npz").stat().st_mtime_ns == before
    assert main([*args[:-3], "--resolution=5", *args[-2:]]) == 1  # another grid in the same file
    assert "holds a grid of other axes" in capsys.readouterr().err
    assert (
        main(
            [
                "landscape",
                str(weights_file),
                "--out",
                str(out),
                "--kind=interpolation",
                "--examples=48",
                "--resolution=3",
                f"--data-dir={fashion_mnist_dir}",
            ]
        )
        == 0
    )
    line = json.loads((out / "interpolation.json").read_text())["runs"][0]
    assert {"loss_at_end", "max_above_chord", "loss_at_origin"} <= set(line)


def test_landscape_over_two_processes_is_the_one_process_grid(
    weights_file, fashion_mnist_dir, tmp_path
):
    """Two processes (jax.distributed on localhost, 2 CPU devices each) share out one grid, 4
    points at a time, each point evaluated on one device over the whole batch: the grid this
    process makes alone. Only process 0 writes."""
    from processes import command, environ, finish, free_ports, start

    from resjax.trainability.__main__ import main

    args = ["landscape", str(weights_file), "--examples=48", "--batch-size=32", "--resolution=3"]
    args += [f"--data-dir={fashion_mnist_dir}"]
    assert main([*args, f"--out={tmp_path / 'one'}"]) == 0
    address = f"127.0.0.1:{free_ports(1)[0]}"
    shared = [
        command("trainability", *args, f"--out={tmp_path / 'two'}")
        + [f"--coordinator-address={address}", "--num-processes=2", f"--process-id={i}"]
        for i in range(2)
    ]
    results = finish([start(c, environ(JAX_NUM_CPU_DEVICES="2")) for c in shared], 300)
    for i, (code, _, stderr) in enumerate(results):
        assert code == 0, f"process {i} exited {code}:\n{stderr[-3000:]}"
    assert "4 point(s) at a time" in results[0][2]
    one, two = (landscape.read_grid(tmp_path / d / "resnet8_plane.npz") for d in ("one", "two"))
    assert np.all(np.isfinite(two["loss"]))
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-6)
    np.testing.assert_array_equal(two["error"], one["error"])
    assert json.loads((tmp_path / "two" / "plane.json").read_text())["runs"][0]["points_done"] == 9


def test_curvature_command(weights_file, fashion_mnist_dir, tmp_path):
    from resjax.trainability.__main__ import main

    out = tmp_path / "curv"
    assert (
        main(
            [
                "curvature",
                str(weights_file),
                "--out",
                str(out),
                "--examples=32",
                "--top-k=2",
                "--lanczos-steps=4",
                "--trace-probes=2",
                "--slq-probes=1",
                "--slq-steps=4",
                f"--data-dir={fashion_mnist_dir}",
            ]
        )
        == 0
    )
    (estimate,) = json.loads((out / "curvature.json").read_text())["estimates"]
    assert estimate["examples"]["count"] == 32 and estimate["hvps"] == 4 + 2 + 4
    assert estimate["lanczos"]["eigenvalues"][0] >= estimate["lanczos"]["eigenvalues"][1]
    assert (out / "curvature.csv").is_file() and (out / "curvature_vs_depth.png").is_file()


def test_bad_input_is_one_error_line(weights_file, tmp_path, capsys):
    from resjax.trainability.__main__ import main

    assert main(["landscape", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 1
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path / 'nothing'} does not exist (expected a weights file or a workdir)\n"
    )
    assert (
        main(
            [
                "curvature",
                str(weights_file),
                "--out",
                str(tmp_path),
                "--top-k=9",
                "--lanczos-steps=4",
            ]
        )
        == 1
    )
    assert "top-k (9) cannot exceed the Lanczos steps (4)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["landscape", str(weights_file), "--out", str(tmp_path), "--range=1"])
    assert e.value.code == 2
    assert "expected LOW,HIGH" in capsys.readouterr().err


def test_sweep_report_curvature_table(tmp_path):
    from resjax.sweeps.curvature_table import curvature_section

    assert curvature_section(tmp_path, ["plain_d56_s0"]) == ""  # no estimate: no table
    estimate = {
        "label": "plain-56", "lanczos": {"eigenvalues": [123.456, 7.0], "lanczos_steps": 30},
        "hutchinson": {"trace": 2000.0, "stderr": 50.0, "probes": 30},
        "examples": {"count": 1000},
    }  # fmt: skip
    folder = tmp_path / "plain_d56_s0" / "curvature"
    folder.mkdir(parents=True)
    (folder / "curvature.json").write_text(
        json.dumps({"estimates": [{**estimate, "step": 100}, {**estimate, "step": 1000}]})
    )
    table = curvature_section(tmp_path, ["plain_d56_s0", "resnet_d56_s0"])
    assert "| plain_d56_s0 | plain-56 | 1000 | 123.5 | 2000 ± 50 | 1,000 | 30 | 30 |" in table
    assert table.count("| plain_d56_s0 |") == 1  # the latest step only
