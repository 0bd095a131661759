"""Exceptions of resjax.data: each message is one line that says what is allowed or what to do."""

from __future__ import annotations

TF_EXTRA = "pip install 'resjax[tf]'"


class DataError(ValueError):
    """Base class of resjax.data errors, so that a caller can catch them all."""


class UnknownDatasetError(DataError):
    """The dataset name is neither one of resjax's builders nor a TFDS dataset."""


class MissingDataError(DataError):
    """The dataset is not prepared and its source files can be neither found nor downloaded."""


class CorruptSourceError(DataError):
    """A source archive is truncated, corrupt or not the upstream file."""


class SplitError(DataError):
    """A split string names no split of the dataset or is not a valid TFDS slice."""


class NeedsTensorFlowError(DataError):
    """The dataset can only be read or prepared with TensorFlow installed."""


class CorruptExampleError(DataError):
    """An example's image does not decode (a corrupt or truncated JPEG); the message names it."""


class DataWorkerError(DataError):
    """A worker process that decodes batches died (killed, e.g. for memory, or crashed)."""
