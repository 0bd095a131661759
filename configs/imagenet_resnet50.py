"""ResNet-50 (v1.5) on ImageNet, the standard recipe of torchvision's reference (76.13% top-1).

    python -m resjax.train --config=configs/imagenet_resnet50.py --workdir=runs/in_r50

Expected: ~76% top-1 (~24% top-1 error, ~7% top-5) on the validation set, reported as the test
split. Needs `imagenet2012` prepared as array_record in the TFDS data dir (the stock builder
needs TensorFlow to prepare it: `pip install 'resjax[tf]'`); train images are decoded per batch
with random-resized-crop 224 + flip, eval with resize 256 + centre crop 224. Arg: a model name
(resnet18…resnet200). 90 epochs: roughly a day on 8 GPUs with bf16.
"""

from resjax.config import base_config, lock


def get_config(arg: str | None = None):
    c = base_config()
    c.model.name = arg or "resnet50"
    c.data.name = "imagenet2012"
    c.data.val_examples = 0  # ImageNet's validation split serves as the test split
    c.dtype = "bfloat16"  # compute in bf16 on GPU/TPU; parameters stay float32
    c.batch_size = 256  # He et al. 2015, sec. 3.4
    c.total_epochs = 90.0
    c.optim.lr = 0.1
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "step"
    c.optim.decay_epochs = (30.0, 60.0)  # ÷10 every 30 epochs (torchvision reference)
    c.eval_batch_size = 1000
    c.log_every_steps = 100
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 2500
    return lock(c)
