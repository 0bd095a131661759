"""ResNet-20 on Fashion-MNIST: one run of He et al.'s CIFAR recipe, at 28×28×1.

    python -m resjax.train --config=configs/fashion_mnist_resnet.py --workdir=runs/fmnist_r20

Expected on a 2-core CPU: see README (results table); an epoch is 430 steps of batch 128.
Arg: a model name, e.g. `configs/fashion_mnist_resnet.py:plain56`.
"""

from resjax.config import base_config, lock


def get_config(arg: str | None = None):
    c = base_config()
    c.model.name = arg or "resnet20"
    c.data.name = "fashion_mnist"
    c.data.val_examples = 5000  # 55k train / 5k val, the 10k test kept apart
    c.data.augment = "pad_crop_flip"  # He et al.'s pad-4 crop + flip, at 28 px
    c.total_epochs = 10.0
    c.optim.decay_epochs = (5.0, 7.5)  # He et al.'s ÷10 at 50% and 75% of training
    c.log_every_steps = 50
    c.eval_every_steps = 430
    c.checkpoint_every_steps = 430
    return lock(c)
