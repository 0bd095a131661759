"""Data input: TFDS datasets read without TensorFlow, prepared offline, sharded per process.

```python
from resjax import data
splits = data.load_splits(config.data)           # prepares on first use
it = data.TrainIterator(splits, global_batch_size=config.batch_size, seed=config.seed,
                        data_config=config.data, mesh=mesh)
batch = next(it)                                  # {'image', 'label'}; it.get_state() to checkpoint
for batch in data.eval_batches(splits.test, splits, global_batch_size=config.eval_batch_size,
                               mesh=mesh):       # {'image', 'label', 'mask'}
    ...
```
"""

from resjax.data.errors import (
    CorruptSourceError,
    DataError,
    MissingDataError,
    NeedsTensorFlowError,
    SplitError,
    UnknownDatasetError,
)
from resjax.data.pipeline import TrainIterator, eval_batches
from resjax.data.sources import ArraySource, Splits, StreamSource, dataset_names, load_splits

__all__ = [
    "ArraySource",
    "CorruptSourceError",
    "DataError",
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
