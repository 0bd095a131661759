"""He et al. 2015's CIFAR-10 experiment (sec. 4.2), exactly: one network of Table 6.

    python -m resjax.train --config=configs/cifar10_resnet.py:resnet110 --workdir=runs/c10_r110

Arg: any CIFAR model name (default resnet20; plain20…plain110 for the plain baselines).
Expected test error (paper, Table 6): ResNet-20 8.75%, 32 7.51%, 44 7.17%, 56 6.97%,
110 6.43%, 1202 7.93%. 64k steps of batch 128: hours on one GPU, days on a CPU.
CIFAR-10 must be on disk: resjax prepares it from cifar-10-python.tar.gz (downloaded online, or
found in --config.data.manual_dir / $RESJAX_MANUAL_DIR offline).
"""

import re

from resjax.config import base_config, he2015_cifar10, lock


def get_config(arg: str | None = None):
    c = base_config()
    c.model.name = arg or "resnet20"  # option A (identity) shortcuts, as the paper's CIFAR nets
    depth = re.fullmatch(r"(?:resnet|plain)(\d+)", c.model.name)  # He et al. 2015's nets
    he2015_cifar10(c, int(depth.group(1)) if depth else None)  # from 110 on: warm-up at 0.01
    return lock(c)
