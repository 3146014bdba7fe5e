"""Distillation: a frozen teacher dual encoder teaches a smaller student, trained with ``fit``.

``Distiller`` holds the student (an ``AlignModel``, the experiment's ``model``), the frozen
teacher (any ``AlignModel``: a trained malign model or a converted ``kakaobrain/align-base``)
and, when their embedding widths differ, learned linear maps from the student's width to
the teacher's. Its loss is the weighted sum (``DistillationConfig``) of

- the student's own contrastive loss over the global batch (``AlignModel.contrastive_loss``);
- ``losses.similarity_kl_loss``: KL(teacher || student) of the image->text and text->image
  similarity distributions over the global batch, at ``distill_temperature``;
- ``losses.embedding_alignment_loss`` of the student's image embeddings with the teacher's;
- ``losses.cross_lingual_distillation_loss`` of the student's text embeddings with the
  teacher's embedding of the caption's pivot-language source (the same caption when it is
  in the pivot language): with an English teacher and Multi30K's parallel captions, the
  student learns to put a German, French or Czech caption where the teacher puts its
  English source (Reimers & Gurevych 2020; Carlsson et al. 2022, Multilingual-CLIP).

The sum is scaled once for the replicas (``distributed.scale_loss_for_replicas``), so the
replicas' summed gradients are the global-batch gradient. Each term is logged unweighted
(progress lines and TensorBoard). Teacher and student may use different tokenizers: the
input pipeline tokenizes the teacher's caption with the teacher's
(``malign.data.teacher_inputs``). With ``distillation.cache_teacher`` the teacher's
embeddings are computed once (``malign.training.teacher_cache``) and the teacher is not
built at all during the steps.

``distill(experiment, workdir)`` is ``malign distill``: the same fit loop as ``train``
(checks before writing, checkpoints, resume, TensorBoard, held-out evaluation of the
student); checkpoints and ``workdir/model.keras`` hold the student alone, an ``AlignModel``
that ``malign eval`` and ``malign export`` load.

Sources: Hinton, Vinyals & Dean 2015 (arXiv:1503.02531); CLIP-KD, Yang et al. 2024
(arXiv:2307.12732); Reimers & Gurevych 2020 (arXiv:2004.09813).

Example:
    >>> from malign.config import DistillationConfig
    >>> from malign.presets import get_preset
    >>> d = Distiller(get_preset("tiny"), get_preset("tiny", projection_dim=48),
    ...               DistillationConfig(teacher="teacher.keras"))
    >>> d.image_projection.kernel.shape, d.teacher.trainable
    ((32, 48), False)
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from malign import distributed, losses
from malign.config import ConfigError, DistillationConfig, ExperimentConfig, ModelConfig
from malign.models.align_model import AlignModel, StrategyFitMixin
from malign.training.fit import TrainingJob, fit_experiment
from malign.training.run_plan import RunPlan

__all__ = ["Distiller", "DistillationJob", "distill", "read_model_config", "TERMS"]

#: The loss terms, in the order they are logged, and their weight's config field.
TERMS = {
    "contrastive": "contrastive_weight",
    "similarity_kl": "similarity_kl_weight",
    "image_alignment": "image_alignment_weight",
    "text_alignment": "text_alignment_weight",
}


@keras.saving.register_keras_serializable(package="malign")
class Distiller(StrategyFitMixin, keras.Model):
    """A student ``AlignModel`` learning from a frozen teacher (see the module docstring).

    Inputs (a batch of ``malign.data.make_dataset(..., teacher=...)``): ``image`` float32
    [b, S, S, 3] in [0, 1], ``token_ids``/``padding_mask`` int32 [b, L] (the student's), and
    either ``teacher_image`` [b, S_t, S_t, 3] with ``teacher_token_ids``/
    ``teacher_padding_mask`` [b, L_t] (the teacher runs, in inference mode), or
    ``teacher_image_embeddings``/``teacher_text_embeddings`` float32 [b, D_t] (cached).

    Args:
        student: the student's ``ModelConfig`` (or its dict).
        teacher: the teacher's ``ModelConfig``; None when its embeddings are cached.
        distillation: the ``DistillationConfig`` (loss weights, temperature, alignment).
        teacher_embedding_dim: the teacher's width when ``teacher`` is None.
        teacher_temperature: the teacher's logit temperature when ``teacher`` is None.
        **kwargs: ``keras.Model`` arguments.

    Raises:
        ConfigError: ``teacher`` and ``teacher_embedding_dim`` both missing.
    """

    def __init__(self, student: ModelConfig | dict, teacher: ModelConfig | dict | None,
                 distillation: DistillationConfig | dict,
                 teacher_embedding_dim: int | None = None, teacher_temperature: float = 1.0,
                 **kwargs):
        if isinstance(distillation, dict):
            distillation = DistillationConfig.from_dict(distillation)
        kwargs.setdefault("name", "distiller")
        super().__init__(**kwargs)
        self.distillation = distillation
        self.student = AlignModel(student, name="student")
        self.teacher = None
        if teacher is not None:
            self.teacher = AlignModel(teacher, name="teacher")
            self.teacher.trainable = False
            teacher_embedding_dim = self.teacher.embedding_dim
        elif teacher_embedding_dim is None:
            raise ConfigError("distillation: a Distiller needs the teacher's model config or, "
                              "with cached teacher embeddings, their width")
        self.teacher_embedding_dim = int(teacher_embedding_dim)
        self.teacher_temperature_value = float(teacher_temperature)
        self.image_projection = self._projection("image_projection",
                                                 distillation.image_alignment_weight)
        self.text_projection = self._projection("text_projection",
                                                distillation.text_alignment_weight)
        self.trackers = {term: keras.metrics.Mean(name=term) for term in TERMS
                         if getattr(distillation, TERMS[term])}
        self.temperature_tracker = keras.metrics.Mean(name="temperature")
        self.built = True

    def _projection(self, name: str, weight: float):
        """A learned linear map student width -> teacher width (None when equal or unused)."""
        if not weight or self.student.embedding_dim == self.teacher_embedding_dim:
            return None
        layer = keras.layers.Dense(self.teacher_embedding_dim, use_bias=False, name=name,
                                   dtype="float32")
        layer.build((None, self.student.embedding_dim))
        return layer

    def get_config(self) -> dict:
        return {
            "student": self.student.model_config.to_dict(),
            "teacher": self.teacher.model_config.to_dict() if self.teacher is not None else None,
            "distillation": self.distillation.to_dict(),
            "teacher_embedding_dim": self.teacher_embedding_dim,
            "teacher_temperature": self.teacher_temperature_value,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    # -- what evaluation and saving use ------------------------------------------------
    @property
    def embedding_model(self) -> AlignModel:
        """The student: what the held-out evaluation embeds with and what is saved."""
        return self.student

    @property
    def temperature(self):
        """The student's temperature (progress lines log it)."""
        return self.student.temperature

    @property
    def teacher_temperature(self):
        if self.teacher is not None:
            return self.teacher.temperature
        return tf.constant(self.teacher_temperature_value, tf.float32)

    def trained_outputs(self, x) -> dict:
        """Gradient caching's replay: the student's embeddings only (the teacher's were
        computed in the embedding pass and get no gradient)."""
        return self.student(x, training=True)

    # -- forward -----------------------------------------------------------------------
    def call(self, inputs: dict, training: bool = False) -> dict:
        out = self.student(inputs, training=training)
        if "teacher_image_embeddings" in inputs:
            teacher_image = tf.cast(inputs["teacher_image_embeddings"], tf.float32)
            teacher_text = tf.cast(inputs["teacher_text_embeddings"], tf.float32)
        elif self.teacher is not None:
            teacher_image = self.teacher.embed_image(inputs["teacher_image"], training=False)
            teacher_text = self.teacher.embed_text(
                {"token_ids": inputs["teacher_token_ids"],
                 "padding_mask": inputs["teacher_padding_mask"]}, training=False)
        else:
            raise ValueError("Distiller without a teacher model needs teacher_image_embeddings "
                             "and teacher_text_embeddings in its inputs (a teacher cache)")
        out["teacher_image_embeddings"] = tf.stop_gradient(teacher_image)
        out["teacher_text_embeddings"] = tf.stop_gradient(teacher_text)
        return out

    def loss_terms(self, y_pred: dict) -> dict[str, tf.Tensor]:
        """The unweighted loss terms with a non-zero weight, this replica's (unscaled)."""
        cfg = self.distillation
        s_i, s_t = y_pred["image_embeddings"], y_pred["text_embeddings"]
        t_i, t_t = y_pred["teacher_image_embeddings"], y_pred["teacher_text_embeddings"]
        terms = {}
        if cfg.contrastive_weight:
            terms["contrastive"] = self.student.contrastive_loss(s_i, s_t)
        if cfg.similarity_kl_weight:
            terms["similarity_kl"] = losses.similarity_kl_loss(
                s_i, s_t, t_i, t_t, self.student.temperature, self.teacher_temperature,
                cfg.distill_temperature)
        if cfg.image_alignment_weight:
            terms["image_alignment"] = losses.embedding_alignment_loss(
                s_i, t_i, cfg.alignment, _kernel(self.image_projection))
        if cfg.text_alignment_weight:
            terms["text_alignment"] = losses.cross_lingual_distillation_loss(
                s_t, t_t, cfg.alignment, _kernel(self.text_projection))
        return terms

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The weighted sum of the terms, scaled for Keras' gradient sum over replicas."""
        del y, sample_weight
        if y_pred is None:
            y_pred = self(x, training=training)
        terms = self.loss_terms(y_pred)
        total = tf.add_n([getattr(self.distillation, TERMS[name]) * value
                          for name, value in terms.items()])
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        self.temperature_tracker.update_state(self.student.temperature)
        return distributed.scale_loss_for_replicas(total)


def _kernel(layer):
    return None if layer is None else layer.kernel


def read_model_config(path: str | os.PathLike) -> ModelConfig:
    """The ``ModelConfig`` of an ``AlignModel`` saved as ``.keras``, read without building it.

    Raises:
        ConfigError: naming ``distillation.teacher`` when the file is missing, not a
            ``.keras`` archive, or not an ``AlignModel``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"distillation.teacher: no such file {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            saved = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise ConfigError(f"distillation.teacher: {path} is not a .keras model ({error})") \
            from None
    if saved.get("registered_name") != "malign>AlignModel":
        raise ConfigError(f"distillation.teacher: {path} holds a "
                          f"{saved.get('registered_name') or saved.get('class_name')}, not a "
                          "malign AlignModel (a model.keras written by malign train, distill "
                          "or convert)")
    return ModelConfig.from_dict(saved["config"]["config"], path="distillation.teacher")


def _teacher_tokenizer_path(cfg: DistillationConfig) -> Path:
    from malign.evaluation.commands import find_tokenizer

    if cfg.teacher_tokenizer:
        path = Path(cfg.teacher_tokenizer)
        if not path.is_file():
            raise ConfigError(f"distillation.teacher_tokenizer: no such file {path}")
        return path
    try:
        return find_tokenizer(cfg.teacher)
    except FileNotFoundError as error:
        raise ConfigError(f"distillation.teacher_tokenizer: {error}") from None


def _teacher_tokenizer(path: Path, teacher: ModelConfig):
    from malign import text as text_lib

    try:
        tokenizer = text_lib.tokenizer_from_file(path, teacher.text.sequence_length)
    except (ValueError, OSError, tf.errors.OpError) as error:
        raise ConfigError(f"distillation.teacher_tokenizer: cannot read {path}: {error}") \
            from None
    if int(tokenizer.vocabulary_size) != teacher.text.vocabulary_size:
        raise ConfigError(
            f"distillation.teacher_tokenizer: {path} has {int(tokenizer.vocabulary_size)} ids "
            f"but the teacher has {teacher.text.vocabulary_size}: give the tokenizer the teacher "
            "was trained with")
    return tokenizer


class DistillationJob(TrainingJob):
    """``fit_experiment``'s job for ``malign distill`` (see the module docstring)."""

    label = "malign distill"

    def __init__(self) -> None:
        self.teacher_config: ModelConfig | None = None
        self.teacher_tokenizer_path: Path | None = None
        self.cache = None

    def check(self, plan: RunPlan) -> RunPlan:
        cfg = plan.experiment.distillation
        if not cfg.teacher:
            raise ConfigError("distillation.teacher: malign distill needs the teacher's "
                              ".keras model (--set distillation.teacher=PATH)")
        if plan.train_pattern == "random":
            raise ConfigError("data.train_pattern: distillation needs captions (records or "
                              "'synthetic'), not 'random'")
        self.teacher_config = read_model_config(cfg.teacher)
        self.teacher_tokenizer_path = _teacher_tokenizer_path(cfg)
        _teacher_tokenizer(self.teacher_tokenizer_path, self.teacher_config)
        return plan

    def _cache_dir(self, plan: RunPlan) -> Path:
        return plan.workdir / "teacher_cache"

    def build_model(self, plan: RunPlan) -> keras.Model:
        cfg = plan.experiment.distillation
        if not cfg.cache_teacher:
            return Distiller(plan.experiment.model, self.teacher_config, cfg)
        # Cached: the steps never run the teacher, so it is not part of the model.
        return Distiller(plan.experiment.model, None, cfg,
                         teacher_embedding_dim=_embedding_dim(self.teacher_config),
                         teacher_temperature=self._cached_temperature(plan))

    def _cached_temperature(self, plan: RunPlan) -> float:
        # Known for sure once the cache is checked or made (prepare_inputs sets it again).
        manifest = self._cache_dir(plan) / "manifest.json"
        if manifest.is_file():
            return float(json.loads(manifest.read_text()).get("teacher_temperature", 1.0))
        return 1.0

    def initialize(self, model: keras.Model, plan: RunPlan) -> None:
        super().initialize(model.student, plan)
        if model.teacher is not None:
            _load_teacher_weights(model.teacher, plan.experiment.distillation.teacher)

    def prepare_inputs(self, model: keras.Model, plan: RunPlan) -> None:
        cfg = plan.experiment.distillation
        if not cfg.cache_teacher:
            return
        from malign.data.pipeline import list_files
        from malign.training import teacher_cache

        teacher = keras.saving.load_model(cfg.teacher, compile=False)
        want = teacher_cache.fingerprint(
            teacher, self.teacher_tokenizer_path, list_files(plan.train_pattern),
            cfg.pivot_language, self.teacher_config.image.image_size,
            self.teacher_config.image.eval_resize)
        directory = self._cache_dir(plan)
        try:
            self.cache = teacher_cache.TeacherCache(directory, want)
            print(f"{self.label}: using the teacher cache in {directory} "
                  f"({len(self.cache.image_ids)} images, {len(self.cache.text_keys)} captions)",
                  flush=True)
        except FileNotFoundError:
            tokenizer = _teacher_tokenizer(self.teacher_tokenizer_path, self.teacher_config)
            self.cache = teacher_cache.build_teacher_cache(
                teacher, tokenizer, plan.train_pattern, directory, want, cfg.pivot_language,
                log=lambda line: print(f"{self.label}: {line}", flush=True))
        del teacher
        # The steps are traced after this: they use the cached teacher's temperature.
        model.teacher_temperature_value = self.cache.teacher_temperature

    def dataset_fn(self, plan: RunPlan):
        from malign import data as data_lib
        from malign.data.teacher_inputs import TeacherInputs

        experiment = plan.experiment
        cfg = experiment.distillation
        training = experiment.training
        teacher_config = self.teacher_config
        tokenizer_path = self.teacher_tokenizer_path
        cache = self.cache

        def files_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            tokenizer = None
            if cache is not None:
                cache.tables()  # made here (eagerly), captured by the pipeline's functions
            else:
                tokenizer = _teacher_tokenizer(tokenizer_path, teacher_config)
            teacher = TeacherInputs(image_size=teacher_config.image.image_size,
                                    tokenizer=tokenizer, pivot_language=cfg.pivot_language,
                                    cache=cache)
            return data_lib.make_dataset(
                plan.train_pattern, plan.tokenizer,
                image_size=experiment.model.image.image_size,
                global_batch_size=training.global_batch_size,
                training=True,
                input_context=ctx,
                languages=experiment.data.languages or None,
                seed=training.seed + plan.start_step,
                shuffle_buffer=experiment.data.shuffle_buffer,
                teacher=teacher,
            )
        return files_fn

    def saved_model(self, model: keras.Model) -> keras.Model:
        return model.student


def _embedding_dim(config: ModelConfig) -> int:
    return int(config.image_embedding_dim)


def _load_teacher_weights(teacher: AlignModel, path: str) -> None:
    source = keras.saving.load_model(path, compile=False)
    def layout(model: keras.Model) -> list[tuple[str, tuple]]:
        # Paths without the model's own name ("teacher/..." here, "align_model/..." saved).
        return [(w.path.split("/", 1)[-1], tuple(w.shape)) for w in model.weights]

    want, got = layout(teacher), layout(source)
    if want != got:
        diffs = [f"{a} vs {b}" for a, b in zip(want, got) if a != b][:2]
        raise ConfigError(f"distillation.teacher: {path} does not match its own config "
                          f"({len(got)} weights, {len(want)} expected; "
                          f"{'; '.join(diffs) or 'count differs'})")
    teacher.set_weights(source.get_weights())


def distill(experiment: ExperimentConfig, workdir: str | os.PathLike,
            callbacks: list[keras.callbacks.Callback] | None = None,
            verbose: Any = 0) -> tuple[AlignModel, keras.callbacks.History]:
    """Distils ``experiment.distillation.teacher`` into the student ``experiment.model``.

    The fit loop of ``malign.training.train`` (see it for checks, checkpoints, resume,
    progress and evaluation) with a ``Distiller``. The student starts from
    ``training.init_from`` when set (e.g. a vocabulary-trimmed copy of the teacher).

    Args:
        experiment: the student's experiment; ``distillation.teacher`` must be set.
        workdir: the work directory.
        callbacks: extra Keras callbacks.
        verbose: Keras ``fit`` verbosity.

    Returns:
        ``(student, history)``.

    Raises:
        ConfigError: naming the field, before anything is written.

    Example:
        >>> distill(experiment, "runs/student")  # doctest: +SKIP
    """
    return fit_experiment(experiment, workdir, DistillationJob(), callbacks, verbose)
