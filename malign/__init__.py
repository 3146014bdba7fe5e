"""malign: multilingual ALIGN image-text dual encoders on TensorFlow and Keras 3.

Example:
    >>> import malign
    >>> model = malign.AlignModel.from_preset("tiny")
    >>> model.embedding_dim
    32
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from malign import config, distributed, losses, presets  # noqa: E402
from malign.models import AlignModel, ImageTower, TextTower  # noqa: E402

__version__ = "0.1.0"

# Sub-packages loaded lazily as attributes (malign.text, malign.data, ...), so that
# `import malign` stays cheap and a broken optional part does not break the core.
_LAZY = ("text", "data", "training", "evaluation", "export", "convert")


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"malign.{name}")
    raise AttributeError(f"module 'malign' has no attribute {name!r}")


__all__ = ["AlignModel", "ImageTower", "TextTower", "config", "distributed", "losses",
           "presets", "__version__"]
