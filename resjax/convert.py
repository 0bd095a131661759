"""Converts torchvision ResNet weights into the matching resjax network.

    python -m resjax.convert --from=resnet50.pth --out=resnet50.msgpack [--model=resnet50]

Reads a torchvision ResNet-18/34/50/101/152 ``state_dict`` from ``.pth``/``.pt`` (needs torch:
``pip install 'resjax[torch]'``), ``.npz`` or ``.safetensors`` (no torch), checks that every
tensor has a place, and writes the portable weights file (resjax.models.load_params reads it).
The network is ``get_model('resnet{depth}')``: torchvision's v1.5 layout, shortcut B, NHWC;
the depth is inferred from the keys unless given, and ``num_classes`` from ``fc.weight``.

    torchvision                         resjax
    conv1, bn1                          stem_conv, stem_bn
    layer{i}.{j-1}.conv{k}, .bn{k}      stage{i}_block{j}/conv{k}, bn{k}
    layer{i}.{j-1}.downsample.0, .1     stage{i}_block{j}/shortcut_conv, shortcut_bn
    fc                                  classifier
    conv weight [O, I, H, W]            kernel [H, W, I, O]
    fc weight [out, in]                 kernel [in, out]
    bn weight, bias                     params scale, bias
    bn running_mean, running_var        batch_stats mean, var
    bn num_batches_tracked              dropped: only momentum=None (cumulative averaging) reads
                                        it, and torchvision's BN uses momentum 0.1 (= flax 0.9)

Eval-mode logits agree with PyTorch's to float32 rounding (tests/test_convert.py). When
fine-tuning, note that flax updates ``var`` with the biased batch variance and PyTorch with the
unbiased one: the running variances drift apart by a factor n/(n-1), n = batch·height·width.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from flax import traverse_util

from resjax import cli
from resjax.models import get_model, init_shapes, save_params
from resjax.models.portable import Portable
from resjax.models.registry import IMAGENET_STAGES

SUFFIXES = (".pth", ".pt", ".npz", ".safetensors")
TORCH_HINT = "pip install 'resjax[torch]'"
_MODULES = {"stem_conv": "conv1", "stem_bn": "bn1", "classifier": "fc"}
_BLOCK_PARTS = {"shortcut_conv": "downsample.0", "shortcut_bn": "downsample.1"}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_STATS = {"mean": "running_mean", "var": "running_var"}


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a .pth/.pt (torch), .npz or .safetensors file, by name, as numpy arrays."""
    path = Path(path)
    readers = {".npz": _read_npz, ".safetensors": _read_safetensors}
    readers |= {".pth": _read_torch, ".pt": _read_torch}
    if path.suffix not in readers:
        raise ValueError(f"{path}: unknown weights format; allowed suffixes: {', '.join(SUFFIXES)}")
    return readers[path.suffix](path)


def infer_model_name(keys: Sequence[str]) -> str:
    """'resnet{depth}' from a torchvision state_dict's keys: blocks per stage and block kind."""
    blocks: dict[int, int] = {}
    for key in keys:
        if match := re.match(r"layer(\d+)\.(\d+)\.", key):
            stage, index = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks.get(stage, 0), index + 1)
    kind = "bottleneck" if any(re.match(r"layer\d+\.\d+\.conv3\.", k) for k in keys) else "basic"
    stages = tuple(blocks.get(i, 0) for i in range(1, max(blocks, default=0) + 1))
    for depth, layout in IMAGENET_STAGES.items():
        if layout == (kind, stages):
            return f"resnet{depth}"
    known = ", ".join(f"resnet{d} ({k}, {s})" for d, (k, s) in IMAGENET_STAGES.items())
    raise ValueError(
        f"the keys describe {kind} blocks {stages} per stage, which is no torchvision ResNet; "
        f"known: {known}. Is this a ResNet state_dict?"
    )


