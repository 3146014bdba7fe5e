"""Named model configurations.

- ``tiny``: a few tens of thousands of parameters, 32 px, no dropout: tests.
- ``align-base``: the layout of the released ``kakaobrain/align-base``
  (EfficientNet-B7 without top conv, 640-d; BERT-base uncased, 30522 WordPiece),
  evaluated and served with its processor's crop (``eval_resize="square"``: 346x346,
  centre 289), as a converted checkpoint is.
- ``malign-b7-mbert``: the same image tower with a multilingual BERT-base over a
  250k shared SentencePiece vocabulary.
- ``student-b0-small``: EfficientNet-B0 + a 6-layer, 512-wide BERT over the shared
  vocabulary, projected to 640 so it can be distilled from a B7 teacher.

Overrides take config field names: a bare name that exists in exactly one of the
model, image and text configs (``image_size``, ``vocabulary_size``,
``sequence_length``, ``temperature_init`` ...), or a dotted one for the ambiguous
(``**{"text.projection_dim": 64}``).

Example:
    >>> cfg = get_preset("tiny", vocabulary_size=8000)
    >>> cfg.text.vocabulary_size, cfg.image.image_size
    (8000, 32)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from malign.config import ConfigError, ImageTowerConfig, ModelConfig, TextTowerConfig

__all__ = ["PRESETS", "get_preset", "list_presets"]

_TINY_STAGES = ((3, 1, 16, 16, 1, 1), (3, 1, 16, 24, 4, 2), (3, 1, 24, 32, 4, 2))

_B7_ALIGN = ImageTowerConfig(
    width_coefficient=2.0,
    depth_coefficient=3.1,
    image_size=289,
    top_filters=0,
    projection_dim=0,
    dropout_rate=0.0,
    drop_connect_rate=0.2,
    batch_norm_epsilon=1e-3,
    batch_norm_momentum=0.99,
    normalization="minus_one_to_one",
)

_BERT_BASE = TextTowerConfig(
    vocabulary_size=30522,
    num_layers=12,
    num_heads=12,
    hidden_dim=768,
    intermediate_dim=3072,
    dropout=0.1,
    max_sequence_length=512,
    sequence_length=64,
    projection_dim=640,
    activation="gelu",  # BERT's exact (erf) GELU, as in the released checkpoint
)

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        image=ImageTowerConfig(
            width_coefficient=1.0, depth_coefficient=1.0, image_size=32, stages=_TINY_STAGES,
            stem_filters=16, top_filters=0, dropout_rate=0.0, drop_connect_rate=0.0,
        ),
        text=TextTowerConfig(
            vocabulary_size=1000, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
            dropout=0.0, max_sequence_length=32, sequence_length=16, projection_dim=32,
        ),
    ),
    # The checkpoint's processor squeezes every image to 346x346 before the 289 crop.
    "align-base": ModelConfig(image=dataclasses.replace(_B7_ALIGN, eval_resize="square"),
                              text=_BERT_BASE),
    "malign-b7-mbert": ModelConfig(
        image=_B7_ALIGN, text=dataclasses.replace(_BERT_BASE, vocabulary_size=250_000),
    ),
    "student-b0-small": ModelConfig(
        image=ImageTowerConfig(
            width_coefficient=1.0, depth_coefficient=1.0, image_size=224, top_filters=0,
            projection_dim=640, drop_connect_rate=0.1,
        ),
        text=TextTowerConfig(
            vocabulary_size=250_000, num_layers=6, num_heads=8, hidden_dim=512,
            intermediate_dim=2048, dropout=0.1, max_sequence_length=512, sequence_length=64,
            projection_dim=640,
        ),
    ),
}


def list_presets() -> list[str]:
    """Names of the built-in presets."""
    return sorted(PRESETS)


def _field_owners(name: str) -> list[str]:
    owners = []
    for section, cls in (("", ModelConfig), ("image.", ImageTowerConfig),
                         ("text.", TextTowerConfig)):
        if name in {f.name for f in dataclasses.fields(cls)} and name not in ("image", "text"):
            owners.append(section + name)
    return owners


def resolve_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Maps bare field names to dotted model-config paths; errors on unknown/ambiguous."""
    resolved = {}
    for key, value in overrides.items():
        if "." in key:
            resolved[key] = value
            continue
        owners = _field_owners(key)
        if not owners:
            raise ConfigError(f"model: unknown field {key!r} in preset overrides")
        if len(owners) > 1:
            raise ConfigError(
                f"model: field {key!r} is ambiguous in preset overrides; use one of "
                + ", ".join(repr(o) for o in owners)
            )
        resolved[owners[0]] = value
    return resolved


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """Returns the validated model config of a preset with overrides applied.

    Args:
        name: a preset name (see ``list_presets()``).
        **overrides: config field names and values.

    Raises:
        ConfigError: unknown preset or field, or an invalid resulting config.

    Example:
        >>> get_preset("tiny", image_size=64).image.image_size
        64
    """
    if name not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {name!r}; available: "
                          + ", ".join(list_presets()))
    config = PRESETS[name]
    if overrides:
        config = config.with_overrides(resolve_overrides(overrides))
    config.validate()
    return config
