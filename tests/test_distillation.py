"""Distillation: the teacher's inputs in the pipeline, the Distiller's loss and step, the cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import malign
from malign import losses
from malign.config import ConfigError, DistillationConfig
from malign.data.teacher_inputs import TeacherInputs, crop_pair, teacher_caption
from malign.presets import get_preset
from malign.training import teacher_cache
from malign.training.distillation import Distiller, read_model_config


def _caption(texts, langs, caption, lang, pivot="en", valid=None):
    valid = [True] * len(texts) if valid is None else valid
    return teacher_caption(tf.constant(texts), tf.constant(langs), tf.constant(valid),
                           tf.constant(caption), tf.constant(lang), pivot).numpy().decode()


def test_teacher_reads_the_pivot_language_source_of_a_translation():
    texts, langs = ["a red dog", "ein roter Hund", "un chien rouge"], ["en", "de", "fr"]
    assert _caption(texts, langs, "ein roter Hund", "de") == "a red dog"
    assert _caption(texts, langs, "un chien rouge", "fr") == "a red dog"
    # A caption in the pivot language is its own source (task2 gives several English ones).
    assert _caption(texts + ["a dog"], langs + ["en"], "a dog", "en") == "a dog"
    # The first *usable* English caption; none: the student's own caption.
    assert _caption(["", "a cat", "eine Katze"], ["en", "en", "de"], "eine Katze", "de",
                    valid=[False, True, True]) == "a cat"
    assert _caption(["eine Katze", "un chat"], ["de", "fr"], "un chat", "fr") == "un chat"
    assert _caption(texts, langs, "ein roter Hund", "de", pivot="") == "ein roter Hund"


def test_one_crop_at_both_sizes():
    image = tf.random.stateless_uniform([48, 48, 3], [1, 2])
    student, teacher = crop_pair(lambda size: tf.image.resize(image, [size, size]), 32, 48)
    assert student.shape == (32, 32, 3) and teacher.shape == (48, 48, 3)
    np.testing.assert_allclose(student, tf.image.resize(teacher, [32, 32], antialias=True),
                               atol=1e-6)
    same, other = crop_pair(lambda size: image[:size, :size], 48, 48)
    assert same is other


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("records") / "train"
    malign.data.write_synthetic(prefix, 24, image_size=40, seed=3, verbose=False)
    return str(prefix)


def test_pipeline_gives_the_teacher_its_caption_tokens_and_its_image_size(records):
    student_tok = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), 16)
    teacher_tok = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), 24)
    teacher = TeacherInputs(image_size=48, tokenizer=teacher_tok, pivot_language="en")
    ds = malign.data.make_dataset(records, student_tok, image_size=32, global_batch_size=8,
                                  languages=["de", "cs"], seed=1, teacher=teacher)
    batch = next(iter(ds))
    assert batch["image"].shape == (8, 32, 32, 3)
    assert batch["teacher_image"].shape == (8, 48, 48, 3)
    assert batch["token_ids"].shape == (8, 16) and batch["teacher_token_ids"].shape == (8, 24)
    # The student reads German or Czech; the teacher reads the English source of each.
    split = malign.data.read_eval_split(records, 32, 8, verbose=False)
    pairs = list(zip(split.caption_langs, split.captions))
    english = {c for lang, c in pairs if lang == "en"}
    german = {c for lang, c in pairs if lang in ("de", "cs")}
    en_ids = {tuple(row) for row in teacher_tok(tf.constant(sorted(english)))["token_ids"]
              .numpy().tolist()}
    de_ids = {tuple(row) for row in student_tok(tf.constant(sorted(german)))["token_ids"]
              .numpy().tolist()}
    assert {tuple(r) for r in batch["teacher_token_ids"].numpy().tolist()} <= en_ids
    assert {tuple(r) for r in batch["token_ids"].numpy().tolist()} <= de_ids
    # The same crop: the student's image is the teacher's, resized.
    np.testing.assert_allclose(batch["image"], tf.image.resize(batch["teacher_image"], [32, 32],
                                                               antialias=True), atol=1e-5)
    with pytest.raises(ValueError, match="training"):
        malign.data.make_dataset(records, student_tok, 32, 8, training=False, teacher=teacher)


@pytest.fixture(scope="module")
def distiller():
    student = get_preset("tiny")
    teacher = get_preset("tiny", hidden_dim=48, **{"text.projection_dim": 48},
                         width_coefficient=1.5)
    return Distiller(student, teacher, DistillationConfig(teacher="t.keras", distill_temperature=2.0,
                                                          image_alignment_weight=0.5))


def _batch(seed=0, n=6):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 1000, (n, 16)).astype("int32")
    ids[:, 0], ids[:, 9:] = 2, 0
    mask = (ids > 0).astype("int32")
    image = rng.random((n, 32, 32, 3)).astype("float32")
    return {"image": image, "token_ids": ids, "padding_mask": mask, "teacher_image": image,
            "teacher_token_ids": ids, "teacher_padding_mask": mask}


def test_distiller_loss_is_the_weighted_sum_of_the_loss_functions(distiller):
    assert distiller.image_projection.kernel.shape == (32, 48)
    assert distiller.teacher.trainable is False
    batch = _batch()
    out = distiller(batch)
    s_i, s_t = distiller.student.embed_image(batch["image"]), distiller.student.embed_text(batch)
    t_i = distiller.teacher.embed_image(batch["image"])
    t_t = distiller.teacher.embed_text(batch)
    np.testing.assert_allclose(out["teacher_image_embeddings"], t_i, atol=1e-6)
    expected = (
        losses.contrastive_loss(s_i, s_t, distiller.student.temperature, label_smoothing=0.1)
        + losses.similarity_kl_loss(s_i, s_t, t_i, t_t, distiller.student.temperature,
                                    distiller.teacher.temperature, 2.0)
        + 0.5 * losses.embedding_alignment_loss(s_i, t_i, "cosine",
                                                distiller.image_projection.kernel)
        + losses.embedding_alignment_loss(s_t, t_t, "cosine", distiller.text_projection.kernel))
    np.testing.assert_allclose(distiller.compute_loss(batch, y_pred=out), expected, rtol=1e-6)
    assert set(distiller.trackers) == {"contrastive", "similarity_kl", "image_alignment",
                                       "text_alignment"}


def test_a_distillation_step_trains_the_student_and_never_the_teacher():
    student = get_preset("tiny")
    d = Distiller(student, get_preset("tiny"), DistillationConfig(teacher="t.keras"))
    assert d.image_projection is None and d.text_projection is None  # same widths
    teacher_before = [w.numpy().copy() for w in d.teacher.weights]
    student_before = [w.numpy().copy() for w in d.student.trainable_weights]
    d.compile(optimizer=malign.training.make_optimizer(
        malign.config.TrainingConfig(optimizer="adamw", steps=2, warmup_steps=0)))
    batch = _batch(1, 8)
    logs = d.fit(tf.data.Dataset.from_tensors(batch).repeat(2), epochs=1, steps_per_epoch=2,
                 verbose=0).history
    assert {"loss", "contrastive", "similarity_kl", "text_alignment"} <= set(logs)
    for before, after in zip(teacher_before, d.teacher.weights):
        np.testing.assert_array_equal(before, after.numpy())  # batch-norm statistics too
    changed = [not np.array_equal(b, a.numpy())
               for b, a in zip(student_before, d.student.trainable_weights)]
    assert sum(changed) > len(changed) // 2


def _two_replicas_and_one_device_weights_differ_by() -> float:
    """Max abs difference of the student's weights after one step under cpu:2 and under the
    default strategy (run in a process of its own, see the test below)."""
    batch = _batch(2, 8)
    config = DistillationConfig(teacher="t.keras", image_alignment_weight=0.3)
    student, teacher = get_preset("tiny"), get_preset("tiny", **{"text.projection_dim": 32})
    opt_cfg = malign.config.TrainingConfig(optimizer="adamw", steps=1, warmup_steps=0,
                                           learning_rate=1e-2, weight_decay=0.0)
    results = []
    for spec in ("default", "cpu:2"):
        strategy = malign.distributed.get_strategy(spec)
        with strategy.scope():
            keras.utils.set_random_seed(7)
            d = Distiller(student, teacher, config)
            d.compile(optimizer=malign.training.make_optimizer(opt_cfg))
        # Keras splits the global batch of 8 between the replicas.
        d.fit(tf.data.Dataset.from_tensors(batch), epochs=1, steps_per_epoch=1, verbose=0)
        results.append([w.numpy() for w in d.student.trainable_weights])
    return max(float(np.abs(a - b).max()) for a, b in zip(*results))


def test_distiller_under_two_replicas_matches_one_device_on_the_global_batch():
    """Two replicas (cpu:2) and one device give the same weights after a step.

    Run in its own process: after other cpu:2 fits in one pytest worker, the synchronized
    batch norm's collective met a stale collective from an earlier strategy (InternalError
    "could be from a previous operation"), a clash between strategies sharing a process,
    not a fault of the Distiller."""
    here = Path(__file__).resolve()
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import malign; malign.distributed.configure_logical_cpus(2)\n"
        "import test_distillation as t\n"
        "print('max diff', t._two_replicas_and_one_device_weights_differ_by())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(here.parent)], capture_output=True, text=True,
        timeout=900, cwd=here.parents[1],
        env={**os.environ, "PYTHONPATH": str(here.parents[1]),
             "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    diff = float(proc.stdout.split("max diff")[-1])
    assert diff <= 2e-5, diff


def test_cached_teacher_embeddings_equal_the_teachers_and_stale_caches_are_refused(
        records, tmp_path):
    teacher = malign.AlignModel.from_preset("tiny", image_size=48)
    path = tmp_path / "teacher.keras"
    teacher.save(path)
    tok_path = malign.text.test_vocab_path()
    tokenizer = malign.text.SentencePieceTokenizer(tok_path, teacher.sequence_length)
    files = malign.data.list_files(records)
    want = teacher_cache.fingerprint(teacher, tok_path, files, "en", 48, "shorter_side")
    cache = teacher_cache.build_teacher_cache(teacher, tokenizer, records, tmp_path / "cache",
                                              want, "en", log=lambda line: None)
    assert len(cache.image_ids) == 24 and len(cache.text_keys) == 24  # one English each
    split = malign.data.read_eval_split(records, 48, 8, languages=["en"], verbose=False)
    got = cache.lookup(tf.constant(split.image_ids[:3]), tf.constant(split.captions[:3]))
    images = np.concatenate([b.numpy() for b in split.images])[:3]
    np.testing.assert_allclose(got["teacher_image_embeddings"], teacher.embed_image(images),
                               atol=1e-5)
    np.testing.assert_allclose(got["teacher_text_embeddings"],
                               teacher.embed_text(tokenizer(tf.constant(split.captions[:3]))),
                               atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="stale cache"):
        cache.lookup(tf.constant(["nope"]), tf.constant(["a"]))
    # The same weights saved again (other file bytes): the same fingerprint.
    teacher.save(tmp_path / "again.keras")
    again = keras.saving.load_model(tmp_path / "again.keras", compile=False)
    assert teacher_cache.fingerprint(again, tok_path, files, "en", 48, "shorter_side") == want
    # Another teacher, other data, another pivot: refused, naming what changed.
    other = malign.AlignModel.from_preset("tiny", image_size=48)
    for changed, what in (
            (teacher_cache.fingerprint(other, tok_path, files, "en", 48, "shorter_side"),
             "teacher model"),
            (teacher_cache.fingerprint(teacher, tok_path, files[:0], "en", 48, "shorter_side"),
             "data"),
            (dict(want, pivot_language="de"), "pivot_language")):
        with pytest.raises(teacher_cache.StaleCacheError, match=what):
            teacher_cache.TeacherCache(tmp_path / "cache", changed)
    # A caption repeated for one image (Multi30K task1 + task2 share some; found on
    # multi30k-mini) and one shared by two images: each (id, caption) key stored once.
    png = tf.io.encode_png(np.full((40, 40, 3), 90, np.uint8)).numpy()
    dupes = str(tmp_path / "dupes")
    malign.data.write_examples(
        [malign.data.ImageTextExample("1000268201", png, "png",
                                      ["A girl.", "Ein Mädchen.", "A girl.", "A girl."],
                                      ["en", "de", "en", "en"]),
         malign.data.ImageTextExample("2", png, "png", ["A girl.", "A girl."], ["en", "fr"])],
        dupes, verbose=False)
    for pivot, keys in (("en", 2), ("", 3)):
        dupe_files = malign.data.list_files(dupes)
        cache = teacher_cache.build_teacher_cache(
            teacher, tokenizer, dupes, tmp_path / f"dupes-cache{pivot}",
            teacher_cache.fingerprint(teacher, tok_path, dupe_files, pivot, 48, "shorter_side"),
            pivot, log=lambda line: None)
        assert len(cache.text_keys) == keys, cache.text_keys
        got = cache.lookup(tf.constant(["1000268201", "2"]), tf.constant(["A girl.", "A girl."]))
        want_text = teacher.embed_text(tokenizer(tf.constant(["A girl."])))
        np.testing.assert_allclose(got["teacher_text_embeddings"],
                                   np.repeat(want_text, 2, axis=0), atol=1e-5)


def test_teacher_file_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="distillation.teacher: no such file"):
        read_model_config(tmp_path / "missing.keras")
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="not a .keras model"):
        read_model_config(tmp_path / "bad.keras")
    with pytest.raises(ConfigError, match="distillation.alignment"):
        DistillationConfig(alignment="l1").validate()
    with pytest.raises(ConfigError, match="every loss weight is 0"):
        DistillationConfig(contrastive_weight=0, similarity_kl_weight=0,
                           image_alignment_weight=0, text_alignment_weight=0).validate()
