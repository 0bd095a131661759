"""The base experiment config every file in configs/ starts from, and the facts about its keys.

A config file calls `base_config()`, sets what its experiment changes, and returns it locked
(see `lock`). Fields that default to None are `placeholder`s so that `--config.x=...` can set
them with type checking. Below it: which keys may change when a run resumes (`SAFE_ON_RESUME`),
which only say where things are (`WHERE_KEYS`) and the `get_model` overrides a config asks for
(`model_overrides`). What a sweep's point strings mean is the sweep's config file's business
(configs/depth_sweep.py: 'depth=56,plain=1'). Imports ml_collections only: no JAX.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by all experiments: ResNet-20 on Fashion-MNIST, He et al. 2015's recipe."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # the only seed; data order, init and dropout RNGs all derive from it

    # --- model (resjax.models.get_model(name, **overrides)) ---
    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet20"
    # Overrides of ResNet fields; None keeps the registry's value for `name`.
    o = c.model.overrides = ml_collections.ConfigDict()
    o.residual = config_dict.placeholder(bool)  # False = He et al.'s plain baseline, same layers
    o.shortcut = config_dict.placeholder(str)  # 'A' | 'B' | 'C' | 'conv'
    o.ordering = config_dict.placeholder(str)  # 'post' | 'pre' | 'relu_bn_conv'
    o.widths = config_dict.placeholder(tuple)  # per stage, e.g. (16, 32, 64)
    o.stem_width = config_dict.placeholder(int)
    o.zero_init_last_bn = config_dict.placeholder(bool)
    o.drop_path_rate = config_dict.placeholder(float)
    o.scan = config_dict.placeholder(bool)  # nn.scan over identical blocks: flat compile time
    o.remat = config_dict.placeholder(bool)  # recompute activations in the backward pass
    o.cpu_convs = config_dict.placeholder(bool)  # None: on for the CPU (models/conv.py)
    c.dtype = "float32"  # computation dtype; parameters stay float32 ("bfloat16" on GPU/TPU)

    # --- data (resjax.data) ---
    c.data = ml_collections.ConfigDict()
    c.data.name = "fashion_mnist"  # any TFDS name; resjax builds fashion_mnist/mnist/cifar10/100
    c.data.train_split = "train"  # TFDS split string; train and val are carved from it
    c.data.test_split = config_dict.placeholder(str)  # None: 'test' (or 'validation')
    c.data.dir = config_dict.placeholder(str)  # None: $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.manual_dir = config_dict.placeholder(str)  # where offline source archives lie
    c.data.val_examples = 5000  # carved from the end of train (He et al.: 45k/5k); 0 = none
    c.data.augment = "pad_crop_flip"  # 'pad_crop_flip' | 'pad_crop' | 'none'
    c.data.pad_px = 4  # He et al. 2015, sec. 4.2
    c.data.random_erase = 0.0  # probability of erasing a random box (Zhong et al. 2017: 0.5)
    c.data.normalize = True  # per-channel mean/std of the training split
    c.data.prefetch_batches = 2  # batches put on device ahead of use
    # Datasets read from disk (JPEG, ImageNet-style): processes that decode and crop batches
    # (None: one per CPU this process may use; 0: threads of the main process instead) ...
    c.data.workers = config_dict.placeholder(int)
    # ... what an image that does not decode does: 'error' (names the example) | 'skip'
    # (training: its slot takes the next example of the batch; eval: masked out; counted).
    c.data.corrupt_images = "error"
    # Read the dataset re-encoded with its shorter side at this many pixels (prepared once with
    # `python -m resjax.data.resize`; fast ImageNet setups train from 256 or 160 px: fewer
    # pixels to decode per image).
    c.data.short_side = config_dict.placeholder(int)

    # --- optimisation (resjax.optim) ---
    c.batch_size = 128  # global, over all devices and processes
    c.total_steps = config_dict.placeholder(int)  # when set, wins over total_epochs
    c.total_epochs = config_dict.placeholder(float)
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 0.1  # He et al. 2015, sec. 4.2
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.weight_decay = 1e-4  # L2 added to the loss gradient, as He et al.
    c.optim.decoupled_weight_decay = False  # True: AdamW-style decay applied by the optimizer
    c.optim.exclude_bn_and_bias = False  # He et al. decay every weight
    c.optim.schedule = "step"  # 'step' | 'cosine' | 'constant'
    c.optim.decay_steps = config_dict.placeholder(tuple)  # ÷decay_factor at these steps (wins)
    c.optim.decay_epochs = config_dict.placeholder(tuple)  # ... or at these epochs
    c.optim.decay_factor = 0.1
    c.optim.warmup_steps = 0
    c.optim.warmup_lr = 0.0  # constant warm-up lr (He et al. ResNet-110: 0.01); 0 = linear ramp
    c.optim.label_smoothing = 0.0
    c.optim.grad_clip_norm = config_dict.placeholder(float)

    # --- parallelism ---
    c.parallelism = "jit"  # 'jit' (global arrays on a Mesh) | 'pmap'
    c.bn_stats = "global"  # 'global': over the whole batch | 'per_device': ghost BN per device

    # --- logging, eval, checkpoints: every N steps (0 = never), or, where the steps are set
    # to None, every N epochs (converted once the data's steps per epoch are known) ---
    # (typed references, so that a config may set one to None and the command line still
    # type-checks `--config.eval_every_steps=N`)
    c.log_every_steps = config_dict.FieldReference(100, field_type=int)
    c.eval_every_steps = config_dict.FieldReference(1000, field_type=int)
    c.checkpoint_every_steps = config_dict.FieldReference(1000, field_type=int)
    c.diagnostics_every_steps = 0  # 0 = off
    c.log_every_epochs = config_dict.placeholder(float)
    c.eval_every_epochs = config_dict.placeholder(float)
    c.checkpoint_every_epochs = config_dict.placeholder(float)
    c.keep_checkpoints = 2  # latest N, plus the best by validation error
    # Persistent XLA compilation cache: a rerun (or another sweep point of the same shape)
    # loads compiled steps instead of compiling again. None = off.
    c.compilation_cache_dir = config_dict.placeholder(str)
    c.eval_batch_size = 1000
    # At the end, also evaluate the final weights on the training examples (BatchNorm in eval
    # mode, no augmentation): 'train_eval_error', the training error without the noise of a
    # running mean over batches whose weights kept changing. One more pass over the train split.
    c.eval_train_at_end = False
    return c


def he2015_cifar10(c: ml_collections.ConfigDict, depth: int | None) -> None:
    """Sets He et al. 2015's CIFAR-10 recipe (sec. 4.2) on `c`, for their network of `depth`
    layers (None: another network, trained with the recipe without the deep nets' warm-up).

    45k/5k train/val split; 4-px pad, random 32x32 crop, horizontal flip; 64k steps of batch
    128; SGD, lr 0.1 ÷10 at 32k and 48k steps, momentum 0.9, weight decay 1e-4. From depth 110
    on, "0.1 is slightly too large to start converging": the paper uses 0.01 until the training
    error is below 80% ("about 400 iterations"), then 0.1 (and the same for ResNet-1202); here the
    warm-up is those 400 steps at 0.01, fixed, so that a run is a pure function of its config.
    Logging every 200 steps: the report's final training error is the mean over the last window,
    25,600 examples (0.57 epoch), half the sampling noise of a 100-step window, while 320 points
    still draw the curves of their Fig. 6. Evaluation and checkpoints every 2,000 steps.
    """
    c.data.name = "cifar10"
    c.data.val_examples = 5000  # 45k/5k train/val split
    c.data.augment = "pad_crop_flip"  # 4-px pad, random 32x32 crop, horizontal flip
    c.data.pad_px = 4
    c.batch_size = 128
    c.total_steps = 64_000  # "terminate training at 64k iterations"
    c.optim.lr = 0.1
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "step"
    c.optim.decay_steps = (32_000, 48_000)  # ÷10 at 32k and 48k iterations
    if depth is not None and depth >= 110:
        c.optim.warmup_steps = 400
        c.optim.warmup_lr = 0.01
    c.log_every_steps = 200
    c.eval_every_steps = 2000
    c.checkpoint_every_steps = 2000


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks a config so that an unknown key (a typo) is an error, not a silent new field."""
    config.lock()
    return config


# --- what may differ between two runs of one experiment ---

# Keys that say where things are, not what is trained: a finished sweep point may differ in them.
WHERE_KEYS = ("data.dir", "data.manual_dir", "data.prefetch_batches", "data.workers")
# Keys that may change when a run resumes: they alter how long it runs, what it logs or where
# things are, not what a step computes. Any other difference from the checkpointed run is refused.
SAFE_ON_RESUME = (
    "total_steps",
    "total_epochs",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "log_every_epochs",
    "eval_every_epochs",
    "checkpoint_every_epochs",
    "keep_checkpoints",
    "diagnostics_every_steps",
    "eval_batch_size",
    "eval_train_at_end",
    *WHERE_KEYS,
    "compilation_cache_dir",
    # A run stopped by a corrupt image resumes with 'skip': only batches that would have
    # stopped it change.
    "data.corrupt_images",
    "model.overrides.cpu_convs",  # same numbers, another XLA:CPU formulation (models/conv.py)
)


def model_overrides(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
    """The `get_model(config.model.name, **overrides)` overrides a config asks for (what export
    records beside the weights): the set `config.model.overrides`, num_classes and dtype."""
    overrides = {k: v for k, v in config.model.overrides.items() if v is not None}
    overrides.setdefault("num_classes", num_classes)
    overrides["dtype"] = config.dtype
    return overrides


def data_config_of(
    recorded: dict[str, Any] | None, dataset: str | None, data_dir: str | None
) -> ml_collections.ConfigDict:
    """`config.data` as the weights were trained with, `dataset`/`data_dir` set where given."""
    config = base_config().data
    if recorded is not None:  # what was trained on, not where it lay on that machine
        where = {key.removeprefix("data.") for key in WHERE_KEYS}
        trained = recorded.get("data", {}).items()
        config.update({k: v for k, v in trained if k in config and k not in where})
    elif dataset is None:
        raise ValueError(
            "the weights file records no training config; say which data with --dataset=NAME"
        )
    if dataset is not None:
        config.name = dataset
    if data_dir is not None:
        config.dir = data_dir
    return config
