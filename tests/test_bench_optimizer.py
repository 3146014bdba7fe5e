"""benchmarks/bench_optimizer.py on the tiny preset: both updates it times move the weights
alike (it compares Keras' AdamW with malign's on the same work), and it reports both."""

from __future__ import annotations

import keras
import numpy as np
from benchmark_helpers import load_benchmark

import malign
from malign.config import TrainingConfig
from malign.training import make_optimizer


def test_keras_adamw_is_the_same_update_as_maligns():
    bench = load_benchmark("bench_optimizer")
    cfg = TrainingConfig(optimizer="adamw", learning_rate=1e-2, weight_decay=0.1,
                         global_batch_size=4, steps=20, warmup_steps=2)
    model = malign.AlignModel.from_preset("tiny")
    init = [v.numpy() for v in model.trainable_variables]
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=v.shape).astype("float32") for v in model.trainable_variables]
    after = {}
    for name, opt in (("keras", bench.keras_adamw(cfg)), ("malign", make_optimizer(cfg))):
        for v, w in zip(model.trainable_variables, init):
            v.assign(w)
        opt.build(model.trainable_variables)
        for _ in range(3):
            opt.apply(grads, model.trainable_variables)
        after[name] = [v.numpy() for v in model.trainable_variables]
    assert type(bench.keras_adamw(cfg)) is keras.optimizers.AdamW
    for k, m in zip(after["keras"], after["malign"]):
        np.testing.assert_allclose(m, k, rtol=1e-5, atol=1e-6)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(after["malign"], init)) > 1e-3


def test_main_reports_both_updates(capsys):
    load_benchmark("bench_optimizer").main(["--preset", "tiny", "--repeats", "1", "--steps", "1",
                                            "--warmup", "1"])
    out = capsys.readouterr().out
    assert "keras AdamW: median" in out and "malign AdamW: median" in out
    assert "keras / malign:" in out
