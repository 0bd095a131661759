"""resjax.convert: torchvision weights give torchvision's logits; files; errors; the CLI.

The PyTorch side is a torchvision-identical ResNet written here (torchvision does not install
beside torch 2.13 on these machines): same module names, so the same state_dict keys, and the
same parameter counts. Every weight and BN running statistic is randomised, so a wrongly
mapped or transposed tensor changes the logits.
"""

import functools
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from resjax import convert
from resjax.models import get_model, load_params

torch = pytest.importorskip("torch")
tnn = torch.nn

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # max |logit difference|, float32 on CPU
# torchvision's numbers: len(state_dict()) and trainable parameters.
TORCHVISION = {18: (122, 11_689_512), 50: (320, 25_557_032)}


class BasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU(inplace=True)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride here
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(tnn.Module):
    """torchvision.models.ResNet, trimmed to what the state_dict and forward pass depend on."""

    LAYOUTS = {
        18: (BasicBlock, (2, 2, 2, 2)),
        34: (BasicBlock, (3, 4, 6, 3)),
        50: (Bottleneck, (3, 4, 6, 3)),
        101: (Bottleneck, (3, 4, 23, 3)),
        152: (Bottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, depth, num_classes=1000):
        super().__init__()
        block, layers = self.LAYOUTS[depth]
        self.inplanes = 64
        self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.relu = tnn.ReLU(inplace=True)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        for i, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512), strict=True), start=1):
            setattr(self, f"layer{i}", self._make_layer(block, planes, n, 1 if i == 1 else 2))
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = tnn.Sequential(
                tnn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                tnn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None) for _ in range(1, blocks)]
        return tnn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def random_torch_resnet(depth, num_classes=1000, seed=0):
    """A TorchResNet in eval mode with every weight and BN statistic drawn at random."""
    torch.manual_seed(seed)
    net = TorchResNet(depth, num_classes)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, tnn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(123)
            elif isinstance(module, tnn.Linear):
                module.bias.normal_(0.0, 0.2)
    return net.eval()


def numpy_state_dict(net):
    return {k: v.numpy() for k, v in net.state_dict().items()}


def write_safetensors(path, arrays, bfloat16=()):
    """The safetensors format, written out by hand (the library is not a dependency)."""
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, array in arrays.items():
        if name in bfloat16:  # round-to-nearest is not needed: truncation is a valid bf16 too
            raw, dtype = (
                (np.ascontiguousarray(array, "<f4").view("<u4") >> 16).astype("<u2"),
                "BF16",
            )
        else:
            raw, dtype = np.ascontiguousarray(array, "<f4"), "F32"
        data = raw.tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the reference writer pads the header to 8 bytes
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


@pytest.fixture(scope="module", params=[18, 50])
def pair(request):
    """(depth, torch net, converted Portable, NCHW input)."""
    net = random_torch_resnet(request.param)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32))
    return request.param, net, convert.convert_torchvision(net.state_dict()), x


@functools.cache
def jitted_apply(model, train):
    """One compiled forward pass per network (ResNet modules are hashable), shared by tests."""
    mutable = ["batch_stats"] if train else False
    return jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=mutable))


def jax_logits(portable, x_nchw, train=False):
    x = np.asarray(x_nchw).transpose(0, 2, 3, 1)
    return jitted_apply(portable.model(), train)(portable.variables, x)


def test_the_reference_network_is_shaped_like_torchvision(pair):
    depth, net, _, _ = pair
    keys, params = TORCHVISION[depth]
    assert len(net.state_dict()) == keys
    assert sum(p.numel() for p in net.parameters()) == params


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


@pytest.mark.parametrize("suffix", [".pth", ".npz", ".safetensors"])
def test_files_round_trip(tmp_path, suffix):
    net = random_torch_resnet(18)
    arrays = numpy_state_dict(net)
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(net.state_dict(), path)
    elif suffix == ".npz":
        np.savez(path, **arrays)
    else:
        float_arrays = {k: v for k, v in arrays.items() if v.dtype == np.float32}
        write_safetensors(path, float_arrays)  # as most exporters do: no integer step counters
        arrays = float_arrays
    loaded = convert.read_state_dict(path)
    assert loaded.keys() == arrays.keys()
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    direct = convert.convert_torchvision(net.state_dict()).variables
    via_file = convert.convert_torchvision(loaded).variables
    jax.tree_util.tree_map(np.testing.assert_array_equal, via_file, direct)


