"""resjax networks and blocks inside other Flax projects (the README's library section).

Two ways in: a `flax.nnx` model (through `flax.nnx.bridge`), and the pattern of the Flax
ImageNet example (`model.init` without `train=`, a step under `jax.pmap(..., axis_name=...)`).
In both, BatchNorm statistics must update in training and be used, frozen, in evaluation.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from resjax.models import ResidualBlock, get_model

SMALL = {"widths": (4, 8, 8), "stem_width": 4, "num_classes": 10}  # resnet8, tiny


def _data(n=32, size=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, size, size, 1)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(rng.integers(0, 10, n))


@nnx.jit
def _nnx_step(model, optimizer, x, y):
    """One SGD step with nnx.Optimizer; `model(x, train=True)` updates BN statistics in place."""

    def loss_fn(model):
        logits = model(x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def _nnx_eval(model, x):
    return model(x, train=False)


def _nnx_train(model, x, y, steps=8):
    optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    return [float(_nnx_step(model, optimizer, x, y)) for _ in range(steps)]


class Wrapped(nnx.Module):
    """A whole resjax network as an NNX module; `train` picks BN's mode."""

    def __init__(self, linen_model, x, rngs):
        self.net = nnx.bridge.ToNNX(linen_model, rngs=rngs)
        nnx.bridge.lazy_init(self.net, x, train=False)  # creates params and batch_stats

    def __call__(self, x, train: bool):
        # Training must declare batch_stats mutable (otherwise Flax raises
        # ModifyScopeVariableError); the bridge then writes the new statistics in place.
        return self.net(x, train=train, mutable=["batch_stats"] if train else False)


class BlockNet(nnx.Module):
    """An NNX model with one resjax block in the middle: NNX stem and head."""

    def __init__(self, rngs):
        self.stem = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.block = nnx.bridge.ToNNX(
            ResidualBlock(features=16, strides=2, shortcut="B"), rngs=rngs
        )
        nnx.bridge.lazy_init(self.block, jnp.zeros((1, 12, 12, 8)), train=False)
        self.head = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x, train: bool):
        x = nnx.relu(self.stem(x))
        x = self.block(x, train=train, mutable=["batch_stats"] if train else False)
        return self.head(x.mean(axis=(1, 2)))


def _stats(model):
    return jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))


def _linen_variables(module):
    """The bridged module's state as the linen variables {'params', 'batch_stats'}."""
    return {
        "params": nnx.to_pure_dict(nnx.state(module, nnx.Param)),
        "batch_stats": nnx.to_pure_dict(nnx.state(module, nnx.BatchStat)),
    }


def test_a_resjax_network_trains_inside_an_nnx_model():
    x, y = _data()
    linen_model = get_model("resnet8", **SMALL)
    model = Wrapped(linen_model, x, nnx.Rngs(0))
    initial = _stats(model)
    losses = _nnx_train(model, x, y)
    assert losses[-1] < 0.7 * losses[0], losses
    trained = _stats(model)
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), initial, trained)
    assert min(jax.tree.leaves(moved)) > 1e-3  # every BN's running mean and variance moved

    # Evaluation uses the running statistics, frozen: it equals resjax's own eval apply with the
    # same variables, and leaves the statistics as they were.
    logits = _nnx_eval(model, x)
    expected = jax.jit(functools.partial(linen_model.apply, train=False))(
        _linen_variables(model.net), x
    )
    np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, _stats(model), trained)
    _nnx_train(model, x, y, steps=1)  # and training after evaluation updates them again
    assert not np.array_equal(
        _stats(model)["net"]["stem_bn"]["mean"], trained["net"]["stem_bn"]["mean"]
    )


def test_a_resjax_block_trains_inside_an_nnx_model():
    x, y = _data()
    model = BlockNet(nnx.Rngs(0))
    initial = _stats(model)
    assert set(initial["block"]) == {"bn1", "bn2", "shortcut_bn"}
    losses = _nnx_train(model, x, y)
    assert losses[-1] < 0.9 * losses[0], losses
    trained = _stats(model)
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), initial, trained)
    assert min(jax.tree.leaves(moved)) > 1e-3
    _nnx_eval(model, x)
    jax.tree.map(np.testing.assert_array_equal, _stats(model), trained)


def test_the_flax_imagenet_example_pattern():
    """`model.init(rng, x)` without `train=`, a pmap'd step with `axis_name='batch'` on a model
    built with the same `axis_name`: statistics over the global batch, identical on every
    device and equal to one device seeing the whole batch; evaluation with `train=False`."""
    x, y = _data(n=32)
    n = jax.local_device_count()
    assert n == 4  # conftest: 4 fake CPU devices
    model = get_model("resnet8", axis_name="batch", **SMALL)
    variables = model.init(jax.random.key(0), x[:1])  # train defaults to True; no pmean at init
    assert set(variables) == {"params", "batch_stats"}
    np.testing.assert_array_equal(variables["batch_stats"]["stem_bn"]["mean"], 0.0)
    tx = optax.sgd(0.1, momentum=0.9)

    def train_step(params, batch_stats, opt_state, x, y):
        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, x, mutable=["batch_stats"]
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        grads, loss = jax.lax.pmean((grads, loss), "batch")
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    p_step = jax.pmap(train_step, axis_name="batch")
    replicate = functools.partial(jax.tree.map, lambda a: np.broadcast_to(a, (n, *a.shape)))
    shard = functools.partial(jax.tree.map, lambda a: a.reshape(n, -1, *a.shape[1:]))
    params, stats = replicate(variables["params"]), replicate(variables["batch_stats"])
    opt_state = replicate(tx.init(variables["params"]))
    params, stats, opt_state, _ = p_step(params, stats, opt_state, *shard((x, y)))

    # One device, the whole batch, no axis name: the same statistics.
    _, single = model.clone(axis_name=None).apply(variables, x, mutable=["batch_stats"])
    for leaf, want in zip(
        jax.tree.leaves(stats), jax.tree.leaves(single["batch_stats"]), strict=True
    ):
        np.testing.assert_allclose(leaf, np.broadcast_to(want, leaf.shape), rtol=1e-5, atol=1e-6)

    # Evaluation: plain jit on one copy of the variables (BN reads its running statistics).
    trained = jax.tree.map(lambda a: a[0], {"params": params, "batch_stats": stats})
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(trained, x)
    assert logits.shape == (32, 10) and np.isfinite(np.asarray(logits)).all()
    # Without the axis name each device normalises its own 8 examples ("ghost" BN).
    no_axis = model.clone(axis_name=None)
    _, ghost = jax.pmap(lambda v, x: no_axis.apply(v, x, mutable=["batch_stats"]))(
        replicate(variables), shard(x)
    )
    mean = ghost["batch_stats"]["stem_bn"]["mean"]
    assert np.abs(mean - mean[0]).max() > 1e-4
