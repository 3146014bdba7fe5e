"""malign: multilingual ALIGN image-text dual encoders on TensorFlow and Keras 3.

``import malign`` registers every class that malign writes into a ``.keras`` file
(models, layers, optimizers, learning-rate schedules, constraints, tokenizer layers),
so ``keras.saving.load_model(path)`` works after it alone, in any process.

Example:
    >>> import malign
    >>> model = malign.AlignModel.from_preset("tiny")
    >>> model.embedding_dim
    32
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's default CPU allocator gives each tensor to malloc, which serves large ones
# with fresh mmaps: every step's activations are page-faulted in again (tiny preset at
# 224 px, batch 32: 3.5 s a step, half of it in the kernel). Its pooling BFC allocator
# reuses them: 1.7 s (benchmarks/RESULTS.md, "The 224 px tiny step"). Read when TensorFlow
# first allocates on the CPU, so it takes effect when malign is imported first; a value the
# user set is kept (TF_CPU_ALLOCATOR_USE_BFC=0 turns it off).
_os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "1")

from malign import config, distributed, losses, presets  # noqa: E402
from malign.models import AlignModel, ImageTower, TextTower  # noqa: E402

# Modules that define Keras-serialisable classes (optimizers, schedules, tokenizer
# layers). They are imported here, not lazily, because a `.keras` file can only be
# loaded once its classes are registered: tests/test_serialization.py checks that
# every such class of the package is registered after `import malign` alone.
from malign import text, training  # noqa: E402,F401  isort: skip

__version__ = "0.1.0"

# Sub-packages loaded lazily as attributes (malign.data, malign.evaluation, ...): they
# define nothing that Keras serialises.
_LAZY = ("data", "evaluation", "export", "convert", "demo", "search")


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"malign.{name}")
    raise AttributeError(f"module 'malign' has no attribute {name!r}")


__all__ = ["AlignModel", "ImageTower", "TextTower", "config", "distributed", "losses",
           "presets", "text", "training", "__version__"]
