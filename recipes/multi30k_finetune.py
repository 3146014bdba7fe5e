"""Multi30K: train or fine-tune a dual encoder on task1's four languages mixed (en, de, fr, cs).

Commands (a Multi30K checkout, github.com/multi30k/dataset, beside the Flickr30K images):

    malign data prepare-multi30k --root multi30k --images flickr30k-images \\
        --out records/multi30k --image-size 64 --vocab-size 4000
    malign train --recipe recipes/multi30k_finetune.py --workdir runs/multi30k
    malign eval --model runs/multi30k/model.keras --data records/multi30k/val \\
        --languages en,de,fr,cs --out runs/multi30k/eval-val

Data: the records directory is ``$MALIGN_MULTI30K_RECORDS`` (default
``records/multi30k``, relative to the working directory), as written by
``malign data prepare-multi30k`` (``malign.data.multi30k.prepare_records`` and
``prepare_tokenizer``): ``train-*`` (every image once, with its four task-1 captions
and the ten task-2 English and German ones; one drawn per image per epoch),
``val-*`` (task-1 captions, one per language: the held-out retrieval set evaluated at
the end of the run, into ``<workdir>/eval``) and ``tokenizer.model`` (a SentencePiece
vocabulary of ``VOCAB_SIZE`` pieces trained on the train captions of all four
languages). ``--image-size`` stores the images at the side the crops use (77 px for
64) so that decoding them costs little. Add ``--splits train,val,test_2016_flickr`` and
``--set data.eval_pattern=records/multi30k/test_2016_flickr-*`` to evaluate on a test
split instead.

Starting point (``$MALIGN_MULTI30K_INIT``, default empty):

- empty: from scratch, the model below.
- a malign model (``runs/x/model.keras``, or a checkpoint ``runs/x/checkpoints/step_*.keras``):
  its model config is read from the run's ``config.json`` and its tokenizer is the run's
  ``tokenizer.model``; fine-tuned with a lower learning rate (``FINETUNE``).
- a converted ``kakaobrain/align-base`` (``malign convert transformers-align --src align-base
  --out models/align-base/model.keras``): its model config is read from
  ``model.conversion.json`` beside it, its tokenizer is its ``vocab.txt`` (English
  WordPiece: de/fr/cs captions are tokenized too, but the vocabulary is English), with
  the paper's retrieval fine-tuning settings (AdamW, lr 1e-5) at batch 64. Prepare the
  records with ``--image-size 289`` (and no ``--vocab-size``). A 289-px B7 step takes
  seconds on a CPU: this is a configuration for accelerators
  (``--set training.strategy=tpu`` or ``mirrored``, a larger batch).

Any value can be changed with ``--set``, e.g. ``--set training.steps=6000``.

Smoke (``--smoke``, which ignores ``$MALIGN_MULTI30K_INIT``): the ``tiny`` preset at 32 px
with the checked-in test vocabulary, 10 steps of 16 on the same records directory, e.g. the
shared subset:

    malign data prepare-multi30k --root ../shared/data/multi30k-mini \\
        --out records/multi30k-mini --image-size 64
    MALIGN_MULTI30K_RECORDS=records/multi30k-mini \\
        malign train --recipe recipes/multi30k_finetune.py --smoke --workdir runs/m30k-smoke

Result from scratch on ``../shared/data/multi30k-mini`` (4000 train images, the 242 val images;
2 CPU cores): 17 s of ``prepare-multi30k`` and 25 min of training; val mR en 24.2, de 22.2,
fr 21.1, cs 19.5 (chance 2.2). Details: ``benchmarks/RESULTS.md`` ("Multi30K from scratch on
multi30k-mini").
"""

import json
import os
from pathlib import Path

from malign.config import DataConfig, ExperimentConfig, ModelConfig, TrainingConfig
from malign.presets import get_preset

