"""Schedule, optimizer, mixed precision and the in-process train() loop."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard_events import read_scalars

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
    with pytest.raises(ConfigError, match=r"training.steps_per_checkpoint: 2 must divide "
                                          r"training.steps=5.*use 1 or 5"):
        train(exp, tmp_path / "run")
    assert not (tmp_path / "run").exists()


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


def _apply_step(opt, variables):
    return tf.function(lambda grads: opt.apply(grads, variables))


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_cpu_update_paths_equal_keras(name):
    """AdamW's dense variables take TensorFlow's ResourceApplyAdam kernel on CPU, and both
    optimizers decay with the learning rate computed once: weights and moments after three
    steps equal Keras' own update (fused_min_size=0), with and without decay."""
    rng = np.random.default_rng(0)
    shapes = {"kernel": (6, 5), "bias": (5,), "gamma": (3,)}
    cfg = TrainingConfig(optimizer=name, steps=10, warmup_steps=2, learning_rate=3e-2,
                         weight_decay=0.1)
    inits = {k: rng.normal(size=s).astype("float32") for k, s in shapes.items()}
    grads = [{k: rng.normal(size=s).astype("float32") for k, s in shapes.items()}
             for _ in range(3)]
    results = {}
    for fused_min_size in (0, 1 << 20):
        variables = [keras.Variable(inits[k].copy(), name=k) for k in shapes]
        opt = make_optimizer(cfg, fused_min_size=fused_min_size)
        opt.build(variables)
        kernel = opt._applies_kernel(tf.zeros(shapes["kernel"]), variables[0])
        assert kernel == (fused_min_size > 0 and name == "adamw")
        step = _apply_step(opt, variables)
        for g in grads:
            step([tf.constant(g[k]) for k in shapes])
        results[fused_min_size] = [v.numpy() for v in variables] + [
            m.numpy() for m in opt._momentums] + [
            v.numpy() for v in getattr(opt, "_velocities", [])]
    want, got = results[0], results[1 << 20]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)  # float32 rounding
    assert np.max(np.abs(want[0] - inits["kernel"])) > 1e-2


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


# -- checks before anything is written; resuming ---------------------------------------------

@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """8 synthetic 32-px scenes (4 languages): a tiny training and held-out set."""
    from malign.data.synthetic import write_synthetic

    prefix = tmp_path_factory.mktemp("records") / "scenes"
    write_synthetic(prefix, 8, image_size=32, seed=0, verbose=False)
    return str(prefix)


def _tiny(**training) -> ExperimentConfig:
    return ExperimentConfig(model=get_preset("tiny"), training=TrainingConfig(
        global_batch_size=4, **training))


@pytest.mark.parametrize("overrides, field", [
    ({"model.text.vocabulary_size": 999, "data.train_pattern": "RECORDS"},
     "model.text.vocabulary_size"),
    ({"model.text.vocabulary_size": 1200, "data.eval_pattern": "RECORDS"},
     "model.text.vocabulary_size"),
    ({"data.train_pattern": "MISSING/train-*.tfrecord"}, "data.train_pattern"),
    ({"data.eval_pattern": "MISSING/val"}, "data.eval_pattern"),
    ({"data.train_pattern": "RECORDS", "data.tokenizer": "MISSING/sp.model"}, "data.tokenizer"),
    ({"training.init_from": "MISSING/model.keras"}, "training.init_from"),
    ({"training.strategy": "gpu:7"}, "training.strategy"),
    ({"training.strategy": "cpu:4", "training.global_batch_size": 6},
     "training.global_batch_size"),
    ({"training.steps_per_checkpoint": 3}, "training.steps_per_checkpoint"),
])
def test_a_run_that_fails_a_check_writes_nothing(tmp_path, records, overrides, field):
    overrides = {k: v.replace("RECORDS", records).replace("MISSING", str(tmp_path / "none"))
                 if isinstance(v, str) else v for k, v in overrides.items()}
    workdir = tmp_path / "run"
    with pytest.raises((ConfigError, ValueError), match=rf"^{field}[:=]"):
        train(_tiny(steps=4).with_overrides(overrides), workdir, verbose=0)
    assert not workdir.exists()


