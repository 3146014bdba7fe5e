"""Demo: a tiny ALIGN model trained on CPU in a few minutes.

Command: ``make demo`` (= ``malign train --recipe recipes/demo.py --workdir runs/demo``).
Until the synthetic multilingual scenes are wired in, this trains on random data:
it shows the training loop, checkpoints and resumption, not learning.
"""

from malign.config import DataConfig, ExperimentConfig, TrainingConfig
from malign.presets import get_preset


def get_config(smoke: bool = False) -> ExperimentConfig:
    return ExperimentConfig(
        name="demo",
        preset="tiny",
        model=get_preset("tiny"),
        data=DataConfig(train_pattern="random"),
        training=TrainingConfig(
            strategy="default",
            global_batch_size=16,
            steps=20 if smoke else 200,
            steps_per_checkpoint=10 if smoke else 50,
            warmup_steps=5 if smoke else 20,
            optimizer="lamb",
            learning_rate=1e-3,
        ),
    )
