"""Data input: TFDS datasets read without TensorFlow, prepared offline, sharded per process.

```python
from resjax import data
splits = data.load_splits(config.data)           # prepares on first use
it = data.TrainIterator(splits, global_batch_size=config.batch_size, seed=config.seed,
                        data_config=config.data, mesh=mesh, normalize_on_host=False)
batch = next(it)             # {'image': uint8, 'label'}; it.get_state() to checkpoint
x = splits.normalize_images(batch['image'])       # inside the jitted step: float32 input
for batch in data.eval_batches(splits.test, splits, global_batch_size=config.eval_batch_size,
                               mesh=mesh):       # {'image', 'label', 'mask'}, float32 images
    ...
```

Datasets held in RAM are augmented vectorised in numpy; datasets read from disk (JPEG,
ImageNet-style) are decoded in worker processes (`config.data.workers`, with grain).
"""

from resjax.data.errors import (
    CorruptExampleError,
    CorruptSourceError,
    DataError,
    DataWorkerError,
    MissingDataError,
    NeedsTensorFlowError,
    SplitError,
    UnknownDatasetError,
)
from resjax.data.pipeline import TrainIterator, eval_batches
from resjax.data.sources import ArraySource, Splits, StreamSource, dataset_names, load_splits

__all__ = [
    "ArraySource",
    "CorruptExampleError",
    "CorruptSourceError",
    "DataError",
    "DataWorkerError",
    "MissingDataError",
    "NeedsTensorFlowError",
    "SplitError",
    "Splits",
    "StreamSource",
    "TrainIterator",
    "UnknownDatasetError",
    "dataset_names",
    "eval_batches",
    "load_splits",
]
