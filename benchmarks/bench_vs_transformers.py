"""malign against the transformers ``AlignModel`` (PyTorch): same weights, same machine.

Builds a randomly initialised transformers ``AlignModel`` from an ``AlignConfig``, saves
it with ``save_pretrained``, converts it with ``malign convert transformers-align``, and
checks that both have the same number of weights and give the same embeddings (max
difference <= 1e-4 on L2-normalised embeddings of the same images and captions). Then it
times both, alternating (A B A B ...), each measurement in a process of its own so that
neither warms the other's caches or gets a quieter slice of a shared machine:

- ``train``: one training step on one fixed in-memory batch: both towers forward in
  training mode, the symmetric contrastive loss (label smoothing 0.1, learned
  temperature), backward, AdamW update. malign: the model's own ``train_step`` under
  ``fit``, compiled by ``malign.training.compile_for_training`` (AdamW, linear schedule, weight decay
  1e-5 off norms and biases), as ``malign train`` runs it. transformers:
  ``AlignModel(..., return_loss=True)``, ``loss.backward()``, ``torch.optim.AdamW``
  (``fused=True``: the transformers ``Trainer``'s default optimizer with torch >= 2.8,
  the same betas, epsilon and weight decay); no gradient clipping on either side.
- ``image-grad`` / ``text-grad`` (diagnostic, to see where a training step goes): one
  tower's forward in training mode and backward of a fixed linear function of its L2-normalised
  embedding (gradients of all its trainable weights; no optimizer, no loss across towers).
- ``image`` / ``text``: embedding throughput (inference) of each tower: malign's
  ``embed_image`` / ``embed_text`` in one ``tf.function`` (as ``malign.evaluation``
  embeds); transformers' ``get_image_features`` / ``get_text_features`` under
  ``torch.inference_mode()``, then L2-normalised.

Each measurement runs ``--warmup`` steps, then ``--steps`` timed steps; its figure is the
batch size over the median step time. The table gives min / median / max of those figures
over ``--repeats`` processes per side, and malign's median over transformers' median.
Images enter malign as [0, 1] NHWC float32 (the model's first layer applies ``2x - 1``)
and transformers as ``2x - 1`` NCHW, computed once outside the timing; captions are
``[CLS] random ids [SEP]`` of random length (the same ids and masks on both sides).

Configurations (``--configs``):

- ``a``: EfficientNet-B0 (width/depth 1.0, no top conv) at 128 px + BERT 4 x 256
  (4 heads, 1024 intermediate, 30522 WordPiece), 64 tokens, batch 32.
- ``b``: EfficientNet-B3 width/depth (1.2 / 1.4) at 224 px + BERT-base, 64 tokens, batch 16.
- ``base``: ``kakaobrain/align-base``'s architecture (EfficientNet-B7 width 2.0 / depth
  3.1 at 289 px + BERT-base, 64 tokens; ``tests/fixtures/align_base_layout/config.json``),
  batch 8; run it with ``--modes image,text`` (a training step of it is slow on a CPU).

transformers and torch are benchmark-only extras (``pip install -e .[bench]``); the torch
side may run under another Python (``--torch-python``), e.g. a venv of its own.

The machine must be quiet: with another process on one of two cores, torch's OpenMP
threads wait for each other at every parallel region and a transformers step took 5 to 10x
as long (malign's 1.3 to 1.5x). Each measurement therefore reports the CPU that other
processes used during its timed steps, and ``--quiet-wait`` waits before each process for
them to drop below ``--quiet-cores``.

Usage:
    python benchmarks/bench_vs_transformers.py --torch-python /work/benchvenv/bin/python \\
        --configs a --modes train,image,text --repeats 5 --quiet-wait 60 --write
    python benchmarks/bench_vs_transformers.py --configs base --modes image,text --repeats 3
    python benchmarks/bench_vs_transformers.py --configs a --modes image-grad,text-grad
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULT_PREFIX = "RESULT "
SIDES = ("malign", "transformers")
MODES = ("train", "image", "text", "image-grad", "text-grad")
PARITY_TOLERANCE = 1e-4
PARITY_BATCH = 4
# transformers AlignVisionConfig's B0 stage table (also its default), with B-variant scaling.
_B0_TABLE = dict(kernel_sizes=[3, 3, 5, 3, 5, 5, 3], in_channels=[32, 16, 24, 40, 80, 112, 192],
                 out_channels=[16, 24, 40, 80, 112, 192, 320], strides=[1, 2, 2, 2, 1, 2, 1],
                 num_block_repeats=[1, 2, 2, 3, 3, 4, 1], expand_ratios=[1, 6, 6, 6, 6, 6, 6],
                 depthwise_padding=[], hidden_dim=2560)
_BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=512, hidden_act="gelu")

#: name -> what the configuration is: the transformers config pieces and the batch.
CONFIGS: dict[str, dict] = {
    "a": dict(
        title="EfficientNet-B0 (no top) 128 px + BERT 4 x 256",
        vision=dict(_B0_TABLE, width_coefficient=1.0, depth_coefficient=1.0, image_size=128),
        text=dict(_BERT_BASE, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=1024),
        sequence_length=64, batch=32,
    ),
    "b": dict(
        title="EfficientNet-B3 width/depth (no top) 224 px + BERT-base",
        vision=dict(_B0_TABLE, width_coefficient=1.2, depth_coefficient=1.4, image_size=224),
        text=dict(_BERT_BASE), sequence_length=64, batch=16,
    ),
    "base": dict(
        title="align-base architecture (EfficientNet-B7 2.0/3.1, 289 px) + BERT-base",
        config_file=str(REPO / "tests" / "fixtures" / "align_base_layout" / "config.json"),
        sequence_length=64, batch=8,
    ),
}


def _emit(result: dict) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def _inputs(batch: int, image_size: int, sequence_length: int,
            vocabulary_size: int, seed: int = 0) -> dict:
    """One fixed batch as numpy: images [0, 1] NHWC float32, token ids and 0/1 mask int32."""
    import numpy as np

    rng = np.random.default_rng([seed, batch, image_size])
    images = (rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
              .astype(np.float32) / 255.0)
    lengths = rng.integers(3, sequence_length + 1, (batch, 1))
    positions = np.arange(sequence_length)[None, :]
    # ids above BERT's special tokens ([unusedN], [UNK] 100, [CLS] 101, [SEP] 102, ...)
    ids = rng.integers(min(1000, vocabulary_size // 2), vocabulary_size, (batch, sequence_length))
    ids = np.where(positions == 0, 101, ids)               # [CLS]
    ids = np.where(positions == lengths - 1, 102, ids)     # [SEP]
    mask = (positions < lengths).astype(np.int32)
    return {"images": images, "token_ids": (ids * mask).astype(np.int32), "padding_mask": mask}


def cpu_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (``/proc/stat``), or nan."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
        # user nice system idle iowait irq softirq steal
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


class ContentionMeter:
    """The CPU that other processes use while this one times its steps, in cores."""

    def start(self) -> None:
        self.wall = time.perf_counter()
        self.busy = cpu_busy_seconds()
        self.own = time.process_time()

    def other_cores(self) -> float:
        wall = time.perf_counter() - self.wall
        own = time.process_time() - self.own
        return max(0.0, (cpu_busy_seconds() - self.busy - own) / wall)


def _gradient_target(batch: int, dim: int):
    """A fixed [batch, dim] float32 direction; the grad modes back-propagate its dot product."""
    import numpy as np

    return np.random.default_rng([7, batch, dim]).standard_normal((batch, dim)).astype(np.float32)


def _summary(step_times: list[float], batch: int, meter: ContentionMeter) -> dict:
    median = statistics.median(step_times)
    return {"step_times": step_times, "median_step_s": median, "samples_per_s": batch / median,
            "other_cores": meter.other_cores()}


# -- the transformers side (runs under --torch-python) ------------------------------------------
def _torch_setup(threads: int | None = None):
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    return torch


def _align_config(spec: dict):
    from transformers import AlignConfig, AlignTextConfig, AlignVisionConfig
    from transformers.models.align.modeling_align import round_filters

    if "config_file" in spec:
        return AlignConfig.from_json_file(spec["config_file"])
    vision = AlignVisionConfig(**spec["vision"])
    text = AlignTextConfig(**spec["text"])
    # The image embedding is the last block's (rounded) width; the text projection matches it.
    projection_dim = round_filters(vision, vision.out_channels[-1])
    return AlignConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                       projection_dim=projection_dim, temperature_init_value=1.0)


def _torch_counts(model) -> dict:
    params = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for n, b in model.named_buffers()
                if n.endswith(("running_mean", "running_var")))
    return {"parameters": int(params), "batch_norm_statistics": int(stats),
            "weights": int(params + stats)}


def _torch_inputs(torch, arrays: dict) -> dict:
    return {
        "pixel_values": torch.from_numpy(
            (2.0 * arrays["images"] - 1.0).transpose(0, 3, 1, 2).copy()),
        "input_ids": torch.from_numpy(arrays["token_ids"].astype("int64")),
        "attention_mask": torch.from_numpy(arrays["padding_mask"].astype("int64")),
    }


def _image_size(config) -> int:
    size = config.vision_config.image_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _trained_like_vision(torch, model, image_size: int) -> None:
    """Activations of a trained model's size in inference mode.

    transformers initialises convolutions with std 0.02 and batch-norm statistics at 0 / 1,
    so in inference mode the image features shrink block by block to zero (their L2 norm
    underflows and the embedding is inf) and denormal floats would slow whichever side does
    not flush them. He-initialised convolutions and batch-norm statistics collected from
    training-mode passes keep them of order one, as in a trained model.
    """
    with torch.no_grad():
        for module in model.vision_model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        norms = [m for m in model.vision_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average
        model.vision_model.train()
        for _ in range(2):
            model.vision_model(pixel_values=torch.rand((4, 3, image_size, image_size)) * 2 - 1)
        for bn in norms:
            bn.momentum = model.config.vision_config.batch_norm_momentum


def torch_make_checkpoint(spec: dict, directory: Path) -> dict:
    """Random transformers AlignModel -> ``directory/transformers`` + ``parity.npz`` (its embeddings)."""
    import numpy as np

    torch = _torch_setup()
    from transformers import AlignModel

    torch.manual_seed(0)
    config = _align_config(spec)
    model = AlignModel(config)
    _trained_like_vision(torch, model, _image_size(config))
    model.eval()
    model.save_pretrained(directory / "transformers")
    arrays = _inputs(PARITY_BATCH, _image_size(config), spec["sequence_length"],
                     config.text_config.vocab_size)
    with torch.no_grad():
        out = model(**_torch_inputs(torch, arrays))
    np.savez(directory / "parity.npz", **arrays, image_embeds=out.image_embeds.numpy(),
             text_embeds=out.text_embeds.numpy())
    return {"counts": _torch_counts(model), "image_size": _image_size(config),
            "vocabulary_size": config.text_config.vocab_size,
            "embedding_dim": int(out.image_embeds.shape[-1])}


def _time_steps(step, warmup: int, steps: int, meter) -> list[float]:
    """Runs ``step()`` ``warmup + steps`` times; the seconds of each run (the meter starts
    at the first timed one)."""
    times = []
    for i in range(warmup + steps):
        if i == warmup:
            meter.start()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def _torch_features(model, mode: str, inputs: dict):
    """The transformers model's L2-normalised embeddings of the tower ``mode`` names."""
    import torch

    if mode.startswith("image"):
        features = model.get_image_features(pixel_values=inputs["pixel_values"])
    else:
        features = model.get_text_features(input_ids=inputs["input_ids"],
                                           attention_mask=inputs["attention_mask"])
    return torch.nn.functional.normalize(features.pooler_output, dim=-1)