#: The records directory's environment variable and its default.
RECORDS_ENV, DEFAULT_RECORDS = "MALIGN_MULTI30K_RECORDS", "records/multi30k"
#: The starting model's environment variable (empty: from scratch).
INIT_ENV = "MALIGN_MULTI30K_INIT"
#: The from-scratch model's image side and the size ``--vocab-size`` must give.
IMAGE_SIZE, VOCAB_SIZE = 64, 4000
#: Training settings of a fine-tuning run from a malign model (changed from scratch's).
FINETUNE = {"learning_rate": 3e-4, "steps": 1000, "warmup_steps": 50}
#: ... and from a converted align-base (the paper's retrieval fine-tuning: lr 1e-5).
ALIGN_BASE = {"learning_rate": 1e-5, "weight_decay": 1e-5, "steps": 3000, "warmup_steps": 100}


def scratch_model() -> ModelConfig:
    """The from-scratch model: the ``tiny`` layout with twice the image channels (32, 48,
    64) and a 64-wide text tower, 64 px, 32 tokens (16 cut half the captions), no label
    smoothing."""
    return get_preset(
        "tiny", image_size=IMAGE_SIZE, temperature_init=0.1, vocabulary_size=VOCAB_SIZE,
        sequence_length=32, label_smoothing=0.0,
        **{"image.width_coefficient": 2.0, "text.hidden_dim": 64,
           "text.intermediate_dim": 128, "text.projection_dim": 64},
    )


def start_from(init: str) -> tuple[ModelConfig, str, dict]:
    """The model config, tokenizer and training changes of a run starting at ``init``.

    ``init`` is a ``.keras`` file: a converted checkpoint (``<name>.conversion.json``
    beside it) or a ``malign train`` model or checkpoint (the run's ``config.json`` in
    its directory or the one above).
    """
    path = Path(init)
    record = path.with_suffix(".conversion.json")
    if record.is_file():
        converted = json.loads(record.read_text())
        tokenizer = converted["tokenizer"]["vocabulary"] or str(path.parent / "vocab.txt")
        return ModelConfig.from_dict(converted["model_config"]), tokenizer, ALIGN_BASE
    for run in (path.parent, path.parent.parent):
        if (run / "config.json").is_file():
            saved = json.loads((run / "config.json").read_text())
            return (ModelConfig.from_dict(saved["model"]), str(run / "tokenizer.model"),
                    FINETUNE)
    raise FileNotFoundError(
        f"{INIT_ENV}={init}: no {record.name} (a converted checkpoint) beside it and no "
        f"config.json (a malign run) in {path.parent} or {path.parent.parent}")


def get_config(smoke: bool = False) -> ExperimentConfig:
    records = Path(os.environ.get(RECORDS_ENV) or DEFAULT_RECORDS)
    init = os.environ.get(INIT_ENV, "")
    data = DataConfig(
        train_pattern=str(records / "train-*-of-*.tfrecord"),
        eval_pattern=str(records / "val-*-of-*.tfrecord"),
        tokenizer="test" if smoke else str(records / "tokenizer.model"),
        shuffle_buffer=4000,
    )
    training = TrainingConfig(
        strategy="default",
        global_batch_size=16 if smoke else 64,
        steps=10 if smoke else 3000,
        steps_per_checkpoint=10 if smoke else 500,
        warmup_steps=2 if smoke else 100,
        optimizer="adamw",
        learning_rate=3e-3,
        weight_decay=0.05,
        decay="cosine",
        log_every_steps=5 if smoke else 100,
    )
    model = get_preset("tiny", temperature_init=0.1) if smoke else scratch_model()
    if init and not smoke:
        model, tokenizer, changes = start_from(init)
        data = data.replace(tokenizer=tokenizer)
        training = training.replace(init_from=init, **changes)
    return ExperimentConfig(
        name="multi30k_finetune-smoke" if smoke else "multi30k_finetune",
        preset="tiny" if smoke or not init else "",
        model=model,
        data=data,
        training=training,
    )
