"""SavedModels for TF Serving: raw strings and encoded image bytes in, unit embeddings out.

- :mod:`malign.export.saved_model`: ``export_saved_model``, the signatures, the model card.
- :mod:`malign.export.commands`: ``malign export``.

See :mod:`malign.export.saved_model` for the signatures and an example.
"""

from malign.export.saved_model import (
    EMBED_IMAGE,
    EMBED_TEXT,
    IMAGE_INPUT,
    MODEL_CARD_PATH,
    SERVING_DEFAULT,
    TEXT_INPUT,
    TOWERS,
    decode_images,
    export_saved_model,
    next_version,
    read_model_card,
    training_record,
)

__all__ = [
    "EMBED_IMAGE",
    "EMBED_TEXT",
    "IMAGE_INPUT",
    "MODEL_CARD_PATH",
    "SERVING_DEFAULT",
    "TEXT_INPUT",
    "TOWERS",
    "decode_images",
    "export_saved_model",
    "next_version",
    "read_model_card",
    "training_record",
]