def torch_measure(spec: dict, directory: Path, mode: str, batch: int, warmup: int,
                  steps: int, threads: int | None = None) -> dict:
    torch = _torch_setup(threads)
    import transformers
    from transformers import AlignModel

    model = AlignModel.from_pretrained(directory)
    config = model.config
    arrays = _inputs(batch, _image_size(config), spec["sequence_length"],
                     config.text_config.vocab_size)
    inputs = _torch_inputs(torch, arrays)
    meter = ContentionMeter()
    if mode == "train":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-6,
                                      weight_decay=1e-5, fused=True)

        def step():
            optimizer.zero_grad(set_to_none=True)
            model(**inputs, return_loss=True).loss.backward()
            optimizer.step()

        times = _time_steps(step, warmup, steps, meter)
    elif mode.endswith("-grad"):
        model.train()
        target = torch.from_numpy(_gradient_target(batch, model.config.projection_dim))

        def step():
            model.zero_grad(set_to_none=True)
            (_torch_features(model, mode, inputs) * target).sum().backward()

        times = _time_steps(step, warmup, steps, meter)
    else:
        model.eval()

        def step():
            with torch.inference_mode():
                _torch_features(model, mode, inputs).numpy()

        times = _time_steps(step, warmup, steps, meter)
    return {**_summary(times[warmup:], batch, meter),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "threads": torch.get_num_threads()}


