"""Pretrain: the paper's noisy alt-text configuration, on your own image-text records.

Command (on a Cloud TPU VM; the data and tokenizer paths are placeholders that you must set)::

    malign train --recipe recipes/pretrain.py --workdir runs/pretrain \\
        --set data.train_pattern='gs://BUCKET/alt-text/train-*-of-*.tfrecord' \\
        --set data.tokenizer=vocab/m250k.model

Records: image-text TFRecords written by ``malign data`` (one caption or more per image, any
languages; any ``tf.io.gfile`` path, ``gs://`` included); tokenizer: a local file, one shared
250,000-piece SentencePiece model (``malign tokenizer train --vocab-size 250000``), the size
of the ``malign-b7-mbert`` preset's vocabulary (``malign train`` refuses another size).
Left as they are, the placeholder paths are refused before a model is built:
``data.train_pattern: no TFRecord files match '<your alt-text records>/train-*-of-*.tfrecord'``.
Add ``--set data.eval_pattern=...`` and ``--set training.eval_every_steps=...`` for
retrieval on held-out records during training.
A preempted run resumes from its last checkpoint (every 5,000 steps) when re-run with the
same ``--workdir``.

The paper's numbers (Jia et al. 2021, "Scaling Up Visual and Vision-Language Representation
Learning With Noisy Text Supervision", ICML, arXiv:2102.05918: the training set-up in the
opening of Sec. 5 "Experiments and Results", the architecture and loss in Sec. 4
"Pre-training and Task Transfer"), and the fields that hold them:

=================================================== =======================================
paper                                                this recipe
=================================================== =======================================
EfficientNet (global pooling, no 1x1 head conv) +    ``model = malign-b7-mbert``: B7 + BERT-
BERT ``[CLS]`` + linear projection, both from        base (the released checkpoint's sizes;
scratch                                              the paper's best model is L2 + BERT-
                                                     Large) over a 250k shared vocabulary, as
                                                     the paper's multilingual model
289 px random crops (and flips) of images resized    ``model.image.image_size = 289`` (the
to 346 x 346; centre crop for evaluation             pipeline resizes to 346)
wordpieces, at most 64 tokens                        ``model.text.sequence_length = 64``
normalized softmax loss, both directions, over the   ``model.loss = softmax`` over the batch
concatenated embeddings of all cores                 gathered from all replicas
temperature initialised to 1.0, learned              ``model.temperature_init = 1.0``,
                                                     ``model.learnable_temperature = true``
label smoothing 0.1                                  ``model.label_smoothing = 0.1``
LAMB, weight decay ratio 1e-5                        ``training.optimizer = lamb``,
                                                     ``training.weight_decay = 1e-5``
lr warmed up linearly from 0 to 1e-3 in 10k steps,   ``training.learning_rate = 1e-3``,
then linear decay to 0 in 1.2M steps (~12 epochs)    ``training.warmup_steps = 10000``,
                                                     ``training.decay = linear``,
                                                     ``training.end_learning_rate = 0``,
                                                     ``training.steps = 1200000``
1024 Cloud TPUv3 cores, 16 positive pairs a core:    ``training.global_batch_size = 16384``,
batch 16384                                          ``training.strategy = tpu``
(TPU; precision not stated)                          ``training.mixed_precision =
                                                     mixed_bfloat16`` (embeddings, loss and
                                                     temperature stay float32)
=================================================== =======================================

The learned temperature converges near 1/64 (the paper's ablation study). The global batch
must divide by the TPU's replica count (16384 = 16 x 1024 cores; on a v3-32, 512 a core). On a
smaller slice lower ``training.global_batch_size`` and expect different results: the batch
is the number of in-batch negatives.

Smoke (``--smoke``): the same optimizer (LAMB, lr 1e-3, weight decay 1e-5, linear decay
to 0), loss, temperature, label smoothing and bfloat16 mixed precision, on the ``tiny``
preset at 32 px with random tensors (``data.train_pattern = random``), global batch 8 on
the default CPU strategy, 4 steps (warm-up 1), checkpoints at steps 2 and 4::

    malign train --recipe recipes/pretrain.py --smoke --workdir runs/pretrain-smoke

Reached here (2-core CPU shared with other jobs, load average 8-12; TensorFlow 2.21):
loss 2.096 -> 2.086 (random pairs: ln 8 = 2.079 is chance, nothing to learn), temperature
1.000 -> 1.002, both checkpoints and ``model.keras`` written; 28-30 s of CPU time (user +
system, TensorFlow's start-up and the first step's tracing included), 70-110 s of wall time
on the loaded machine. The full recipe has not been run here (no TPU); its config is checked
against the table above, field by field, by ``tests/test_recipe_pretrain.py``.
"""

from malign.config import DataConfig, ExperimentConfig, TrainingConfig
from malign.presets import get_preset

#: Placeholders the user replaces with ``--set``; ``malign train`` refuses them as they are.
TRAIN_PATTERN_PLACEHOLDER = "<your alt-text records>/train-*-of-*.tfrecord"
TOKENIZER_PLACEHOLDER = "<your 250k SentencePiece model>.model"


def get_config(smoke: bool = False) -> ExperimentConfig:
    if smoke:
        model = get_preset("tiny", temperature_init=1.0, learnable_temperature=True,
                           label_smoothing=0.1)
        data = DataConfig(train_pattern="random")
    else:
        model = get_preset("malign-b7-mbert", image_size=289, sequence_length=64,
                           temperature_init=1.0, learnable_temperature=True,
                           label_smoothing=0.1, loss="softmax")
        data = DataConfig(train_pattern=TRAIN_PATTERN_PLACEHOLDER,
                          tokenizer=TOKENIZER_PLACEHOLDER)
    return ExperimentConfig(
        name="pretrain-smoke" if smoke else "pretrain",
        preset="tiny" if smoke else "malign-b7-mbert",
        model=model,
        data=data,
        training=TrainingConfig(
            strategy="default" if smoke else "tpu",
            global_batch_size=8 if smoke else 16384,
            steps=4 if smoke else 1_200_000,
            steps_per_checkpoint=2 if smoke else 5000,
            optimizer="lamb",
            learning_rate=1e-3,
            warmup_steps=1 if smoke else 10_000,
            decay="linear",
            end_learning_rate=0.0,
            weight_decay=1e-5,
            mixed_precision="mixed_bfloat16",
            jit_compile="auto",
            log_every_steps=1 if smoke else 100,
            eval_every_steps=0,
        ),
    )