def test_corrected_rerun_after_a_failed_check_trains_and_evaluates_once(tmp_path, records,
                                                                        monkeypatch):
    """The tokenizer (1000 ids) does not fit a 999-id model: refused, nothing written; the
    corrected run trains in the same directory and evaluates the held-out set once."""
    from malign.evaluation import callback, evaluate

    calls = []
    original = evaluate.evaluate_embeddings

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_embeddings", counting)
    monkeypatch.setattr(callback, "evaluate_embeddings", counting)
    workdir = tmp_path / "run"
    exp = _tiny(steps=2).with_overrides({"data.train_pattern": records,
                                         "data.eval_pattern": records})
    with pytest.raises(ConfigError, match="model.text.vocabulary_size=1000"):
        train(exp.with_overrides({"model.text.vocabulary_size": 999}), workdir, verbose=0)
    assert not workdir.exists()
    model, history = train(exp, workdir, verbose=0)
    assert len(history.history["loss"]) == 1 and (workdir / "model.keras").is_file()
    assert len(calls) == 1
    assert _scalar_steps(workdir / "logs" / "retrieval", "retrieval/mean/mean_recall") == [2]
    assert (workdir / "eval" / "metrics.json").is_file()


def _write_restore_point(workdir, experiment, step: int) -> None:
    """A restore point as `restore_points.scan` verifies it (its weights file is not read)."""
    import hashlib
    import json

    from malign.training import restore_points

    path = workdir / "restore" / f"step_{step:08d}"
    path.mkdir(parents=True)
    (path / restore_points.WEIGHTS).write_bytes(b"weights")
    (path / restore_points.STATE).write_text(json.dumps({
        "step": step, "config_sha256": restore_points.config_sha256(experiment.resolve()),
        "files": {restore_points.WEIGHTS: {"bytes": 7, "sha256": hashlib.sha256(
            b"weights").hexdigest()}}}))


def _write_run(workdir, experiment, epoch: int) -> None:
    """A work directory as a run of `experiment` leaves it after `epoch` checkpoint intervals."""
    workdir.mkdir(parents=True)
    resolved = experiment.resolve()
    (workdir / "config.json").write_text(resolved.to_json())
    if epoch:
        _write_restore_point(workdir, resolved, epoch * resolved.training.steps_per_checkpoint)


def test_resume_keeps_derived_values_and_only_steps_may_grow(tmp_path):
    from malign.training import prepare_run

    workdir = tmp_path / "run"
    _write_run(workdir, _tiny(steps=20), epoch=1)  # derived: warm-up 2, checkpoint every 20
    plan = prepare_run(_tiny(steps=60), workdir)
    assert (plan.experiment.training.warmup_steps,
            plan.experiment.training.steps_per_checkpoint) == (2, 20)
    assert plan.start_step == 20
    assert any("as in the run in" in note for note in plan.notes)
    # Set to the same values: the same run.
    prepare_run(_tiny(steps=60, warmup_steps=2, steps_per_checkpoint=20), workdir)
    with pytest.raises(ConfigError, match=r"training.steps=50: .* multiple of 20: use 40 or 60"):
        prepare_run(_tiny(steps=50), workdir)
    with pytest.raises(ConfigError, match=r"differs in: training.warmup_steps"):
        prepare_run(_tiny(steps=60, warmup_steps=6), workdir)
    with pytest.raises(ConfigError, match=r"differs in: training.steps_per_checkpoint"):
        prepare_run(_tiny(steps=60, steps_per_checkpoint=10), workdir)
    with pytest.raises(ConfigError, match=r"differs in: training.learning_rate"):
        prepare_run(_tiny(steps=60, learning_rate=0.5), workdir)

    reached = tmp_path / "reached"
    _write_run(reached, _tiny(steps=40, steps_per_checkpoint=10), epoch=3)
    with pytest.raises(ConfigError, match=r"training.steps=20: .* already trained 30 steps"):
        prepare_run(_tiny(steps=20), reached)
    assert prepare_run(_tiny(steps=30), reached).start_step == 30


