"""Importers of external checkpoints: the transformers ALIGN format (``kakaobrain/align-base``).

- :func:`from_transformers_align` builds a malign ``AlignModel`` from a checkpoint
  directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) with every
  weight copied and checked; ``malign convert transformers-align`` is its command line.
- :func:`transformers_align_tokenizer` is the checkpoint's BERT WordPiece tokenizer
  behind malign's tokenizer interface.
- :func:`read_image_processor` / :func:`processor_image_preprocess` reproduce the
  checkpoint's image processor (resize, centre crop) in TensorFlow.

Example:
    >>> import malign
    >>> model = malign.convert.from_transformers_align("path/to/align-base")  # doctest: +SKIP
    >>> tokenizer = malign.convert.transformers_align_tokenizer("path/to/align-base")  # doctest: +SKIP
    >>> text = model.embed_text(tokenizer(["a photo of a cat"]))  # doctest: +SKIP
"""

from malign.convert.checkpoint import (
    IGNORED_BUFFER_SUFFIXES,
    ConversionError,
    find_weights_files,
    read_transformers_weights,
)
from malign.convert.preprocess import (
    ImageProcessorSettings,
    processor_image_preprocess,
    read_image_processor,
)
from malign.convert.transformers_align import (
    AlignImport,
    config_from_transformers_align,
    from_transformers_align,
    import_transformers_align,
    load_transformers_align_weights,
    read_align_config,
    transformers_align_tokenizer,
    weight_mapping,
)

__all__ = [
    "IGNORED_BUFFER_SUFFIXES",
    "AlignImport",
    "ConversionError",
    "ImageProcessorSettings",
    "config_from_transformers_align",
    "find_weights_files",
    "from_transformers_align",
    "import_transformers_align",
    "load_transformers_align_weights",
    "processor_image_preprocess",
    "read_align_config",
    "read_image_processor",
    "read_transformers_weights",
    "transformers_align_tokenizer",
    "weight_mapping",
]
