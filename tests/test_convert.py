"""resjax.convert: torchvision weights give torchvision's logits; files; errors; the CLI.

Two references. Without torch: torchvision's state_dict keys and shapes written out from its
source (`torchvision_shapes`, checked against torchvision's pinned counts) and filled with random
numpy arrays; these tests run on every tested stack. With torch (the `torch` extra; CI's Python
3.11 stack): a torchvision-identical network (tests/torchvision_resnet.py) whose eval logits the
converted network must reproduce, and `.pth` files.
"""

import functools
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from resjax import convert
from resjax.models import get_model, load_params

try:
    import torch
    from torch import nn as tnn
    from torchvision_resnet import random_torch_resnet
except ImportError:  # Python 3.12/3.13 in CI: no CPU torch wheel there (README, tested stacks)
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch: pip install 'resjax[torch]'")

TOLERANCE = 1e-4  # max |logit difference|, float32 on CPU
# torchvision's numbers: len(state_dict()) and trainable parameters.
TORCHVISION = {18: (122, 11_689_512), 50: (320, 25_557_032)}
LAYOUTS = {  # torchvision.models.resnet: block kind, blocks per stage
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def torchvision_shapes(depth, num_classes=1000):
    """{key: shape} of torchvision's resnet{depth}().state_dict(), from its _make_layer."""
    kind, layers = LAYOUTS[depth]
    expansion = 4 if kind == "bottleneck" else 1
    shapes = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, channels):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{leaf}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    inplanes = 64
    for i, (blocks, planes) in enumerate(zip(layers, (64, 128, 256, 512), strict=True), start=1):
        for j in range(blocks):
            prefix, stride = f"layer{i}.{j}", (2 if i > 1 and j == 0 else 1)
            if kind == "bottleneck":
                convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            else:
                convs = [(planes, inplanes, 3), (planes, planes, 3)]
            for k, (out, inp, size) in enumerate(convs, start=1):
                shapes[f"{prefix}.conv{k}.weight"] = (out, inp, size, size)
                bn(f"{prefix}.bn{k}", out)
            if j == 0 and (stride != 1 or inplanes != planes * expansion):
                shapes[f"{prefix}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{prefix}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes["fc.weight"] = (num_classes, 512 * expansion)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def random_state_dict(depth, num_classes=1000, seed=0):
    """A torchvision-shaped state_dict of random numpy arrays (BN statistics plausible)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, shape in torchvision_shapes(depth, num_classes).items():
        if key.endswith("num_batches_tracked"):
            arrays[key] = np.array(123, np.int64)
        elif key.endswith("running_var"):
            arrays[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            arrays[key] = rng.normal(0.0, 0.2, shape).astype(np.float32)
    return arrays


def test_the_numpy_reference_is_shaped_like_torchvision():
    for depth, (keys, params) in TORCHVISION.items():
        shapes = torchvision_shapes(depth)
        trainable = [s for k, s in shapes.items() if k.rsplit(".", 1)[1] in ("weight", "bias")]
        assert len(shapes) == keys
        assert sum(int(np.prod(s)) for s in trainable) == params


def test_tensors_land_in_their_places_transposed():
    arrays = random_state_dict(18)
    variables = convert.convert_torchvision(arrays).variables
    params, stats = variables["params"], variables["batch_stats"]
    np.testing.assert_array_equal(
        params["stem_conv"]["kernel"], arrays["conv1.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        params["stage2_block1"]["shortcut_conv"]["kernel"],
        arrays["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        params["stage3_block2"]["bn2"]["scale"], arrays["layer3.1.bn2.weight"]
    )
    np.testing.assert_array_equal(params["classifier"]["kernel"], arrays["fc.weight"].T)
    np.testing.assert_array_equal(params["classifier"]["bias"], arrays["fc.bias"])
    np.testing.assert_array_equal(
        stats["stage4_block1"]["shortcut_bn"]["var"], arrays["layer4.0.downsample.1.running_var"]
    )
    n_bn = sum(k.endswith("running_mean") for k in arrays)
    assert len(jax.tree_util.tree_leaves(stats)) == 2 * n_bn


def numpy_state_dict(net):
    return {k: v.numpy() for k, v in net.state_dict().items()}


@functools.cache
def jitted_apply(model, train):
    """One compiled forward pass per network (ResNet modules are hashable), shared by tests."""
    mutable = ["batch_stats"] if train else False
    return jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=mutable))


def jax_logits(portable, x_nchw, train=False):
    x = np.asarray(x_nchw).transpose(0, 2, 3, 1)
    return jitted_apply(portable.model(), train)(portable.variables, x)


@pytest.fixture(scope="module", params=[18, 50])
def pair(request):
    if torch is None:
        pytest.skip("needs PyTorch: pip install 'resjax[torch]'")
    """(depth, torch net, converted Portable, NCHW input)."""
    net = random_torch_resnet(request.param)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32))
    return request.param, net, convert.convert_torchvision(net.state_dict()), x


def test_the_reference_network_is_shaped_like_torchvision(pair):
    depth, net, _, _ = pair
    keys, params = TORCHVISION[depth]
    assert len(net.state_dict()) == keys
    assert sum(p.numel() for p in net.parameters()) == params
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == torchvision_shapes(depth)


def test_eval_logits_match_pytorch(pair):
    depth, net, portable, x = pair
    assert portable.model_name == f"resnet{depth}" and portable.overrides == {}
    with torch.no_grad():
        expected = net(x).numpy()
    diff = np.abs(np.asarray(jax_logits(portable, x)) - expected).max()
    print(
        f"resnet{depth}: max |logit diff| = {diff:.2e} (logits up to {np.abs(expected).max():.1f})"
    )
    assert diff < TOLERANCE


def test_batch_statistics_are_carried_over(pair):
    _, net, portable, _ = pair
    stats = portable.variables["batch_stats"]
    np.testing.assert_array_equal(stats["stem_bn"]["mean"], net.bn1.running_mean.numpy())
    np.testing.assert_array_equal(stats["stem_bn"]["var"], net.bn1.running_var.numpy())
    block = stats["stage2_block1"]
    np.testing.assert_array_equal(block["bn2"]["var"], net.layer2[0].bn2.running_var.numpy())
    np.testing.assert_array_equal(
        block["shortcut_bn"]["mean"], net.layer2[0].downsample[1].running_mean.numpy()
    )
    n_bn = sum(isinstance(m, tnn.BatchNorm2d) for m in net.modules())
    assert len(jax.tree_util.tree_leaves(stats)) == 2 * n_bn


@needs_torch
def test_a_train_step_updates_statistics_like_pytorch():
    """Train-mode BN: same logits, same running mean; the running variance differs by n/(n-1)
    (flax averages the biased batch variance, PyTorch the unbiased), as the module says."""
    net = random_torch_resnet(18).train()
    portable = convert.convert_torchvision(net.state_dict())
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(4, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        expected = net(x).numpy()
    logits, updates = jax_logits(portable, x, train=True)
    # Looser than eval: the last stage normalises over 4 values per channel, and flax computes
    # the variance as E[x²] - E[x]² (use_fast_variance), which rounds more than PyTorch's.
    assert np.abs(np.asarray(logits) - expected).max() < 10 * TOLERANCE
    new = updates["batch_stats"]["stage4_block2"]["bn2"]  # the last BN: 4 × 1 × 1 positions
    old = portable.variables["batch_stats"]["stage4_block2"]["bn2"]
    bn = net.layer4[1].bn2
    np.testing.assert_allclose(new["mean"], bn.running_mean.numpy(), atol=1e-5)
    n = 4 * 1 * 1
    torch_batch_var = (bn.running_var.numpy() - 0.9 * old["var"]) / 0.1
    np.testing.assert_allclose(
        new["var"], 0.9 * old["var"] + 0.1 * torch_batch_var * (n - 1) / n, rtol=1e-4, atol=1e-5
    )


def save(path, arrays):
    """Writes `arrays` as .npz or .safetensors (by the suffix), as exporters do: the safetensors
    file without integer step counters."""
    path = Path(path)
    if path.suffix == ".npz":
        np.savez(path, **arrays)
        return arrays
    arrays = {k: v for k, v in arrays.items() if v.dtype == np.float32}
    safetensors.numpy.save_file(arrays, path, metadata={"format": "pt"})
    return arrays


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_files_round_trip(tmp_path, suffix):
    arrays = save(tmp_path / f"resnet18{suffix}", random_state_dict(18))
    loaded = convert.read_state_dict(tmp_path / f"resnet18{suffix}")
    assert loaded.keys() == arrays.keys()
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    direct = convert.convert_torchvision(arrays).variables
    via_file = convert.convert_torchvision(loaded).variables
    jax.tree_util.tree_map(np.testing.assert_array_equal, via_file, direct)


@needs_torch
def test_pth_round_trip(tmp_path):
    net = random_torch_resnet(18)
    torch.save(net.state_dict(), tmp_path / "resnet18.pth")
    loaded = convert.read_state_dict(tmp_path / "resnet18.pth")
    assert loaded.keys() == net.state_dict().keys()
    for key, value in numpy_state_dict(net).items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)


def test_safetensors_bfloat16_is_widened(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
    safetensors.numpy.save_file(
        {"w": values.astype(ml_dtypes.bfloat16)}, tmp_path / "w.safetensors"
    )
    read = convert.read_state_dict(tmp_path / "w.safetensors")["w"]
    assert read.dtype == np.float32
    np.testing.assert_allclose(read, values, rtol=2**-7)  # bfloat16 keeps 8 significant bits


@pytest.mark.parametrize("damage", ["truncate", "bad header", "empty"])
def test_corrupt_safetensors_gives_one_line_naming_the_file(tmp_path, damage):
    path = tmp_path / "w.safetensors"
    safetensors.numpy.save_file({"w": np.ones((4, 4), np.float32)}, path)
    data = path.read_bytes()
    damaged = {
        "truncate": data[:-10],
        "bad header": (5).to_bytes(8, "little") + b"{oops",
        "empty": b"",
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(ValueError, match="w.safetensors is not a readable .safetensors file") as e:
        convert.read_state_dict(path)
    assert "\n" not in str(e.value)


def test_data_parallel_prefixes_are_removed():
    arrays = random_state_dict(18)
    prefixed = {f"module.{k}": v for k, v in arrays.items()}
    jax.tree_util.tree_map(
        np.testing.assert_array_equal,
        convert.convert_torchvision(prefixed).variables,
        convert.convert_torchvision(arrays).variables,
    )


@needs_torch
def test_checkpoint_wrappers_and_data_parallel_prefixes_are_unwrapped(tmp_path):
    net = random_torch_resnet(18)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    portable = convert.convert_torchvision(convert.read_state_dict(tmp_path / "ckpt.pth"))
    direct = convert.convert_torchvision(net.state_dict())
    jax.tree_util.tree_map(np.testing.assert_array_equal, portable.variables, direct.variables)


def test_a_fine_tuned_head_sets_num_classes():
    portable = convert.convert_torchvision(random_state_dict(18, num_classes=10))
    assert portable.overrides == {"num_classes": 10}
    assert portable.variables["params"]["classifier"]["kernel"].shape == (512, 10)


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_depth_is_inferred_from_the_keys(depth):
    assert convert.infer_model_name(list(torchvision_shapes(depth))) == f"resnet{depth}"


def test_every_problem_is_listed_in_one_error():
    arrays = random_state_dict(18)
    del arrays["layer3.1.bn2.running_var"]
    arrays["layer3.1.conv2.weight"] = arrays["layer3.1.conv2.weight"][:, :, :1, :1]
    arrays["layer1.0.conv3.weight"] = np.zeros((1,), np.float32)
    arrays["layer1.5.bn1.num_batches_tracked"] = np.zeros((), np.int64)  # no such BN
    with pytest.raises(ValueError) as e:
        convert.convert_torchvision(arrays, "resnet18")
    message = str(e.value)
    assert "does not fit torchvision's resnet18" in message
    assert "missing (1): layer3.1.bn2.running_var" in message
    assert "unexpected (2): layer1.0.conv3.weight, layer1.5.bn1.num_batches_tracked" in message
    assert (
        "mismatch (1): layer3.1.conv2.weight: (256, 256, 1, 1), expected (256, 256, 3, 3)"
        in message
    )


def test_the_wrong_depth_lists_the_keys_that_do_not_fit():
    with pytest.raises(ValueError, match=r"resnet34: missing \(80\): layer1\.2\.bn1\.bias, ") as e:
        convert.convert_torchvision(random_state_dict(18), "resnet34")
    assert "layer1.2.conv1.weight" in str(e.value) and "layer4.2.conv2.weight" in str(e.value)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: convert.read_state_dict("w.ckpt"),
            "allowed suffixes: .pth, .pt, .npz, .safetensors",
        ),
        (lambda: convert.convert_torchvision({}, "resnet56"), "convert to resnet18, resnet34"),
        (lambda: convert.infer_model_name(["layer1.0.conv1.weight"]), "no torchvision ResNet"),
    ],
)
def test_bad_input_says_what_is_allowed(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_missing_torch_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(ImportError, match=r"pip install 'resjax\[torch\]'"):
        convert.read_state_dict(tmp_path / "w.pth")


def _convert_cli(source, out, cwd):
    command = [sys.executable, "-m", "resjax.convert", f"--from={source}", f"--out={out}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


def test_command_line_reads_safetensors_without_torch(tmp_path):
    arrays = save(tmp_path / "resnet18.safetensors", random_state_dict(18, seed=3))
    result = _convert_cli("resnet18.safetensors", "resnet18.msgpack", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resnet18 (11,689,512 parameters)" in result.stdout
    portable = load_params(tmp_path / "resnet18.msgpack")
    assert portable.model() == get_model("resnet18")
    direct = convert.convert_torchvision(arrays).variables
    jax.tree_util.tree_map(np.testing.assert_array_equal, portable.variables, direct)


@needs_torch
def test_command_line_writes_a_file_that_load_params_reads(tmp_path):
    net = random_torch_resnet(18, seed=3)
    torch.save(net.state_dict(), tmp_path / "resnet18.pth")
    result = _convert_cli("resnet18.pth", "resnet18.msgpack", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resnet18 (11,689,512 parameters)" in result.stdout
    portable = load_params(tmp_path / "resnet18.msgpack")
    assert portable.model() == get_model("resnet18")
    x = torch.from_numpy(np.random.default_rng(4).normal(size=(2, 3, 64, 64)).astype(np.float32))
    with torch.no_grad():
        expected = net(x).numpy()
    assert np.abs(np.asarray(jax_logits(portable, x)) - expected).max() < TOLERANCE


def test_command_line_refuses_to_replace_a_different_file_silently(tmp_path, capsys):
    np.savez(tmp_path / "a.npz", **random_state_dict(18))
    np.savez(tmp_path / "b.npz", **random_state_dict(18, seed=1))
    out = str(tmp_path / "w.msgpack")
    convert.main([f"--from={tmp_path / 'a.npz'}", f"--out={out}"])
    convert.main([f"--from={tmp_path / 'a.npz'}", f"--out={out}"])  # same contents: fine
    with pytest.raises(SystemExit) as exit_info:
        convert.main([f"--from={tmp_path / 'b.npz'}", f"--out={out}"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 1 and error.count("\n") == 1 and "--overwrite" in error
    convert.main([f"--from={tmp_path / 'b.npz'}", f"--out={out}", "--overwrite"])
