"""Distil a teacher into a small student on Multi30K (or any record set), and its baseline.

``malign distill --recipe recipes/distill_student.py`` trains the student from the teacher
(``get_distill_config``); ``malign train --recipe recipes/distill_student.py`` trains the
same student on the same data for the same steps without a teacher (``get_config``), the
baseline the distilled student must beat.

Commands on a Multi30K root (here the shared subset), after the teacher of
``recipes/multi30k_finetune.py`` (its records directory holds ``train-*``, ``val-*`` and
the teacher's ``tokenizer.model``):

    malign data prepare-multi30k --root ../shared/data/multi30k-mini \\
        --out records/multi30k-mini --image-size 64 --vocab-size 4000
    MALIGN_MULTI30K_RECORDS=records/multi30k-mini \\
        malign train --recipe recipes/multi30k_finetune.py --workdir runs/m30k
    # the student's vocabulary: the teacher's pieces the training captions use 100+ times
    malign data captions records/multi30k-mini/train --out records/multi30k-mini/captions
    malign tokenizer trim --model records/multi30k-mini/tokenizer.model --min-count 100 \\
        --corpus records/multi30k-mini/captions.*.txt --out records/multi30k-mini/student
    export MALIGN_DISTILL_RECORDS=records/multi30k-mini MALIGN_DISTILL_TEACHER=runs/m30k/model.keras
    malign distill --recipe recipes/distill_student.py --workdir runs/student-distilled
    malign train --recipe recipes/distill_student.py --workdir runs/student-alone
    malign eval --model runs/student-distilled/model.keras \\
        --data 'records/multi30k-mini/val-*' --languages en,de,fr,cs --out runs/student-distilled/eval
    malign export --model runs/student-distilled/model.keras --out runs/student-distilled/export
    python benchmarks/bench_embed_latency.py --saved-model teacher=runs/m30k/export \\
        --saved-model student=runs/student-distilled/export

Cross-lingual distillation from an English-only teacher: train the teacher on the English
captions alone (``--set data.languages=en``), then distil as above with
``MALIGN_DISTILL_TEACHER`` set to it. The teacher reads each record's English caption
(``distillation.pivot_language``) while the student reads the caption in any of the four
languages, so the student learns to put a German, French or Czech caption where the
teacher puts its English source (Reimers & Gurevych 2020, "Making monolingual sentence
embeddings multilingual using knowledge distillation"; Carlsson et al. 2022,
Multilingual-CLIP).

Environment (read when the config is built):

- ``MALIGN_DISTILL_RECORDS`` (default ``records/multi30k``): the directory of ``train-*``
  and ``val-*`` shards (``malign data prepare-multi30k``) and of the student's tokenizer.
- ``MALIGN_DISTILL_TEACHER`` (default ``runs/multi30k/model.keras``): the teacher's
  ``.keras`` model; its tokenizer is found beside it (the run's ``tokenizer.model``).
- ``MALIGN_DISTILL_TOKENIZER`` (default ``<records>/student.model``, else the teacher
  vocabulary ``<records>/tokenizer.model``): the student's SentencePiece model; the
  student's vocabulary size is read from it.

The student: ``tiny``'s layout (16/24/32 image channels, a 2-layer 32-wide text tower), 64
px, 32 tokens. The teacher's embeddings are cached once (``distillation.cache_teacher``),
so a distillation step costs about as much as a baseline step.

Smoke (``--smoke``): the checked-in test vocabulary, 10 steps of 16 on the same records
directory, for the teacher ``$MALIGN_DISTILL_TEACHER``.

Result on multi30k-mini (2 cores; ``benchmarks/RESULTS.md``, "Distillation on multi30k-mini"):
the student has 76,671 weights (0.201 of the teacher's 381,309; 1326 vocabulary pieces).
Held-out mR en / de / fr / cs: alone 12.9 / 11.0 / 9.8 / 8.2; distilled from the
multilingual teacher (24.2 / 22.2 / 21.1 / 19.5) 15.4 / 14.1 / 12.6 / 9.4; distilled from
the English-only teacher (22.6 / 1.7 / 3.5 / 1.9) 16.3 / 14.0 / 12.2 / 9.9. About 12 min per
student run; exported embedding latency 0.77x (text) and 0.75x (images) the teacher's.
"""

