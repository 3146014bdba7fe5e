"""Everything malign writes into a `.keras` file loads in a new process after `import malign`.

The fault this guards against: `malign train` saved its compiled optimizer (`FusedLamb`)
and schedule (`WarmupDecay`) with the model, and `malign eval` / `malign export` in a new
process could not load it, because nothing had imported the module that registers them.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import keras
import pytest
from PIL import Image

import malign
from malign.tf_logging import VERBOSE_ENV, is_tensorflow_log_line

BIN = Path(sys.executable).parent
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
# The command line as a user runs it: no TF_CPP_MIN_LOG_LEVEL of ours.
CLI_ENV = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", VERBOSE_ENV)}

# Kinds of object that Keras serialises into a .keras file.
SERIALISABLE_BASES = (
    keras.layers.Layer,  # models too
    keras.optimizers.Optimizer,
    keras.optimizers.schedules.LearningRateSchedule,
    keras.losses.Loss,
    keras.metrics.Metric,
    keras.constraints.Constraint,
    keras.initializers.Initializer,
    keras.regularizers.Regularizer,
)


def _package_classes() -> list[type]:
    """Every public Keras-serialisable class defined in a malign module."""
    found = {}
    for info in pkgutil.walk_packages(malign.__path__, "malign."):
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if (cls.__module__ == info.name and not name.startswith("_")
                    and issubclass(cls, SERIALISABLE_BASES)):
                found[f"{cls.__module__}.{name}"] = cls
    return [found[k] for k in sorted(found)]


def _python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def _malign(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "malign"), *args], capture_output=True, text=True,
                            env=CLI_ENV, timeout=timeout)
    assert result.returncode == 0, f"malign {' '.join(args)}:\n{result.stderr[-3000:]}"
    noise = [line for line in result.stderr.splitlines() if is_tensorflow_log_line(line)]
    assert not noise, f"malign {args[0]} printed TensorFlow's log lines: {noise[:3]}"
    return result


def test_every_serialisable_class_is_registered_by_import_malign_alone():
    classes = _package_classes()
    names = {cls.__name__ for cls in classes}
    # The ones the fault report named, and the model: the scan must find them.
    assert {"AlignModel", "ImageTower", "TextTower", "FusedLamb", "FusedAdamW", "WarmupDecay",
            "SentencePieceTokenizer", "WordPieceTokenizer", "ClipValue"} <= names
    registered = {}
    for cls in classes:
        registered_name = keras.saving.get_registered_name(cls)
        assert registered_name == f"malign>{cls.__name__}", (
            f"{cls.__module__}.{cls.__name__} is not registered: decorate it with "
            "keras.saving.register_keras_serializable(package='malign')")
        registered[registered_name] = f"{cls.__module__}.{cls.__name__}"
    # In a new process, `import malign` alone must register every one of them.
    result = _python(
        "import json, keras, malign\n"
        f"names = {sorted(registered)!r}\n"
        "print(json.dumps({n: keras.saving.get_registered_object(n) is not None for n in names}))")
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    missing = [registered[n] for n, ok in found.items() if not ok]
    assert not missing, f"not registered after `import malign` alone: {missing}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny model written by `malign train` in its own process (checkpoints every 2 steps)."""
    workdir = tmp_path_factory.mktemp("journey") / "run"
    _malign("train", "--preset", "tiny", "--set", "training.steps=4",
            "--set", "training.warmup_steps=1", "--set", "training.steps_per_checkpoint=2",
            "--set", "training.global_batch_size=4", "--workdir", str(workdir), "--verbose", "0")
    return workdir


def test_trained_model_and_checkpoints_load_with_keras_in_a_new_process(trained):
    paths = [trained / "model.keras", *sorted((trained / "checkpoints").glob("step_*.keras"))]
    assert len(paths) == 3
    result = _python(
        "import json, keras, malign\n"
        "out = []\n"
        f"for path in {[str(p) for p in paths]!r}:\n"
        "    model = keras.saving.load_model(path)\n"
        "    schedule = model.optimizer.learning_rate\n"
        "    out.append([type(model).__name__, type(model.optimizer).__name__,\n"
        "                type(model.optimizer._learning_rate).__name__,\n"
        "                int(model.optimizer.iterations.numpy())])\n"
        "print(json.dumps(out))")
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [["AlignModel", "FusedLamb", "WarmupDecay", 4],
                      ["AlignModel", "FusedLamb", "WarmupDecay", 2],
                      ["AlignModel", "FusedLamb", "WarmupDecay", 4]]


def test_every_command_that_takes_a_model_loads_what_train_wrote(trained, tmp_path):
    """eval, eval zero-shot, export, train --init_from; then a query on the SavedModel."""
    vocab = str(malign.text.test_vocab_path())
    model = str(trained / "model.keras")
    _malign("data", "synthetic", "--out", str(tmp_path / "scenes"), "--n", "12")
    data = str(tmp_path / "scenes")
    _malign("eval", "--model", model, "--tokenizer", vocab, "--data", data,
            "--out", str(tmp_path / "eval"), "--quiet")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["languages"]) == {"en", "de", "fr", "cs"}
    folder = tmp_path / "by-class"
    for label, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (folder / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40 + i, 36), colour).save(folder / label / f"{i}.png")
    (tmp_path / "classes.txt").write_text("red\nblue\n")
    _malign("eval", "zero-shot", "--model", model, "--tokenizer", vocab, "--data", str(folder),
            "--classes", str(tmp_path / "classes.txt"), "--out", str(tmp_path / "zero-shot"),
            "--quiet")
    assert (tmp_path / "zero-shot" / "metrics.json").is_file()
    _malign("export", "--model", model, "--tokenizer", vocab, "--out", str(tmp_path / "export"),
            "--max-image-pixels", "1M")
    card = json.loads((tmp_path / "export" / "1" / "assets.extra" / "model.json").read_text())
    assert card["image"]["max_image_pixels"] == 1 << 20
    _malign("train", "--preset", "tiny", "--set", f"training.init_from={model}",
            "--set", "training.steps=2", "--set", "training.warmup_steps=1",
            "--set", "training.steps_per_checkpoint=2", "--set", "training.global_batch_size=4",
            "--workdir", str(tmp_path / "finetune"), "--verbose", "0")
    # A query in a process that has neither malign nor keras-hub imported.
    result = _python(
        "import json, sys, tensorflow as tf, tensorflow_text\n"
        f"m = tf.saved_model.load({str(tmp_path / 'export' / '1')!r})\n"
        "e = m.signatures['embed_text'](text=tf.constant(['a red circle', 'ein Kreis']))\n"
        "n = tf.norm(e['embeddings'], axis=1).numpy().tolist()\n"
        "print(json.dumps([n, 'malign' in sys.modules, 'keras_hub' in sys.modules]))")
    assert result.returncode == 0, result.stderr[-3000:]
    norms, has_malign, has_keras_hub = json.loads(result.stdout.strip().splitlines()[-1])
    assert norms == pytest.approx([1.0, 1.0], abs=1e-5)
    assert not has_malign and not has_keras_hub
