"""Schedule, optimizer, mixed precision and the in-process train() loop."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import malign
from malign.config import ConfigError, DataConfig, ExperimentConfig, TrainingConfig
from malign.presets import get_preset
from malign.training import WarmupDecay, make_optimizer, random_dataset, train


def test_schedule_linear_and_cosine():
    linear = WarmupDecay(1e-3, 10, 110, end=0.0, decay="linear")
    cosine = WarmupDecay(1e-3, 10, 110, end=1e-4, decay="cosine")
    got = [float(linear(s)) for s in (0, 5, 10, 60, 110, 200)]
    np.testing.assert_allclose(got, [0, 5e-4, 1e-3, 5e-4, 0, 0], atol=1e-9)
    np.testing.assert_allclose(float(cosine(60)), 1e-4 + 0.9e-3 * 0.5, rtol=1e-5)
    np.testing.assert_allclose(float(cosine(110)), 1e-4, rtol=1e-5)
    assert WarmupDecay.from_config(linear.get_config()).get_config() == linear.get_config()


@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_weight_decay_skips_norms_biases_and_temperature(name):
    model = malign.AlignModel.from_preset("tiny")
    opt = make_optimizer(TrainingConfig(optimizer=name, steps=10, warmup_steps=1,
                                        weight_decay=0.1))
    opt.build(model.trainable_variables)
    decayed = {v.path for v in model.trainable_variables if opt._use_weight_decay(v)}
    assert "align_model/temperature" not in decayed
    assert "stem_conv/kernel" in decayed
    assert not [p for p in decayed if p.endswith(("bias", "gamma", "beta"))]


def test_mixed_float16_wraps_loss_scaling():
    opt = make_optimizer(TrainingConfig(mixed_precision="mixed_float16", steps=10,
                                        warmup_steps=1))
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer)


def test_random_dataset_is_a_function_of_the_step():
    cfg = get_preset("tiny")
    a = list(random_dataset(cfg, 2, seed=3, start_step=0).take(3))
    b = list(random_dataset(cfg, 2, seed=3, start_step=2).take(1))
    np.testing.assert_array_equal(a[2]["token_ids"], b[0]["token_ids"])
    ids, mask = a[0]["token_ids"].numpy(), a[0]["padding_mask"].numpy()
    assert (ids[:, 0] == 2).all() and ((ids == 3).sum(axis=1) == 1).all()
    assert ((ids != 0) == (mask == 1)).all()


def test_train_mixed_bfloat16_keeps_loss_and_embeddings_float32(tmp_path):
    exp = ExperimentConfig(
        name="bf16", model=get_preset("tiny"), data=DataConfig(train_pattern="random"),
        training=TrainingConfig(global_batch_size=4, steps=2, steps_per_checkpoint=2,
                                warmup_steps=1, mixed_precision="mixed_bfloat16"),
    )
    model, history = train(exp, tmp_path, verbose=0)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    assert np.isfinite(history.history["loss"]).all()
    assert model.image_tower.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert model.temperature_variable.dtype == "float32"
    batch = next(iter(random_dataset(exp.model, 2)))
    assert model(batch)["image_embeddings"].dtype == "float32"


def test_steps_must_be_a_multiple_of_checkpoint_interval(tmp_path):
    exp = ExperimentConfig(model=get_preset("tiny"), training=TrainingConfig(
        global_batch_size=4, steps=5, steps_per_checkpoint=2, warmup_steps=1))
    with pytest.raises(ConfigError, match="steps_per_checkpoint=2 must divide"):
        train(exp, tmp_path)


def test_init_from_copies_weights_and_checks_layout(tmp_path):
    source = malign.AlignModel.from_preset("tiny")
    source.temperature_variable.assign(0.5)
    path = tmp_path / "source.keras"
    source.save(path)
    exp = ExperimentConfig(model=get_preset("tiny"), training=TrainingConfig(
        global_batch_size=4, steps=1, steps_per_checkpoint=1, warmup_steps=0,
        learning_rate=1e-9, init_from=str(path)))
    model, _ = train(exp, tmp_path / "run", verbose=0)
    np.testing.assert_allclose(model.get_layer("image_tower").get_layer("stem_conv").kernel,
                               source.image_tower.get_layer("stem_conv").kernel, atol=1e-6)
    bad = exp.with_overrides({"model.text.vocabulary_size": 999})
    with pytest.raises(ConfigError, match="training.init_from.*token_embedding"):
        train(bad, tmp_path / "run2", verbose=0)


def _gather_step(var, opt, sparse: bool):
    @tf.function
    def step(ids, upstream):
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(tf.gather(var.value, ids) * upstream)
        grad = tape.gradient(y, var.value)
        assert isinstance(grad, tf.IndexedSlices)
        opt.apply([grad if sparse else tf.convert_to_tensor(grad)], [var])

    return step


@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_row_gradients_update_like_the_dense_gradient(name):
    """A gather gradient whose rows repeat (as tokens do) updates weights and both moments as
    the dense gradient does, on Keras' path and on the fused one; Keras alone would put the
    sum of squared slices into v."""
    rng = np.random.default_rng(0)
    init = rng.normal(size=(50, 8)).astype("float32")
    cfg = TrainingConfig(optimizer=name, steps=10, warmup_steps=1, learning_rate=1e-2,
                         weight_decay=0.1)
    results = {}
    for fused_min_size, sparse in ((0, False), (0, True), (1, True), (1, False)):
        var = keras.Variable(init.copy(), name="embeddings")
        opt = make_optimizer(cfg, fused_min_size=fused_min_size)
        opt.build([var])
        assert opt._fuses(var) == bool(fused_min_size)

        step = _gather_step(var, opt, sparse)
        data = np.random.default_rng(1)
        for _ in range(3):
            ids = data.integers(0, 50, size=(12,)).astype("int32")
            ids[:3] = 7
            step(ids, data.normal(size=(12, 8)).astype("float32"))
        results[fused_min_size, sparse] = [var.numpy(), opt._momentums[0].numpy(),
                                           opt._velocities[0].numpy()]
    want = results.pop((0, False))
    for key, got in results.items():
        for g, w, what in zip(got, want, ("weights", "m", "v")):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=f"{key} {what}")
    assert np.max(np.abs(want[0] - init)) > 1e-3


def test_combine_duplicate_rows_sums_slices():
    g = tf.IndexedSlices(tf.constant([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), tf.constant([2, 0, 2]),
                         tf.constant([4, 2]))
    combined = malign.training.combine_duplicate_rows(g)
    np.testing.assert_array_equal(tf.convert_to_tensor(combined), tf.convert_to_tensor(g))
    assert sorted(combined.indices.numpy().tolist()) == [0, 2]
    dense = tf.ones([2, 2])
    assert malign.training.combine_duplicate_rows(dense) is dense


def test_fused_optimizer_config_round_trip():
    opt = make_optimizer(TrainingConfig(steps=10, warmup_steps=1), fused_min_size=123)
    again = type(opt).from_config(opt.get_config())
    assert again.fused_min_size == 123