# -- the malign side (runs under this Python) ---------------------------------------------------
def _malign_setup():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO))
    import keras

    import malign

    return keras, malign


def malign_parity(directory: Path) -> dict:
    import numpy as np

    keras, malign = _malign_setup()
    model = keras.saving.load_model(directory / "malign" / "model.keras", compile=False)
    data = np.load(directory / "parity.npz")
    images = model.embed_image(data["images"])
    texts = model.embed_text({"token_ids": data["token_ids"], "padding_mask": data["padding_mask"]})
    return {
        "weights": malign.models.count_params(model),
        "trainable": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "image_max_diff": float(np.max(np.abs(np.asarray(images) - data["image_embeds"]))),
        "text_max_diff": float(np.max(np.abs(np.asarray(texts) - data["text_embeds"]))),
    }


def malign_measure(spec: dict, directory: Path, mode: str, batch: int, warmup: int,
                   steps: int) -> dict:
    keras, malign = _malign_setup()
    import tensorflow as tf

    from malign.config import TrainingConfig
    from malign.training import compile_for_training

    strategy = malign.distributed.get_strategy("default")
    with strategy.scope():
        model = keras.saving.load_model(directory / "malign" / "model.keras", compile=False)
    arrays = _inputs(batch, model.image_size, model.sequence_length, model.vocabulary_size)
    times, meter = [], ContentionMeter()
    if mode == "train":
        cfg = TrainingConfig(optimizer="adamw", learning_rate=1e-4, global_batch_size=batch,
                             steps=warmup + steps, warmup_steps=1)
        with strategy.scope():
            compile_for_training(model, cfg, strategy)  # as malign train compiles
        data = tf.data.Dataset.from_tensors({"image": arrays["images"],
                                             "token_ids": arrays["token_ids"],
                                             "padding_mask": arrays["padding_mask"]}).repeat()

        class StepTimer(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                if batch == warmup:
                    meter.start()
                self.start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                times.append(time.perf_counter() - self.start)

        model.fit(data, epochs=1, steps_per_epoch=warmup + steps, callbacks=[StepTimer()],
                  verbose=0)
    elif mode.endswith("-grad"):
        image = mode == "image-grad"
        tower = model.image_tower if image else model.text_tower
        variables = tower.trainable_variables
        target = tf.constant(_gradient_target(batch, model.embedding_dim))

        @tf.function
        def gradients(*args):
            with tf.GradientTape() as tape:
                if image:
                    embeddings = model.embed_image(args[0], training=True)
                else:
                    embeddings = model.embed_text({"token_ids": args[0], "padding_mask": args[1]},
                                                  training=True)
                loss = tf.reduce_sum(embeddings * target)
            grads = tape.gradient(loss, variables)
            # One number that depends on every gradient, so none is pruned.
            return tf.add_n([tf.reduce_sum(g.values if isinstance(g, tf.IndexedSlices) else g)
                             for g in grads if g is not None])

        args = ((tf.constant(arrays["images"]),) if image else
                (tf.constant(arrays["token_ids"]), tf.constant(arrays["padding_mask"])))
        times = _time_steps(lambda: gradients(*args).numpy(), warmup, steps, meter)
    else:
        # As malign.evaluation.embedding embeds: one tf.function per tower, inference mode.
        if mode == "image":
            fn = tf.function(lambda x: model.embed_image(x, training=False), reduce_retracing=True)
            args = (tf.constant(arrays["images"]),)
        else:
            fn = tf.function(lambda ids, mask: model.embed_text(
                {"token_ids": ids, "padding_mask": mask}, training=False), reduce_retracing=True)
            args = (tf.constant(arrays["token_ids"]), tf.constant(arrays["padding_mask"]))
        times = _time_steps(lambda: fn(*args).numpy(), warmup, steps, meter)
    return {**_summary(times[warmup:], batch, meter), "versions": {"tensorflow": tf.__version__,
                                                            "keras": keras.__version__}}


# -- the parent: checkpoint, conversion, parity, alternation ------------------------------------
def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(max_cores: float, timeout: float, sample: float = 2.0) -> float:
    """Waits (up to ``timeout`` s) until other processes use at most ``max_cores``.

    Returns the cores in use in the last ``sample`` seconds (nothing of ours runs then).
    """
    deadline = time.monotonic() + timeout
    while True:
        before = cpu_busy_seconds()
        time.sleep(sample)
        used = (cpu_busy_seconds() - before) / sample
        if not used > max_cores or time.monotonic() >= deadline:
            return used


def _run(command: list[str], env: dict | None = None, log: Path | None = None) -> dict:
    """Runs a worker; returns the JSON of its RESULT line (stderr to ``log``).

    Adds ``process_s`` (wall time) and ``other_cores_process``: the CPU that processes
    other than the worker used meanwhile, in cores (the worker's own ``other_cores`` covers
    only its timed steps).
    """
    start = time.perf_counter()
    busy, children = cpu_busy_seconds(), _children_cpu_seconds()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    other = cpu_busy_seconds() - busy - (_children_cpu_seconds() - children)
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(command)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(command)}\n"
                         f"{proc.stderr[-4000:]}")
    results = [line[len(RESULT_PREFIX):] for line in proc.stdout.splitlines()
               if line.startswith(RESULT_PREFIX)]
    if not results:
        raise SystemExit(f"no result from {shlex.join(command)}\n{proc.stdout[-2000:]}")
    result = json.loads(results[-1])
    result["process_s"] = wall
    result["other_cores_process"] = max(0.0, other / wall)
    return result


