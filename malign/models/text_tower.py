"""BERT text tower: keras-hub ``BertBackbone``, the ``[CLS]`` state, a projection.

The embedding is the final hidden state at position 0 (``[CLS]``), not BERT's
tanh pooler, projected linearly to the image embedding's width, as in ALIGN and
the transformers ``AlignTextModel`` + ``text_projection``. Outside XLA the backbone runs on
the batch's real tokens only (``malign.models.unpadded_bert``): the same result without
the matmuls on padding.

Example:
    >>> from malign.config import TextTowerConfig
    >>> cfg = TextTowerConfig(vocabulary_size=100, num_layers=1, num_heads=2, hidden_dim=16,
    ...                       intermediate_dim=32, sequence_length=8, projection_dim=8)
    >>> tower = TextTower(cfg)
    >>> ids = np.array([[2, 10, 3, 0, 0, 0, 0, 0]], "int32")
    >>> tower({"token_ids": ids, "padding_mask": (ids > 0).astype("int32")}).shape
    TensorShape([1, 8])
"""

from __future__ import annotations

import keras
import keras_hub
import numpy as np  # noqa: F401  (used in the docstring example)

from malign.config import TextTowerConfig
from malign.models import unpadded_bert


@keras.saving.register_keras_serializable(package="malign")
class TextTower(keras.Model):
    """Text encoder: ``{"token_ids", "padding_mask"}`` int32 [B, L] -> [B, D].

    Args:
        config: a ``TextTowerConfig`` (or its dict).
        **kwargs: ``keras.Model`` arguments (name, dtype).

    Example:
        >>> from malign.presets import get_preset
        >>> TextTower(get_preset("tiny").text).output_dim
        32
    """

    def __init__(self, config: TextTowerConfig | dict, **kwargs):
        if isinstance(config, dict):
            config = TextTowerConfig.from_dict(config)
        config.validate()
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=config.vocabulary_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            hidden_dim=config.hidden_dim,
            intermediate_dim=config.intermediate_dim,
            dropout=config.dropout,
            max_sequence_length=config.max_sequence_length,
            name="bert",
        )
        # The tanh pooler is not used (ALIGN embeds the [CLS] state); freeze it so it gets
        # no optimizer slots. It is kept so checkpoints with a pooler load completely.
        backbone.get_layer("pooled_dense").trainable = False
        if config.activation == "gelu":
            # BertBackbone fixes the tanh GELU; transformers BERT checkpoints use the exact one.
            for i in range(config.num_layers):
                layer = backbone.get_layer(f"transformer_layer_{i}")
                layer.activation = keras.activations.gelu
                layer._feedforward_intermediate_dense.activation = keras.activations.gelu
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
        segment_ids = keras.ops.zeros_like(token_ids)
        sequence = backbone(
            {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}
        )["sequence_output"]
        x = sequence[:, 0, :]
        if config.projection_dim:
            x = keras.layers.Dense(config.projection_dim, name="text_projection")(x)
        super().__init__(
            inputs={"token_ids": token_ids, "padding_mask": padding_mask}, outputs=x, **kwargs
        )
        self.backbone = backbone
        self.tower_config = config
        self.output_dim = config.projection_dim or config.hidden_dim
        #: Recompute each BERT layer's activations in the backward pass (``training.remat``).
        self.remat = False
        #: Run BERT on real tokens only (``malign.models.unpadded_bert``) outside XLA.
        self.unpadded = True
        for i in range(config.num_layers):
            _recompute_when_asked(backbone.get_layer(f"transformer_layer_{i}"), self)

    def call(self, inputs, training=None, mask=None):
        """``{"token_ids", "padding_mask"}`` [B, L] -> [B, D] (the class docstring).

        Outside XLA (CPU and GPU graphs without ``jit_compile``), BERT runs on the real
        tokens only (``unpadded_bert.cls_states``): same result, no matmuls on padding.
        Under XLA (TPU, ``jit_compile=True``), whose shapes must be static, and with
        ``unpadded = False``, it runs the padded keras-hub backbone.
        """
        if not self.unpadded or unpadded_bert.in_xla_context():
            return super().call(inputs, training=training, mask=mask)
        wrap = None
        if self.remat:
            from malign.models import remat

            wrap = remat.recompute_grad
        x = unpadded_bert.cls_states(self.backbone, inputs["token_ids"],
                                     inputs["padding_mask"], training=training,
                                     wrap_layer=wrap)
        if self.tower_config.projection_dim:
            x = self.get_layer("text_projection")(x)
        return x

    def get_config(self) -> dict:
        return {"config": self.tower_config.to_dict(), "name": self.name,
                "trainable": self.trainable}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


def _recompute_when_asked(layer: keras.layers.Layer, tower: TextTower) -> None:
    """Makes ``layer.call`` recompute its activations in the backward pass while
    ``tower.remat`` is on (``malign.models.remat``); otherwise it runs as before."""
    original = layer.call

    def call(inputs, *args, **kwargs):
        if not tower.remat:
            return original(inputs, *args, **kwargs)
        from malign.models import remat

        return remat.recompute_grad(lambda x: original(x, *args, **kwargs), layer)(inputs)

    layer.call = call
