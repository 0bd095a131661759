"""He et al. 2015's CIFAR-10 experiment (sec. 4.2), exactly: one network of Table 6.

    python -m resjax.train --config=configs/cifar10_resnet.py:resnet110 --workdir=runs/c10_r110

Arg: any CIFAR model name (default resnet20; plain20…plain110 for the plain baselines).
Expected test error (paper, Table 6): ResNet-20 8.75%, 32 7.51%, 44 7.17%, 56 6.97%,
110 6.43%, 1202 7.93%. 64k steps of batch 128: hours on one GPU, days on a CPU.
CIFAR-10 must be on disk: resjax prepares it from cifar-10-python.tar.gz (downloaded online, or
found in --config.data.manual_dir / $RESJAX_MANUAL_DIR offline).
"""

from resjax.config import base_config, lock


def get_config(arg: str | None = None):
    c = base_config()
    c.model.name = arg or "resnet20"  # option A (identity) shortcuts, as the paper's CIFAR nets
    c.data.name = "cifar10"
    c.data.val_examples = 5000  # 45k/5k train/val split
    c.data.augment = "pad_crop_flip"  # 4-px pad, random 32×32 crop, horizontal flip
    c.batch_size = 128
    c.total_steps = 64_000  # "terminate training at 64k iterations"
    c.optim.lr = 0.1
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "step"
    c.optim.decay_steps = (32_000, 48_000)  # ÷10 at 32k and 48k iterations
    if c.model.name in ("resnet110", "resnet1202", "plain110"):
        # "we use 0.01 to warm up the training until the training error is below 80% (about
        # 400 iterations), and then go back to 0.1"
        c.optim.warmup_steps = 400
        c.optim.warmup_lr = 0.01
    c.log_every_steps = 100
    c.eval_every_steps = 2000
    c.checkpoint_every_steps = 2000
    return lock(c)