import os
from pathlib import Path

from malign.config import DataConfig, DistillationConfig, ExperimentConfig, TrainingConfig
from malign.presets import get_preset

RECORDS_ENV, DEFAULT_RECORDS = "MALIGN_DISTILL_RECORDS", "records/multi30k"
TEACHER_ENV, DEFAULT_TEACHER = "MALIGN_DISTILL_TEACHER", "runs/multi30k/model.keras"
TOKENIZER_ENV = "MALIGN_DISTILL_TOKENIZER"
#: The student's image side and text length (the multi30k_finetune teacher's).
IMAGE_SIZE, SEQUENCE_LENGTH = 64, 32
#: Steps of 64 for both the distilled student and its baseline.
STEPS = 1000


def _records() -> Path:
    return Path(os.environ.get(RECORDS_ENV) or DEFAULT_RECORDS)


def student_tokenizer() -> str:
    """The student's SentencePiece model: ``$MALIGN_DISTILL_TOKENIZER``, else the trimmed
    ``<records>/student.model`` when present, else the teacher vocabulary of the records."""
    chosen = os.environ.get(TOKENIZER_ENV)
    if chosen:
        return chosen
    trimmed = _records() / "student.model"
    return str(trimmed if trimmed.is_file() else _records() / "tokenizer.model")


def _vocabulary_size(tokenizer: str) -> int:
    """The pieces of ``tokenizer``; 4000 (``prepare-multi30k --vocab-size 4000``) while it
    does not exist yet, so the config builds before the files are made (the run then
    checks the size against the file and names both)."""
    if not Path(tokenizer).is_file():
        return 4000
    import sentencepiece

    return int(sentencepiece.SentencePieceProcessor(model_file=tokenizer).get_piece_size())


def get_config(smoke: bool = False) -> ExperimentConfig:
    """The student trained alone (the baseline): same model, data and steps, no teacher."""
    tokenizer = "test" if smoke else student_tokenizer()
    model_options = {} if smoke else {
        "vocabulary_size": _vocabulary_size(tokenizer), "sequence_length": SEQUENCE_LENGTH}
    return ExperimentConfig(
        name="distill_student-smoke" if smoke else "distill_student",
        preset="tiny",
        model=get_preset("tiny", image_size=32 if smoke else IMAGE_SIZE, temperature_init=0.1,
                         label_smoothing=0.0, **model_options),
        data=DataConfig(
            train_pattern=str(_records() / "train-*-of-*.tfrecord"),
            eval_pattern=str(_records() / "val-*-of-*.tfrecord"),
            tokenizer=tokenizer,
            shuffle_buffer=4000,
        ),
        training=TrainingConfig(
            strategy="default",
            global_batch_size=16 if smoke else 64,
            steps=10 if smoke else STEPS,
            steps_per_checkpoint=10 if smoke else 500,
            warmup_steps=2 if smoke else 100,
            optimizer="adamw",
            learning_rate=3e-3,
            weight_decay=0.05,
            decay="cosine",
            log_every_steps=5 if smoke else 100,
        ),
    )


def get_distill_config(smoke: bool = False) -> ExperimentConfig:
    """The same student distilled from ``$MALIGN_DISTILL_TEACHER`` (cached embeddings)."""
    baseline = get_config(smoke)
    return baseline.replace(
        name=baseline.name.replace("distill_student", "distill_student-distilled"),
        distillation=DistillationConfig(
            teacher=os.environ.get(TEACHER_ENV) or DEFAULT_TEACHER,
            contrastive_weight=1.0,
            similarity_kl_weight=1.0,
            distill_temperature=1.0,
            image_alignment_weight=1.0,
            text_alignment_weight=1.0,
            alignment="cosine",
            pivot_language="en",
            cache_teacher=True,
        ),
    )