def test_safetensors_bfloat16_is_widened(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
    write_safetensors(tmp_path / "w.safetensors", {"w": values}, bfloat16={"w"})
    read = convert.read_state_dict(tmp_path / "w.safetensors")["w"]
    assert read.dtype == np.float32
    np.testing.assert_allclose(read, values, rtol=2**-7)  # bfloat16 keeps 8 significant bits


@pytest.mark.parametrize("damage", ["truncate", "bad header", "empty"])
def test_corrupt_safetensors_gives_one_line_naming_the_file(tmp_path, damage):
    path = tmp_path / "w.safetensors"
    write_safetensors(path, {"w": np.ones((4, 4), np.float32)})
    data = path.read_bytes()
    damaged = {
        "truncate": data[:-10],
        "bad header": struct.pack("<Q", 5) + b"{oops",
        "empty": b"",
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(ValueError, match="w.safetensors is not a readable .safetensors file") as e:
        convert.read_state_dict(path)
    assert "\n" not in str(e.value)


def test_checkpoint_wrappers_and_data_parallel_prefixes_are_unwrapped(tmp_path):
    net = random_torch_resnet(18)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    portable = convert.convert_torchvision(convert.read_state_dict(tmp_path / "ckpt.pth"))
    direct = convert.convert_torchvision(net.state_dict())
    jax.tree_util.tree_map(np.testing.assert_array_equal, portable.variables, direct.variables)


def test_a_fine_tuned_head_sets_num_classes():
    portable = convert.convert_torchvision(random_torch_resnet(18, num_classes=10).state_dict())
    assert portable.overrides == {"num_classes": 10}
    assert portable.variables["params"]["classifier"]["kernel"].shape == (512, 10)


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_depth_is_inferred_from_the_keys(depth):
    with torch.device("meta"):  # keys only: nothing is allocated
        keys = list(TorchResNet(depth).state_dict())
    assert convert.infer_model_name(keys) == f"resnet{depth}"


def test_every_problem_is_listed_in_one_error():
    arrays = numpy_state_dict(random_torch_resnet(18))
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
        convert.convert_torchvision(numpy_state_dict(random_torch_resnet(18)), "resnet34")
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


def test_command_line_writes_a_file_that_load_params_reads(tmp_path):
    net = random_torch_resnet(18, seed=3)
    torch.save(net.state_dict(), tmp_path / "resnet18.pth")
    out = tmp_path / "resnet18.msgpack"
    command = [sys.executable, "-m", "resjax.convert", "--from=resnet18.pth", f"--out={out.name}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resnet18 (11,689,512 parameters)" in result.stdout
    portable = load_params(out)
    assert portable.model() == get_model("resnet18")
    x = torch.from_numpy(np.random.default_rng(4).normal(size=(2, 3, 64, 64)).astype(np.float32))
    with torch.no_grad():
        expected = net(x).numpy()
    assert np.abs(np.asarray(jax_logits(portable, x)) - expected).max() < TOLERANCE


def test_command_line_refuses_to_replace_a_different_file_silently(tmp_path, capsys):
    torch.save(random_torch_resnet(18).state_dict(), tmp_path / "a.pth")
    torch.save(random_torch_resnet(18, seed=1).state_dict(), tmp_path / "b.pth")
    out = str(tmp_path / "w.msgpack")
    convert.main([f"--from={tmp_path / 'a.pth'}", f"--out={out}"])
    convert.main([f"--from={tmp_path / 'a.pth'}", f"--out={out}"])  # same contents: fine
    with pytest.raises(SystemExit) as exit_info:
        convert.main([f"--from={tmp_path / 'b.pth'}", f"--out={out}"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 1 and error.count("\n") == 1 and "--overwrite" in error
    convert.main([f"--from={tmp_path / 'b.pth'}", f"--out={out}", "--overwrite"])
