"""Named model configurations.

- ``tiny``: a few tens of thousands of parameters, 32 px, no dropout: tests.
- ``align-base``: the layout of the released ``kakaobrain/align-base``
  (EfficientNet-B7 without top conv, 640-d; BERT-base uncased, 30522 WordPiece),
  evaluated and served with its processor's crop (``eval_resize="square"``: 346x346,
  centre 289), as a converted checkpoint is.
- ``malign-b7-mbert``: the same image tower with a multilingual BERT-base over a
  250k shared SentencePiece vocabulary.
- ``student-b0-small``: EfficientNet-B0 + a 6-layer, 512-wide BERT over the full 250k
  shared vocabulary, projected to 640. Not small: 128M of its weights are the token
  embedding. It is the layout vocabulary trimming starts from (``TRIMMED_FORMS``).
- ``student-b0-trimmed``: the same towers over a trimmed vocabulary (``malign tokenizer
  trim``), 32,000 pieces by default; set ``vocabulary_size`` to the trimmed tokenizer's
  size (``malign train`` checks that they agree). A quarter of ``malign-b7-mbert`` allows up
  to 120,382 pieces (``max_vocabulary_within``).
- ``student-b0-bert-mini``: EfficientNet-B0 + a 4-layer, 256-wide BERT (BERT-mini: 4 heads,
  1024 feed-forward) over align-base's 30522 WordPiece vocabulary (or a trimmed one),
  projected to 640: a student of ``align-base`` that reads the teacher's tokens.

The students embed into 640 dimensions, the B7 teachers' width, so distillation compares
embeddings directly (a student of another width needs the Distiller's learned linear map).
Their images are 224 px, B0's size; the towers pool globally, so they take any size.
``STUDENT_TEACHERS`` names each small student's teacher. Weights, as ``count_preset_weights``
computes them without building a model (equal to ``count_params`` of the built model:
batch-norm statistics, the frozen BERT pooler and the temperature included):

======================== ============ =============== ============ ============ ==========================
preset                   total        token embedding image tower  text tower   share of teacher
======================== ============ =============== ============ ============ ==========================
``tiny``                 66,239       32,000          13,886       52,352
``align-base``           172,423,441  23,440,896      62,449,040   109,974,400
``malign-b7-mbert``      340,982,545  192,000,000     62,449,040   278,533,504
``student-b0-small``     151,609,757  128,000,000     3,840,284    147,769,472  0.445 of malign-b7-mbert
``student-b0-trimmed``   39,993,757   16,384,000      3,840,284    36,153,472   0.117 of malign-b7-mbert
``student-b0-bert-mini`` 15,175,325   7,813,632       3,840,284    11,335,040   0.088 of align-base
======================== ============ =============== ============ ============ ==========================

(Text tower = token embedding + the rest; total = both towers + the temperature.)

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
from malign.models.sizes import WeightCount, count_model_weights

__all__ = [
    "PRESETS",
    "STUDENT_TEACHERS",
    "TRIMMED_FORMS",
    "count_preset_weights",
    "get_preset",
    "list_presets",
    "max_vocabulary_within",
    "weight_breakdown",
]

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

# EfficientNet-B0 without top conv (320 pooled channels), projected to the B7 teachers' 640.
_B0_STUDENT = ImageTowerConfig(
    width_coefficient=1.0, depth_coefficient=1.0, image_size=224, top_filters=0,
    projection_dim=640, drop_connect_rate=0.1,
)

# A 6-layer, 512-wide BERT over the 250k shared SentencePiece vocabulary, projected to 640.
_BERT_6x512 = TextTowerConfig(
    vocabulary_size=250_000, num_layers=6, num_heads=8, hidden_dim=512, intermediate_dim=2048,
    dropout=0.1, max_sequence_length=512, sequence_length=64, projection_dim=640,
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
    "student-b0-small": ModelConfig(image=_B0_STUDENT, text=_BERT_6x512),
    "student-b0-trimmed": ModelConfig(
        image=_B0_STUDENT, text=dataclasses.replace(_BERT_6x512, vocabulary_size=32_000),
    ),
    "student-b0-bert-mini": ModelConfig(
        image=_B0_STUDENT,
        text=TextTowerConfig(
            vocabulary_size=30522, num_layers=4, num_heads=4, hidden_dim=256,
            intermediate_dim=1024, dropout=0.1, max_sequence_length=512, sequence_length=64,
            projection_dim=640,
        ),
    ),
}

#: The teacher each small student is sized for: its weights are at most a quarter of the
#: teacher's (``count_preset_weights``), its embedding width equals the teacher's (640) and
#: it reads the teacher's kind of vocabulary (a trimmed copy of the teacher's SentencePiece
#: model for ``student-b0-trimmed``; align-base's WordPiece for ``student-b0-bert-mini``).
STUDENT_TEACHERS: dict[str, str] = {
    "student-b0-trimmed": "malign-b7-mbert",
    "student-b0-bert-mini": "align-base",
}

#: Full-vocabulary students and the small preset their vocabulary trimming gives: the two
#: configs differ only in ``text.vocabulary_size`` (``malign tokenizer trim --keras-model``
#: turns a trained ``student-b0-small`` into a ``student-b0-trimmed`` of the trimmed size).
TRIMMED_FORMS: dict[str, str] = {"student-b0-small": "student-b0-trimmed"}


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


def _config_of(name_or_config: str | ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    if isinstance(name_or_config, ModelConfig):
        config = name_or_config
        if overrides:
            config = config.with_overrides(resolve_overrides(overrides))
        config.validate()
        return config
    if isinstance(name_or_config, str):
        return get_preset(name_or_config, **overrides)
    raise TypeError(f"expected a preset name or a ModelConfig, got {type(name_or_config).__name__}")


def weight_breakdown(name_or_config: str | ModelConfig, **overrides: Any) -> WeightCount:
    """A preset's (or config's) weights by part, by arithmetic: no model is built.

    Args:
        name_or_config: a preset name or a ``ModelConfig``.
        **overrides: config field names and values, as for ``get_preset``.

    Returns:
        A ``malign.models.sizes.WeightCount`` (``image_tower``, ``token_embedding``,
        ``text_rest``, ``model``; ``text_tower`` and ``total`` properties).

    Raises:
        ConfigError: unknown preset or field, or an invalid resulting config.

    Example:
        >>> weight_breakdown("student-b0-trimmed").token_embedding
        16384000
    """
    return count_model_weights(_config_of(name_or_config, overrides))


def count_preset_weights(name_or_config: str | ModelConfig, **overrides: Any) -> int:
    """Every weight of the model a preset builds (as ``count_params``), without building it.

    Runs without TensorFlow: exact arithmetic over the EfficientNet blocks and the BERT layers
    (``malign.models.sizes``), batch-norm statistics, the frozen pooler and the temperature
    included.

    Args:
        name_or_config: a preset name or a ``ModelConfig``.
        **overrides: config field names and values, as for ``get_preset``.

    Raises:
        ConfigError: unknown preset or field, or an invalid resulting config.

    Example:
        >>> count_preset_weights("tiny"), count_preset_weights("align-base")
        (66239, 172423441)
        >>> count_preset_weights("student-b0-trimmed", vocabulary_size=18000)
        32825757
    """
    return weight_breakdown(name_or_config, **overrides).total


def max_vocabulary_within(student: str | ModelConfig, budget: int) -> int:
    """The largest ``vocabulary_size`` with which ``student`` has at most ``budget`` weights.

    Args:
        student: a preset name or a ``ModelConfig``; every field but the vocabulary is kept.
        budget: the most weights allowed, e.g. a quarter of the teacher's.

    Raises:
        ValueError: when even the smallest vocabulary (8 pieces) exceeds the budget.

    Example:
        >>> max_vocabulary_within("student-b0-trimmed", count_preset_weights("malign-b7-mbert") // 4)
        120382
    """
    count = weight_breakdown(student)
    config = _config_of(student, {})
    fixed = count.total - count.token_embedding
    largest = (budget - fixed) // config.text.hidden_dim
    if largest < 8:
        raise ValueError(f"the student's {fixed:,} weights outside its token embedding already "
                         f"reach the budget of {budget:,}")
    return int(largest)
