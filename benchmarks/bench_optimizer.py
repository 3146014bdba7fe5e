"""Time of one optimizer update over a model's trainable variables: Keras' AdamW against
malign's (``malign.training.make_optimizer``).

Both optimizers get the same hyperparameters, schedule and weight-decay exclusions; each
update is one traced ``optimizer.apply(gradients, variables)`` on fixed random gradients,
alternating the two call by call (A B A B ...) so the machine's drift hits both alike.
The figure is the median over ``--repeats`` blocks of ``--steps`` calls (each block's
median), with min and max.

Usage:
    python benchmarks/bench_optimizer.py --preset student-b0-bert-mini --repeats 7
    python benchmarks/bench_optimizer.py --model /tmp/bvt/a/malign/model.keras --write
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from machine import append_result, describe_machine  # noqa: E402

import malign  # noqa: E402
from malign.config import TrainingConfig  # noqa: E402
from malign.training import make_optimizer  # noqa: E402
from malign.training.optimizers import NO_DECAY_NAMES  # noqa: E402


def keras_adamw(cfg: TrainingConfig) -> keras.optimizers.Optimizer:
    """Keras' own AdamW with malign's hyperparameters, schedule and decay exclusions."""
    malign_opt = make_optimizer(cfg)
    opt = keras.optimizers.AdamW(
        learning_rate=malign_opt._learning_rate, beta_1=cfg.beta_1, beta_2=cfg.beta_2,
        epsilon=cfg.epsilon, weight_decay=cfg.weight_decay)
    opt.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    return opt


def time_updates(fns: dict, repeats: int, steps: int) -> dict:
    """Median ms of each block of ``steps`` calls, alternating the functions call by call."""
    blocks = {name: [] for name in fns}
    for _ in range(repeats):
        times = {name: [] for name in fns}
        for _ in range(steps):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(1000 * (time.perf_counter() - start))
        for name in fns:
            blocks[name].append(statistics.median(times[name]))
    return blocks


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--preset", default="student-b0-bert-mini")
    what.add_argument("--model", help="a .keras file (e.g. bench_vs_transformers' converted "
                                      "model) instead of a preset")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="append to RESULTS.md")
    args = parser.parse_args(argv)

    if args.model:
        model = keras.saving.load_model(args.model, compile=False)
        label = os.path.basename(os.path.dirname(os.path.dirname(args.model))) or args.model
    else:
        model = malign.AlignModel.from_preset(args.preset)
        label = args.preset
    variables = model.trainable_variables
    sizes = [int(np.prod(v.shape)) for v in variables]
    rng = np.random.default_rng(0)
    grads = [tf.constant(rng.normal(scale=1e-3, size=v.shape).astype("float32"))
             for v in variables]
    cfg = TrainingConfig(optimizer="adamw", learning_rate=1e-4, weight_decay=1e-5,
                         global_batch_size=32, steps=1000, warmup_steps=10)
    fns = {}
    for name, opt in (("keras AdamW", keras_adamw(cfg)), ("malign AdamW", make_optimizer(cfg))):
        opt.build(variables)
        update = tf.function(lambda opt=opt: opt.apply(grads, variables))
        for _ in range(args.warmup):
            update()
        fns[name] = update
    blocks = time_updates(fns, args.repeats, args.steps)

    rows = []
    for name, values in blocks.items():
        rows.append(f"| {name} | {min(values):.1f} / **{statistics.median(values):.1f}** / "
                    f"{max(values):.1f} |")
        print(f"{name}: median {statistics.median(values):.1f} ms "
              f"(min {min(values):.1f}, max {max(values):.1f})")
    ratio = statistics.median(blocks["keras AdamW"]) / statistics.median(blocks["malign AdamW"])
    print(f"keras / malign: {ratio:.2f}x")
    if args.write:
        command = "python benchmarks/bench_optimizer.py " + " ".join(argv or sys.argv[1:])
        body = (
            f"Command: `{command}`  \n"
            f"Machine: {describe_machine()}  \n"
            f"{label}: {len(variables)} trainable variables, {sum(sizes):,} weights (largest "
            f"{max(sizes):,}); one `optimizer.apply` of fixed random gradients, traced; "
            f"{args.repeats} blocks of {args.steps} calls, the two alternating call by call; "
            f"ms, min / median / max of the blocks' medians.\n\n"
            "| update | ms per step |\n|---|---|\n" + "\n".join(rows) +
            f"\n\nKeras / malign (medians): **{ratio:.2f}x**\n")
        append_result("Optimizer update: Keras' AdamW against malign's (issue 11)", body)


if __name__ == "__main__":
    main()