def test_config_of_a_run_without_training_state_is_replaced(tmp_path):
    from malign.training import prepare_run

    workdir = tmp_path / "run"
    _write_run(workdir, _tiny(steps=20, learning_rate=0.5), epoch=0)
    plan = prepare_run(_tiny(steps=20), workdir)  # no restore point, checkpoint or model
    assert any("replacing it (differs in: training.learning_rate)" in n for n in plan.notes)
    assert plan.experiment.training.warmup_steps == 2
    (workdir / "config.json").write_text("{not json")
    assert any("unreadable" in n for n in prepare_run(_tiny(steps=20), workdir).notes)
    _write_restore_point(workdir, _tiny(steps=20), 20)
    with pytest.raises(ConfigError, match="holds training state but .* cannot be read"):
        prepare_run(_tiny(steps=20), workdir)


# -- TensorBoard scalars at every interval ----------------------------------------------------

def _scalar_steps(log_dir, tag) -> list[int]:
    return sorted(read_scalars(log_dir).get(tag, {}))


@pytest.mark.parametrize("interval, every, want", [(4, 5, [5, 10, 12]), (6, 3, [3, 6, 9, 12])])
def test_every_interval_reaches_tensorboard(tmp_path, interval, every, want):
    """Loss, temperature and learning rate at every `log_every_steps` global steps (and the
    last), whether or not the checkpoint interval is a multiple of it."""
    exp = _tiny(steps=12, steps_per_checkpoint=interval, log_every_steps=every, warmup_steps=2)
    model, history = train(exp, tmp_path, verbose=0)
    tags = read_scalars(tmp_path / "logs" / "train")
    for tag in ("loss", "temperature", "learning_rate", "steps_per_second"):
        assert sorted(tags[tag]) == want, tag
    schedule = malign.training.make_schedule(exp.training)
    for step in want:
        assert tags["learning_rate"][step] == pytest.approx(float(schedule(step)), rel=1e-5)
    assert tags["temperature"][12] == pytest.approx(float(model.temperature), rel=1e-6)
    if interval % every == 0:  # the intervals tile each epoch: their mean is Keras' epoch mean
        per_epoch = interval // every
        losses = [tags["loss"][s] for s in want]
        for epoch, keras_mean in enumerate(history.history["loss"]):
            chunk = losses[epoch * per_epoch:(epoch + 1) * per_epoch]
            assert np.mean(chunk) == pytest.approx(keras_mean, rel=1e-5)


def test_a_run_too_short_for_batch_norms_moving_statistics_is_told_which_momentum_to_set():
    """0.99**300 leaves 4.9% of the initial moving variance 1: evaluation-mode embeddings of
    the demo's models ranked at chance while the training loss was low (measured)."""
    from malign.training.run_plan import BATCH_NORM_RESIDUAL_LIMIT, batch_norm_notes

    def experiment(steps, momentum=0.99, init_from=""):
        return malign.config.ExperimentConfig(
            model=get_preset("tiny", batch_norm_momentum=momentum),
            training=malign.config.TrainingConfig(steps=steps, init_from=init_from))

    (note,) = batch_norm_notes(experiment(300))
    assert "model.image.batch_norm_momentum=0.99 leaves 0.99**300 = 4.9%" in note
    suggested = float(note.split("set model.image.batch_norm_momentum=")[1].split()[0])
    assert suggested ** 300 <= BATCH_NORM_RESIDUAL_LIMIT < (suggested + 0.002) ** 300
    assert batch_norm_notes(experiment(300, momentum=suggested)) == []
    assert batch_norm_notes(experiment(300, momentum=0.9)) == []
    assert batch_norm_notes(experiment(3000)) == []
    assert batch_norm_notes(experiment(300, init_from="trained.keras")) == []