def _malign_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _worker_command(python: str, side: str, args: argparse.Namespace, config: str,
                    extra: list[str]) -> list[str]:
    return [python, str(Path(__file__).resolve()), "--worker", side, "--configs", config,
            "--workdir", str(args.workdir), *extra]


def prepare(config: str, args: argparse.Namespace, log: Path) -> dict:
    """Checkpoint (transformers), conversion (malign convert), weight count and parity."""
    spec = CONFIGS[config]
    directory = Path(args.workdir) / config
    (directory / "malign").mkdir(parents=True, exist_ok=True)
    print(f"[{config}] transformers checkpoint ...", flush=True)
    made = _run(_worker_command(args.torch_python, "transformers", args, config,
                                ["--mode", "checkpoint"]), log=log)
    print(f"[{config}] malign convert ...", flush=True)
    convert = [sys.executable, str(REPO / "malign_launcher.py"), "convert", "transformers-align",
               "--src", str(directory / "transformers"),
               "--out", str(directory / "malign" / "model.keras"),
               "--image-size", str(made["image_size"]),
               "--sequence-length", str(spec["sequence_length"]), "--overwrite"]
    proc = subprocess.run(convert, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=_malign_env())
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(convert)}\n{proc.stdout}\n")
    if proc.returncode != 0:
        raise SystemExit(f"malign convert failed:\n{proc.stdout[-4000:]}")
    parity = _run(_worker_command(sys.executable, "malign", args, config, ["--mode", "parity"]),
                  env=_malign_env(), log=log)
    counts = made["counts"]
    problems = []
    if parity["weights"] != counts["weights"]:
        problems.append(f"weights: malign {parity['weights']:,} != transformers "
                        f"{counts['weights']:,} (parameters + batch-norm statistics)")
    for kind in ("image", "text"):
        if not parity[f"{kind}_max_diff"] <= PARITY_TOLERANCE:
            problems.append(f"{kind} embeddings differ by {parity[f'{kind}_max_diff']:.3g} "
                            f"> {PARITY_TOLERANCE}")
    info = {"config": config, "transformers_counts": counts, "malign": parity,
            "embedding_dim": made["embedding_dim"], "image_size": made["image_size"]}
    print(f"[{config}] weights {parity['weights']:,} (both), max |diff| image "
          f"{parity['image_max_diff']:.2e} text {parity['text_max_diff']:.2e}", flush=True)
    if problems:
        raise SystemExit(f"[{config}] malign and transformers disagree:\n  " + "\n  ".join(problems))
    return info


