"""Named networks. Depth is data: each name is a stage table plus a few fields.

``get_model('resnet56')``, ``get_model('plain110', num_classes=100)``,
``get_model('resnet50', dtype='bfloat16', scan=True)``. Any CIFAR depth 6n+2 also parses as
``resnet{d}`` / ``plain{d}`` (e.g. ``plain8``), except the ImageNet names below.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from resjax.models.resnet import ResNet

CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)  # He et al. 2015, Table 6
PLAIN_DEPTHS = (20, 32, 44, 56, 110)
IMAGENET_STAGES = {  # torchvision / He et al. 2015 Table 1 (+ ResNet-200 of He et al. 2016)
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}


def cifar_resnet(depth: int, **overrides: Any) -> ResNet:
    """He et al. 2015's CIFAR network: 3×3 stem, 3 stages of 16/32/64, depth = 6n+2, option A."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, 1202, ...); got {depth}"
        )
    n = (depth - 2) // 6
    fields = dict(stage_sizes=(n, n, n), widths=(16, 32, 64), stem="cifar", shortcut="A")
    return ResNet(**{**fields, **overrides})


def preact_cifar_resnet(depth: int, **overrides: Any) -> ResNet:
    """He et al. 2016's pre-activation CIFAR nets: basic (6n+2) or, from 164 on, bottleneck (9n+2)."""
    bottleneck = depth >= 164
    per_block = 9 if bottleneck else 6
    if (depth - 2) % per_block:
        raise ValueError(
            f"pre-activation CIFAR depth must be {per_block}n+2; got {depth} (basic: 20, 56, 110; "
            "bottleneck: 164, 1001)"
        )
    n = (depth - 2) // per_block
    fields = dict(
        stage_sizes=(n, n, n),
        widths=(16, 32, 64),
        block="bottleneck" if bottleneck else "basic",
        stem="cifar",
        ordering="pre",
        shortcut="B",  # the paper's projection shortcut where dimensions increase
    )
    return ResNet(**{**fields, **overrides})


def wide_resnet(depth: int, width: int, **overrides: Any) -> ResNet:
    """Zagoruyko & Komodakis 2016, WRN-d-k: pre-activation basic blocks, widths 16k/32k/64k."""
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4 (16, 22, 28, 40, ...); got {depth}")
    n = (depth - 4) // 6
    fields = dict(
        stage_sizes=(n, n, n),
        widths=(16 * width, 32 * width, 64 * width),
        stem="cifar",
        ordering="pre",
        shortcut="B",
    )
    return ResNet(**{**fields, **overrides})


def imagenet_resnet(depth: int, **overrides: Any) -> ResNet:
    """torchvision's ResNet (v1.5: stride on the 3×3), 7×7/2 stem, shortcut B, 1000 classes."""
    if depth not in IMAGENET_STAGES:
        raise ValueError(
            f"ImageNet ResNet depth must be one of {sorted(IMAGENET_STAGES)}; got {depth}"
        )
    block, stages = IMAGENET_STAGES[depth]
    fields = dict(
        stage_sizes=stages,
        widths=(64, 128, 256, 512),
        block=block,
        stem="imagenet",
        stem_width=64,
        shortcut="B",
        num_classes=1000,
    )
    return ResNet(**{**fields, **overrides})


_REGISTRY: dict[str, Callable[..., ResNet]] = {
    **{f"resnet{d}": functools.partial(cifar_resnet, d) for d in CIFAR_DEPTHS},
    **{f"plain{d}": functools.partial(cifar_resnet, d, residual=False) for d in PLAIN_DEPTHS},
    **{f"preact_resnet{d}": functools.partial(preact_cifar_resnet, d) for d in (110, 164, 1001)},
    **{f"resnet{d}": functools.partial(imagenet_resnet, d) for d in IMAGENET_STAGES},
    "wrn28_10": functools.partial(wide_resnet, 28, 10),
    "wrn16_8": functools.partial(wide_resnet, 16, 8),
}


def list_models() -> list[str]:
    """The registered names (any other CIFAR depth 6n+2 also works as resnet{d} / plain{d})."""
    return sorted(_REGISTRY, key=lambda n: (re.sub(r"\d+", "", n), int(re.findall(r"\d+", n)[0])))


def get_model(name: str, **overrides: Any) -> ResNet:
    """Builds a registered network; `overrides` replace any ResNet field (num_classes, dtype,
    residual, shortcut, ordering, scan, remat, drop_path_rate, ...)."""
    unknown = set(overrides) - set(ResNet.__dataclass_fields__) - {"parent", "name"}
    if unknown:
        raise ValueError(
            f"unknown model fields {sorted(unknown)}; allowed: "
            f"{sorted(f for f in ResNet.__dataclass_fields__ if f not in ('parent', 'name'))}"
        )
    if name in _REGISTRY:
        return _REGISTRY[name](**overrides)
    match = re.fullmatch(r"(resnet|plain)(\d+)", name)
    if match:  # any other CIFAR depth: resnet8, plain14, ...
        kind, depth = match.group(1), int(match.group(2))
        return cifar_resnet(depth, **{"residual": kind == "resnet", **overrides})
    raise ValueError(
        f"unknown model {name!r}; registered: {', '.join(list_models())} "
        "(and resnet{d} / plain{d} for any CIFAR depth 6n+2)"
    )
