"""resjax.models: residual blocks and networks. Imports only jax, flax and numpy.

from resjax.models import ResidualBlock, BottleneckBlock, ResNet, get_model, list_models
model = get_model("resnet56")                      # CIFAR, option A, 853,018 parameters
variables = model.init(jax.random.key(0), x, train=False)
logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
"""

from resjax.models.batchnorm import BatchNorm
from resjax.models.blocks import BottleneckBlock, ResidualBlock
from resjax.models.conv import Conv
from resjax.models.portable import load_params, save_params
from resjax.models.registry import (
    cifar_resnet,
    get_model,
    imagenet_resnet,
    list_models,
    preact_cifar_resnet,
    wide_resnet,
)
from resjax.models.resnet import ResNet
from resjax.models.summary import count_params, default_input_shape, init_shapes

__all__ = [
    "BatchNorm",
    "BottleneckBlock",
    "Conv",
    "ResNet",
    "ResidualBlock",
    "cifar_resnet",
    "count_params",
    "default_input_shape",
    "get_model",
    "imagenet_resnet",
    "init_shapes",
    "list_models",
    "load_params",
    "preact_cifar_resnet",
    "save_params",
    "wide_resnet",
]