def measure(config: str, mode: str, args: argparse.Namespace, log: Path) -> dict:
    """``--repeats`` processes per side, alternating malign, transformers, malign, ..."""
    batch = args.batch or CONFIGS[config]["batch"]
    extra = ["--mode", mode, "--batch", str(batch), "--warmup", str(args.warmup),
             "--steps", str(args.steps), "--torch-threads", str(args.torch_threads)]
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for repeat in range(args.repeats):
        for side in SIDES:
            python = sys.executable if side == "malign" else args.torch_python
            env = _malign_env() if side == "malign" else None
            quiet = (wait_for_quiet(args.quiet_cores, args.quiet_wait) if args.quiet_wait
                     else float("nan"))
            load = os.getloadavg()[0]
            result = _run(_worker_command(python, side, args, config, extra), env=env, log=log)
            result["load_before"] = load
            result["other_cores_before"] = quiet
            runs[side].append(result)
            print(f"[{config} {mode}] repeat {repeat + 1}/{args.repeats} {side:12s} "
                  f"{result['samples_per_s']:8.2f} samples/s (median step "
                  f"{result['median_step_s'] * 1000:.0f} ms; load {load:.1f}, other processes "
                  f"{result['other_cores']:.2f} cores)", flush=True)
    return {"config": config, "mode": mode, "batch": batch, "runs": runs}


