"""Demo: the whole journey on a CPU in minutes: vocabulary, teacher, distilled student, export.

Command: ``make demo`` (= ``malign demo --recipe recipes/demo.py --workdir runs/demo``),
which runs each step as its own ``malign`` command (``malign.demo.journey``):

1. ``malign data synthetic``: procedurally drawn scenes (shapes, colours, counts) captioned in
   English, German, French and Czech (translations of one scene description), a training
   set and a held-out set of new scenes;
2. ``malign data captions`` + ``malign tokenizer train``: a SentencePiece vocabulary of
   ``VOCABULARY_SIZE`` pieces on the training captions of the four languages;
3. ``malign train`` (``get_config``): the teacher, with ``cpu:2`` (two replicas, so the
   cross-replica contrastive loss runs);
4. ``malign tokenizer trim``: the student's vocabulary, the teacher's pieces that the
   training captions use at least ``STUDENT_MIN_COUNT`` times (a smaller, different tokenizer);
5. ``malign distill`` (``get_distill_config``): the student, under a fifth of the teacher's
   weights, from the teacher's cached embeddings (cross-lingual: the teacher reads the
   English source of each caption);
6. ``malign eval`` of both on the held-out scenes, ``malign export`` of both as SavedModels;
7. ``malign embed`` + ``malign search``: one text query against the held-out images through
   the student's SavedModel, in processes that never load the Keras model.

Each config also runs alone: ``malign train --recipe recipes/demo.py`` trains the teacher on
synthetic data written into its work directory with the checked-in test vocabulary.

Result: see ``benchmarks/RESULTS.md`` ("make demo").
"""

from malign.config import DataConfig, DistillationConfig, ExperimentConfig, TrainingConfig
from malign.presets import get_preset

#: The demo's data and vocabulary (read by ``malign.demo.journey``).
TRAIN_SCENES = 4000
HELDOUT_SCENES = 400
IMAGE_SIZE = 64
VOCABULARY_SIZE = 400
STUDENT_MIN_COUNT = 5
QUERY = "zwei rote Kreise"
#: Steps of 64 for the teacher and for the student (the demo runs in about 8 minutes on 2 idle cores).
STEPS = 300
#: Batch norm's moving-average momentum. Keras' 0.99 starts the moving variance at 1 and
#: keeps 0.99**400 = 1.8% of that after 400 steps, more than the stem's whole activation
#: variance here: evaluated, such a model ranked at chance although it trained (measured).
BATCH_NORM_MOMENTUM = 0.9

_SMOKE = {"TRAIN_SCENES": 256, "HELDOUT_SCENES": 100}


def get_settings(smoke: bool = False) -> dict:
    """The journey's data, vocabulary and query settings."""
    settings = {"TRAIN_SCENES": TRAIN_SCENES, "HELDOUT_SCENES": HELDOUT_SCENES,
                "IMAGE_SIZE": IMAGE_SIZE, "VOCABULARY_SIZE": VOCABULARY_SIZE,
                "STUDENT_MIN_COUNT": STUDENT_MIN_COUNT, "QUERY": QUERY}
    if smoke:
        settings.update(_SMOKE)
    return settings


def _training(smoke: bool, steps: int, strategy: str) -> TrainingConfig:
    return TrainingConfig(
        strategy=strategy,
        global_batch_size=64,
        steps=20 if smoke else steps,
        steps_per_checkpoint=10 if smoke else steps // 2,
        warmup_steps=2 if smoke else steps // 10,
        optimizer="adamw",
        learning_rate=3e-3,
        weight_decay=1e-4,
        decay="cosine",
        log_every_steps=5 if smoke else 50,
    )


def get_config(smoke: bool = False) -> ExperimentConfig:
    """The teacher: ``tiny``'s layout, twice the image channels, a 96-wide text tower."""
    return ExperimentConfig(
        name="demo-teacher",
        preset="tiny",
        model=get_preset("tiny", image_size=IMAGE_SIZE, temperature_init=0.1,
                         batch_norm_momentum=BATCH_NORM_MOMENTUM,
                         width_coefficient=2.0, hidden_dim=96, intermediate_dim=192,
                         num_heads=4, vocabulary_size=1000, **{"text.projection_dim": 64}),
        data=DataConfig(
            train_pattern="synthetic",
            tokenizer="test",
            synthetic_examples=200 if smoke else TRAIN_SCENES,
            shuffle_buffer=4000,
        ),
        training=_training(smoke, STEPS, "cpu:2"),
    )


def get_distill_config(smoke: bool = False) -> ExperimentConfig:
    """The student: ``tiny`` (32-wide) over the trimmed vocabulary, distilled from the teacher."""
    return ExperimentConfig(
        name="demo-student",
        preset="tiny",
        model=get_preset("tiny", image_size=IMAGE_SIZE, temperature_init=0.1,
                         batch_norm_momentum=BATCH_NORM_MOMENTUM),
        data=DataConfig(
            train_pattern="synthetic",
            tokenizer="test",
            synthetic_examples=200 if smoke else TRAIN_SCENES,
            shuffle_buffer=4000,
        ),
        training=_training(smoke, STEPS, "default"),
        distillation=DistillationConfig(
            teacher="runs/demo/teacher/model.keras",
            contrastive_weight=1.0,
            similarity_kl_weight=1.0,
            distill_temperature=1.0,
            image_alignment_weight=1.0,
            text_alignment_weight=1.0,
            pivot_language="en",
            cache_teacher=True,
        ),
    )