def convert_torchvision(state_dict: Mapping[str, Any], model_name: str | None = None) -> Portable:
    """A torchvision ResNet state_dict (tensors or arrays) -> resjax variables, as a Portable.

    `model_name` ('resnet18', ..., 'resnet152') defaults to the one the keys describe. Raises one
    ValueError listing every missing key, unexpected key and shape mismatch.
    """
    arrays = {k: np.asarray(v) for k, v in state_dict.items()}
    if arrays and all(k.startswith("module.") for k in arrays):  # saved from DataParallel / DDP
        arrays = {k.removeprefix("module."): v for k, v in arrays.items()}
    model_name = model_name or infer_model_name(list(arrays))
    allowed = [f"resnet{d}" for d in IMAGENET_STAGES]
    if model_name not in allowed:
        raise ValueError(f"torchvision weights convert to {', '.join(allowed)}; got {model_name!r}")
    overrides = {}
    if "fc.weight" in arrays and arrays["fc.weight"].ndim == 2:
        num_classes = arrays["fc.weight"].shape[0]
        if num_classes != 1000:  # a fine-tuned head
            overrides["num_classes"] = num_classes
    shapes = traverse_util.flatten_dict(dict(init_shapes(get_model(model_name, **overrides))))

    flat, missing, mismatched, accounted = {}, [], [], set()
    for path, target in shapes.items():
        key = _torch_key(path)
        if path[-1] == "scale":  # a BN layer: its step counter has a place too (it is dropped)
            accounted.add(key.removesuffix("weight") + "num_batches_tracked")
        if key not in arrays:
            missing.append(key)
            continue
        accounted.add(key)
        value, expected = arrays[key], _torch_shape(target.shape)
        if value.shape != expected:
            mismatched.append(f"{key}: {value.shape}, expected {expected}")
            continue
        flat[path] = _to_flax(value).astype(target.dtype)
    unexpected = list(set(arrays) - accounted)
    if missing or unexpected or mismatched:
        problems = [
            f"{label} ({len(items)}): {', '.join(sorted(items, key=_natural))}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", mismatched),
            )
            if items
        ]
        raise ValueError(
            f"the state_dict does not fit torchvision's {model_name}: {'; '.join(problems)}"
        )
    variables = traverse_util.unflatten_dict(flat)
    return Portable(model_name=model_name, overrides=overrides, config=None, variables=variables)


def _natural(key: str) -> list[Any]:
    """Sort key that puts layer1.2 before layer1.10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _torch_key(path: tuple[str, ...]) -> str:
    """('params', 'stage2_block1', 'shortcut_bn', 'scale') -> 'layer2.0.downsample.1.weight'."""
    collection, *modules, leaf = path
    if len(modules) == 1:
        prefix = _MODULES[modules[0]]
    else:
        block, part = modules
        stage, index = map(int, re.fullmatch(r"stage(\d+)_block(\d+)", block).groups())
        prefix = f"layer{stage}.{index - 1}.{_BLOCK_PARTS.get(part, part)}"
    return f"{prefix}.{(_STATS if collection == 'batch_stats' else _LEAVES)[leaf]}"


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:  # HWIO -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(reversed(shape))  # Dense [in, out] -> Linear [out, in]; vectors unchanged


def _to_flax(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    return value.T


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as e:
        raise ValueError(f"{path} is not a readable .npz file: {type(e).__name__}: {e}") from None


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch  # the optional extra; resjax itself never needs it
    except ImportError:
        raise ImportError(
            f"reading {path} needs PyTorch: {TORCH_HINT} (or save the state_dict as .npz or "
            ".safetensors, which need no torch)"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise ValueError(f"{path} is not a readable state_dict (torch.load): {reason}") from None
    for wrapper in ("state_dict", "model"):  # training checkpoints often nest the weights
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{path} holds a {type(obj).__name__}, not a state_dict; save model.state_dict()"
        )
    return {
        k: (v.detach().cpu().float() if v.dtype == torch.bfloat16 else v.detach().cpu()).numpy()
        if isinstance(v, torch.Tensor)
        else np.asarray(v)
        for k, v in obj.items()
    }


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Through the `safetensors` package's numpy API (no torch), which returns bfloat16 tensors
    as ml_dtypes arrays: those are widened to float32 here."""
    try:
        tensors = safetensors.numpy.load_file(path)
    except Exception as e:  # SafetensorError (damaged file), OSError, or an unknown dtype
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise ValueError(f"{path} is not a readable .safetensors file: {reason}") from None
    return {
        k: v.astype(np.float32) if v.dtype.name == "bfloat16" else v for k, v in tensors.items()
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: converts one file; errors print one line and exit with status 1."""
    parser = cli.ArgumentParser(  # usage errors: one line too
        prog="python -m resjax.convert",
        description="Convert torchvision ResNet weights into a resjax portable weights file.",
    )
    parser.add_argument(
        "--from", dest="source", required=True, help=f"state_dict file ({', '.join(SUFFIXES)})"
    )
    parser.add_argument("--out", required=True, help="weights file to write (.msgpack or .npz)")
    parser.add_argument(
        "--model",
        default=None,
        help=f"one of {', '.join(f'resnet{d}' for d in IMAGENET_STAGES)}; default: from the keys",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    try:
        portable = convert_torchvision(read_state_dict(args.source), args.model)
        save_params(
            args.out,
            portable.variables,
            model_name=portable.model_name,
            model_overrides=portable.overrides,
            overwrite=args.overwrite,
        )
    except (ValueError, ImportError, OSError) as e:
        parser.exit(1, f"error: {e}\n")
    count = sum(
        np.size(p) for p in traverse_util.flatten_dict(portable.variables["params"]).values()
    )
    print(f"wrote {args.out}: {portable.model_name} ({count:,} parameters) from {args.source}")


if __name__ == "__main__":
    main()