def summarize(measurement: dict) -> dict:
    """min / median / max samples/s per side and the ratio of the medians."""
    row = {"config": measurement["config"], "mode": measurement["mode"],
           "batch": measurement["batch"]}
    for side in SIDES:
        values = [r["samples_per_s"] for r in measurement["runs"][side]]
        row[side] = {"min": min(values), "median": statistics.median(values), "max": max(values),
                     "n": len(values), "other_cores": statistics.median(
                         r.get("other_cores", float("nan")) for r in measurement["runs"][side])}
    row["ratio"] = row["malign"]["median"] / row["transformers"]["median"]
    return row


def format_table(rows: list[dict]) -> str:
    """Markdown table of ``summarize`` rows."""
    lines = ["| config | mode | batch | malign samples/s min / median / max | "
             "transformers samples/s min / median / max | malign / transformers (medians) | "
             "other processes' cores (median, malign / transformers) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = []
        for side in SIDES:
            s = row[side]
            cells.append(f"{s['min']:.2f} / **{s['median']:.2f}** / {s['max']:.2f}")
        lines.append(f"| {row['config']} | {row['mode']} | {row['batch']} | {cells[0]} | "
                     f"{cells[1]} | **{row['ratio']:.2f}x** | "
                     f"{row['malign']['other_cores']:.2f} / {row['transformers']['other_cores']:.2f} |")
    return "\n".join(lines)


def _versions(measurements: list[dict]) -> str:
    versions = {}
    for m in measurements:
        for side in SIDES:
            for r in m["runs"][side]:
                versions.update(r.get("versions", {}))
    return ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="a",
                        help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--modes", default="train,image,text",
                        help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--repeats", type=int, default=5, help="processes per side (alternating)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per process")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process")
    parser.add_argument("--batch", type=int, default=None,
                        help="override every configuration's batch size")
    parser.add_argument("--torch-python", default=sys.executable,
                        help="Python with torch and transformers for the transformers side")
    parser.add_argument("--workdir", type=Path,
                        default=Path(os.environ.get("TMPDIR", "/tmp")) / "malign-vs-transformers",
                        help="checkpoints, converted models and the log of every process")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1,
                        help="torch.set_num_threads on the transformers side (default: all cores)")
    parser.add_argument("--quiet-wait", type=float, default=0.0,
                        help="before each process, wait up to this many seconds until other "
                             "processes use at most --quiet-cores (0 = do not wait)")
    parser.add_argument("--quiet-cores", type=float, default=0.3,
                        help="CPU (in cores) that other processes may use when a process starts")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    modes = [m for m in args.modes.split(",") if m]
    for name, values, known in (("--configs", configs, CONFIGS), ("--modes", modes, MODES)):
        unknown = [v for v in values if v not in known]
        if unknown or not values:
            parser.error(f"{name}: unknown {unknown or 'empty'}; choose from {', '.join(known)}")
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--repeats and --steps must be >= 1, --warmup >= 0")
    args.config_list, args.mode_list = configs, modes
    return args


