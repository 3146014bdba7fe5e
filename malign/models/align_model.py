"""AlignModel: the image-text dual encoder that Keras ``fit`` trains.

Images enter as float32 RGB in [0, 1], text as ``token_ids``/``padding_mask``
int32 [B, L]. Both embeddings come out L2-normalised in float32 (also under a
mixed-precision policy). The temperature is one learnable float32 scalar,
initialised from the config (1.0, like ALIGN); logits are similarities divided
by it, and it is kept inside [min_temperature, max_temperature] by a constraint
applied after every optimizer update.

Example:
    >>> model = AlignModel.from_preset("tiny")
    >>> images = np.random.rand(2, 32, 32, 3).astype("float32")
    >>> ids = np.array([[2, 7, 3] + [0] * 13] * 2, "int32")
    >>> out = model({"image": images, "token_ids": ids, "padding_mask": (ids > 0).astype("int32")})
    >>> out["image_embeddings"].shape, out["text_embeddings"].shape
    (TensorShape([2, 32]), TensorShape([2, 32]))
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from malign import distributed, losses
from malign.config import ModelConfig
from malign.models.image_tower import ImageTower
from malign.models.text_tower import TextTower


@keras.saving.register_keras_serializable(package="malign")
class ClipValue(keras.constraints.Constraint):
    """Keeps a weight inside [low, high] (used for the temperature)."""

    def __init__(self, low: float, high: float):
        self.low = float(low)
        self.high = float(high)

    def __call__(self, w):
        return keras.ops.clip(w, self.low, self.high)

    def get_config(self) -> dict:
        return {"low": self.low, "high": self.high}


def l2_normalize(x):
    """Float32 L2 normalisation along the last axis."""
    x = keras.ops.cast(x, "float32")
    return x * keras.ops.rsqrt(keras.ops.maximum(keras.ops.sum(x * x, axis=-1, keepdims=True),
                                                 1e-12))


class StrategyFitMixin:
    """``fit`` under any strategy for a model built at construction (AlignModel, Distiller).

    - ``train_step``/``test_step`` pass their logs through
      ``distributed.logs_for_keras_reduce`` (the multi-worker log workaround);
    - ``_maybe_symbolic_build`` builds only the optimizer (see its docstring);
    - ``configure_steps`` turns on the large-batch tools of ``TrainingConfig``: gradient
      caching (``train_step`` then runs ``malign.training.grad_cache.train_step``),
      recomputation in the towers and the chunked sigmoid loss.

    A model using it defines ``micro_batch_outputs``, ``trained_outputs`` and
    ``trained_output_keys`` (see ``grad_cache.train_step``).
    """

    #: Examples per micro-batch of gradient caching (None: Keras' own train step).
    micro_batch_size: int | None = None
    #: The outputs whose gradients gradient caching back-propagates through the towers.
    trained_output_keys: tuple[str, ...] = ("image_embeddings", "text_embeddings")

    def configure_steps(self, micro_batch_size: int | None = None, remat: bool = False,
                        sigmoid_chunked: bool = False) -> None:
        """Sets the large-batch tools (``training.micro_batch_size``, ``training.remat``,
        ``training.sigmoid_chunked``); call before the first step is traced.

        Args:
            micro_batch_size: examples per micro-batch (divides the per-replica batch);
                None or 0 = whole batches.
            remat: recompute each EfficientNet stage and BERT layer in the backward pass.
            sigmoid_chunked: compute the sigmoid loss one replica's texts at a time.

        Example:
            >>> model = AlignModel.from_preset("tiny")
            >>> model.configure_steps(micro_batch_size=2, remat=True)
            >>> model.micro_batch_size, model.image_tower.remat, model.text_tower.remat
            (2, True, True)
        """
        self.micro_batch_size = int(micro_batch_size) if micro_batch_size else None
        encoder = getattr(self, "embedding_model", self)
        encoder.image_tower.remat = bool(remat)
        encoder.text_tower.remat = bool(remat)
        encoder.sigmoid_chunked = bool(sigmoid_chunked)

    def micro_batch_outputs(self, x) -> dict:
        """Gradient caching's embedding pass of a micro-batch (training mode)."""
        return self(x, training=True)

    def trained_outputs(self, x) -> dict:
        """Gradient caching's replay of a micro-batch: the outputs to differentiate."""
        return self(x, training=True)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Builds the optimizer without touching data (overrides a Keras 3 internal).

        Keras 3.15 ``fit`` under a strategy takes the first distributed batch and
        all-reduces it (MEAN) to build the model symbolically. Under
        MultiWorkerMirroredStrategy that reduce fails on a dict batch, and it cannot
        average int tensors anywhere. The model is fully built at construction, so
        only the optimizer needs building, which needs no data.
        """
        del iterator, data_batch
        if getattr(self, "_distribute_strategy", None) is None:
            return
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=None)

    def train_step(self, data):
        if self.micro_batch_size:
            from malign.training import grad_cache

            logs = grad_cache.train_step(self, data, self.micro_batch_size)
        else:
            logs = super().train_step(data)
        return distributed.logs_for_keras_reduce(logs)

    def test_step(self, data):
        return distributed.logs_for_keras_reduce(super().test_step(data))


@keras.saving.register_keras_serializable(package="malign")
class AlignModel(StrategyFitMixin, keras.Model):
    """ALIGN dual encoder with a cross-replica contrastive loss.

    Args:
        config: a ``ModelConfig`` (or its dict).
        **kwargs: ``keras.Model`` arguments (name, dtype).

    Example:
        >>> model = AlignModel.from_preset("tiny")
        >>> model.embedding_dim, model.image_size, model.sequence_length
        (32, 32, 16)
    """

    def __init__(self, config: ModelConfig | dict, **kwargs):
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        config.validate()
        kwargs.setdefault("name", "align_model")
        super().__init__(**kwargs)
        self.model_config = config
        self.image_tower = ImageTower(config.image, name="image_tower")
        self.text_tower = TextTower(config.text, name="text_tower")
        self.temperature_variable = self.add_weight(
            name="temperature",
            shape=(),
            dtype="float32",
            initializer=keras.initializers.Constant(config.temperature_init),
            trainable=config.learnable_temperature,
            constraint=ClipValue(config.min_temperature, config.max_temperature),
            autocast=False,
        )
        self.logit_bias = None
        if config.loss == "sigmoid":
            self.logit_bias = self.add_weight(
                name="logit_bias", shape=(), dtype="float32",
                initializer=keras.initializers.Constant(config.sigmoid_bias_init),
                autocast=False,
            )
        self.temperature_tracker = keras.metrics.Mean(name="temperature")
        #: Compute the sigmoid loss one replica's texts at a time (``configure_steps``).
        self.sigmoid_chunked = False
        self.built = True

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> AlignModel:
        """Builds a model from a named preset with config-field overrides.

        Example:
            >>> AlignModel.from_preset("tiny", vocabulary_size=2000).vocabulary_size
            2000
        """
        from malign.presets import get_preset

        return cls(get_preset(name, **overrides))

    def get_config(self) -> dict:
        return {"config": self.model_config.to_dict(), "name": self.name,
                "trainable": self.trainable}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    # -- properties -----------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.model_config.image.image_size

    @property
    def sequence_length(self) -> int:
        return self.model_config.text.sequence_length

    @property
    def vocabulary_size(self) -> int:
        return self.model_config.text.vocabulary_size

    @property
    def embedding_dim(self) -> int:
        return self.image_tower.output_dim

    @property
    def temperature(self):
        """The temperature in use (float32, clipped to the configured range)."""
        return keras.ops.clip(
            keras.ops.convert_to_tensor(self.temperature_variable),
            self.model_config.min_temperature,
            self.model_config.max_temperature,
        )

    # -- forward ------------------------------------------------------------------
    def embed_image(self, images, training: bool = False):
        """Float32 [B, H, W, 3] RGB in [0, 1] -> L2-normalised [B, D] float32."""
        return l2_normalize(self.image_tower(images, training=training))

    def embed_text(self, inputs: dict, training: bool = False):
        """``{"token_ids", "padding_mask"}`` int32 [B, L] -> L2-normalised [B, D] float32."""
        return l2_normalize(self.text_tower(
            {"token_ids": inputs["token_ids"], "padding_mask": inputs["padding_mask"]},
            training=training,
        ))

    def call(self, inputs: dict, training: bool = False) -> dict:
        return {
            "image_embeddings": self.embed_image(inputs["image"], training=training),
            "text_embeddings": self.embed_text(inputs, training=training),
        }

    def similarity_logits(self, image_embeddings, text_embeddings):
        """[N_images, N_texts] logits = similarity / temperature (+ bias for sigmoid)."""
        logits = keras.ops.matmul(image_embeddings, keras.ops.transpose(text_embeddings))
        logits = logits / self.temperature
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits

    # -- training -------------------------------------------------------------------
    def contrastive_loss(self, image_emb, text_emb):
        """This replica's contrastive loss of the config (softmax or sigmoid), unscaled.

        Args:
            image_emb: [b, D] float32 L2-normalised image embeddings of this replica.
            text_emb: [b, D] float32 L2-normalised text embeddings (row i pairs with row i).

        Returns:
            A float32 scalar: ``losses.contrastive_loss`` (label smoothing of the config)
            or ``losses.sigmoid_loss`` (``losses.chunked_sigmoid_loss`` with
            ``sigmoid_chunked``), with negatives from the global batch.
        """
        if self.model_config.loss == "sigmoid":
            sigmoid = losses.chunked_sigmoid_loss if self.sigmoid_chunked else losses.sigmoid_loss
            return sigmoid(image_emb, text_emb, self.temperature, self.logit_bias)
        return losses.contrastive_loss(image_emb, text_emb, self.temperature,
                                       label_smoothing=self.model_config.label_smoothing)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The contrastive loss of this replica, scaled for Keras' gradient sum."""
        del y, sample_weight
        if y_pred is None:
            y_pred = self(x, training=training)
        loss = self.contrastive_loss(y_pred["image_embeddings"], y_pred["text_embeddings"])
        self.temperature_tracker.update_state(self.temperature)
        # The single place where the loss is scaled for replicas (see its docstring).
        return distributed.scale_loss_for_replicas(loss)


def count_params(model: keras.Model) -> int:
    """Total number of weights (trainable and not) of a built model."""
    return int(sum(np.prod(w.shape) for w in model.weights))


__all__ = ["AlignModel", "ClipValue", "StrategyFitMixin", "count_params", "l2_normalize"]
