"""Train-step throughput (samples/s) of a preset under Keras fit.

Runs ``fit`` on random in-memory batches shaped like real ones (the input pipeline is
measured separately, see bench_input_pipeline.py), times each step after warm-up with
a callback, and reports the median over steps and repeats.

Usage:
    python benchmarks/bench_train_step.py --preset tiny --batch 64 --steps 30
    python benchmarks/bench_train_step.py --preset student-b0-small --batch 8 --image-size 224 \
        --write

``--conv1x1 conv`` puts the image tower's 1x1 convolutions back on TensorFlow's ``Conv2D``
kernels (as before ``malign.models.pointwise_conv``), to compare with the matmul.
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
from machine import append_result, describe_machine  # noqa: E402

import malign  # noqa: E402
from malign.config import TrainingConfig  # noqa: E402
from malign.training import (  # noqa: E402
    FUSED_MIN_SIZE,
    compile_for_training,
    make_optimizer,
    random_dataset,
    resolve_jit_compile,
)


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def use_conv2d_kernels(model) -> int:
    """Undoes ``pointwise_conv2d`` on the image tower: its 1x1 convolutions run on
    TensorFlow's ``Conv2D`` kernels again. Returns how many layers changed."""
    changed = 0
    for layer in model.image_tower.layers:
        if "convolution_op" in vars(layer):
            del layer.convolution_op
            changed += 1
    return changed


def measure(preset: str, batch: int, steps: int, warmup: int, strategy_spec: str,
            overrides: dict, mixed_precision: str, fused_min_size: int = FUSED_MIN_SIZE,
            optimizer_in_step: bool = False, conv1x1: str = "matmul") -> dict:
    strategy = malign.distributed.get_strategy(strategy_spec)
    malign.distributed.check_global_batch(batch, strategy)
    keras.mixed_precision.set_global_policy(mixed_precision)
    cfg = TrainingConfig(global_batch_size=batch, steps=steps + warmup, warmup_steps=1,
                         strategy=strategy_spec, mixed_precision=mixed_precision)
    with strategy.scope():
        model = malign.AlignModel.from_preset(preset, **overrides)
        if conv1x1 == "conv" and not use_conv2d_kernels(model):
            raise SystemExit("--conv1x1 conv: the image tower has no pointwise_conv2d layer")
        if optimizer_in_step:  # as before compile_for_training: slots made while tracing
            model.compile(optimizer=make_optimizer(cfg, fused_min_size=fused_min_size),
                          jit_compile=resolve_jit_compile(cfg, strategy))
        else:
            compile_for_training(model, cfg, strategy, fused_min_size=fused_min_size)
    per_replica = batch // strategy.num_replicas_in_sync
    data = strategy.distribute_datasets_from_function(
        lambda ctx: random_dataset(model.model_config, per_replica, pipeline_id=ctx.input_pipeline_id)
        .take(8).cache().repeat())
    timer = StepTimer()
    model.fit(data, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0)
    step_times = timer.times[warmup:]
    median = statistics.median(step_times)
    return {"preset": preset, "batch": batch, "image_size": model.image_size,
            "sequence_length": model.sequence_length, "strategy": strategy_spec,
            "median_step_s": median, "samples_per_s": batch / median,
            "params": malign.models.count_params(model), "steps": len(step_times),
            "first_step_s": timer.times[0], "conv1x1": conv1x1}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--strategy", default="default")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--sequence-length", type=int)
    parser.add_argument("--vocabulary-size", type=int)
    parser.add_argument("--mixed-precision", default="float32")
    parser.add_argument("--fused-min-size", type=int, default=FUSED_MIN_SIZE,
                        help="variables this large get the fused optimizer update on CPU "
                             "(0 = Keras' update throughout)")
    parser.add_argument("--optimizer-in-step", action="store_true",
                        help="compile only, the optimizer's variables made in the first traced "
                             "step (as before compile_for_training), to compare the first step")
    parser.add_argument("--conv1x1", choices=("matmul", "conv"), default="matmul",
                        help="the image tower's 1x1 convolutions as matmuls (the library's "
                             "way) or on TensorFlow's Conv2D kernels, to compare")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in dict(image_size=args.image_size,
                                       sequence_length=args.sequence_length,
                                       vocabulary_size=args.vocabulary_size).items() if v}
    r = measure(args.preset, args.batch, args.steps, args.warmup, args.strategy, overrides,
                args.mixed_precision, args.fused_min_size, args.optimizer_in_step, args.conv1x1)
    line = (f"| {r['preset']} | {r['params']:,} | {r['image_size']} | {r['sequence_length']} | "
            f"{r['batch']} | {r['strategy']} | {args.mixed_precision} | {r['median_step_s'] * 1000:.1f} | "
            f"{r['samples_per_s']:.1f} | {args.fused_min_size or 'off'} | "
            f"{'in the step' if args.optimizer_in_step else 'before'} | {r['conv1x1']} | "
            f"{r['first_step_s']:.1f} |")
    print(line)
    if args.write:
        command = "python benchmarks/bench_train_step.py " + " ".join(argv or sys.argv[1:])
        body = (f"Command: `{command}`  \nMachine: {describe_machine()}  \n"
                f"Median over {r['steps']} timed steps after {args.warmup} warm-up steps; "
                "random in-memory batches (input pipeline excluded).\n\n"
                "| preset | weights | image px | tokens | global batch | strategy | precision | "
                "median step ms | samples/s | fused update from | optimizer variables made | "
                "1x1 convolutions | first step s (tracing included) |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n" + line)
        append_result(f"Train-step throughput: {r['preset']}", body)


if __name__ == "__main__":
    main()