def worker(args: argparse.Namespace) -> None:
    config = args.config_list[0]
    spec = CONFIGS[config]
    directory = Path(args.workdir) / config
    if args.worker == "transformers":
        if args.mode == "checkpoint":
            _emit(torch_make_checkpoint(spec, directory))
        else:
            _emit(torch_measure(spec, directory / "transformers", args.mode, args.batch,
                                args.warmup, args.steps, args.torch_threads))
    elif args.mode == "parity":
        _emit(malign_parity(directory))
    else:
        _emit(malign_measure(spec, directory, args.mode, args.batch, args.warmup, args.steps))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    log = args.workdir / "processes.log"
    load_start = os.getloadavg()
    prepared = [prepare(config, args, log) for config in args.config_list]
    measurements = [measure(config, mode, args, log)
                    for config in args.config_list for mode in args.mode_list]
    load_end = os.getloadavg()
    rows = [summarize(m) for m in measurements]
    table = format_table(rows)
    print(table)
    raw = args.workdir / "results.json"
    raw.write_text(json.dumps({"prepared": prepared, "measurements": measurements}, indent=1))
    print(f"all step times: {raw}")
    if args.write:
        sys.path.insert(0, str(HERE))
        from machine import append_result, describe_machine

        command = "python benchmarks/bench_vs_transformers.py " + shlex.join(
            argv if argv is not None else sys.argv[1:])
        configs = "\n".join(
            f"- `{p['config']}`: {CONFIGS[p['config']]['title']}; "
            f"{p['malign']['weights']:,} weights on both sides "
            f"(transformers: {p['transformers_counts']['parameters']:,} parameters + "
            f"{p['transformers_counts']['batch_norm_statistics']:,} batch-norm statistics); "
            f"embeddings agree to {max(p['malign']['image_max_diff'], p['malign']['text_max_diff']):.1e}"
            for p in prepared)
        body = (f"Command: `{command}`  \nMachine: {describe_machine()}; {_versions(measurements)}  \n"
                f"1-min load average at the start and end: {load_start[0]:.1f} / {load_end[0]:.1f}  \n"
                f"Each side: {args.repeats} processes, alternating malign / transformers; each "
                f"{args.warmup} warm-up + {args.steps} timed steps on one fixed in-memory batch, "
                "its figure the batch over the median step time; float32.\n\n"
                f"{configs}\n\n{table}")
        append_result("malign vs transformers AlignModel (PyTorch): "
                      + ", ".join(args.config_list), body)


if __name__ == "__main__":
    main()
