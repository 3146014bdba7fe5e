"""Peak memory and step time of a train step against the global batch, per large-batch tool.

Each configuration (global batch x tool) runs ``fit`` in a process of its own, so its peak
is its own: on CPU the peak resident set (``ru_maxrss``) of the process, and the resident
set after the model and optimizer are built (before the first step); where a GPU exists,
``tf.config.experimental.get_memory_info("GPU:0")["peak"]`` as well. The step's memory is
the peak minus that baseline (activations, gradients, optimizer slots, the traced graph).

Tools (``--tools``, comma-separated):

- ``plain``: Keras' own step on the whole batch;
- ``micro``: gradient caching, ``training.micro_batch_size=--micro``;
- ``remat``: recomputation per EfficientNet stage and BERT layer (``training.remat``);
- ``micro+remat``: both;
- ``sigmoid`` / ``sigmoid-chunked``: the sigmoid loss gathered / chunked
  (``training.sigmoid_chunked``), meaningful under a strategy with several replicas.

For each tool the largest global batch within ``--budget-mb`` of step memory is estimated
from a straight line through its measured (batch, step memory) points.

Usage:
    python benchmarks/bench_memory.py --preset student-b0-bert-mini --image-size 64 \
        --batches 8,64 --tools plain,micro,remat --micro 8 --budget-mb 2048 --write
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = ("plain", "micro", "remat", "micro+remat", "sigmoid", "sigmoid-chunked")


def _rss_mb() -> float:
    """Current resident set of this process in MiB (/proc/self/status VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _status_mb(field: str) -> float:
    """A /proc/self/status field (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _settle() -> float:
    """Returns freed heap to the system (glibc ``malloc_trim``), resets the peak resident
    set (``/proc/self/clear_refs``), and returns the resident set in MiB."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def _tf_cpu_memory_mb(key: str) -> float:
    """TensorFlow's own count of CPU bytes in use ("current") or at most in use ("peak")
    in MiB; NaN with the plain allocator (``TF_CPU_ALLOCATOR_USE_BFC=0``), which keeps no
    statistics. ``import malign`` turns the pooling (BFC) allocator on."""
    import tensorflow as tf

    try:
        return tf.config.experimental.get_memory_info("CPU:0")[key] / 2**20
    except ValueError:
        return float("nan")


def run_one(preset: str, batch: int, tool: str, micro: int, steps: int, warmup: int,
            strategy_spec: str, overrides: dict) -> dict:
    """Measures one configuration in this process (called in a subprocess by ``main``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, HERE)
    import keras
    import tensorflow as tf

    import malign
    from malign.config import TrainingConfig
    from malign.training import make_optimizer, random_dataset, resolve_jit_compile

    strategy = malign.distributed.get_strategy(strategy_spec)
    per_replica = malign.distributed.check_global_batch(batch, strategy)
    if tool.startswith("sigmoid"):
        overrides = {**overrides, "loss": "sigmoid"}
    cfg = TrainingConfig(global_batch_size=batch, steps=steps + warmup, warmup_steps=1,
                         strategy=strategy_spec,
                         micro_batch_size=micro if "micro" in tool else None,
                         remat="remat" in tool, sigmoid_chunked=tool == "sigmoid-chunked")
    with strategy.scope():
        model = malign.AlignModel.from_preset(preset, **overrides)
        model.configure_steps(cfg.micro_batch_size, cfg.remat, cfg.sigmoid_chunked)
        model.compile(optimizer=make_optimizer(cfg), jit_compile=resolve_jit_compile(cfg, strategy))
        model.optimizer.build(model.trainable_variables)
    data = strategy.distribute_datasets_from_function(
        lambda ctx: random_dataset(model.model_config, per_replica,
                                   pipeline_id=ctx.input_pipeline_id).take(4).cache().repeat())
    baseline = _rss_mb()
    tf_before = _tf_cpu_memory_mb("current")
    times, settled = [], []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, step, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, step, logs=None):
            times.append(time.perf_counter() - self.start)
            if len(times) == warmup:  # traced and run once: measure the steps alone
                settled.append(_settle())

    model.fit(data, epochs=1, steps_per_epoch=warmup + steps, callbacks=[Timer()], verbose=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    steady_peak = _status_mb("VmHWM")
    tf_step = _tf_cpu_memory_mb("peak") - tf_before
    gpu_peak = None
    if tf.config.list_physical_devices("GPU"):
        gpu_peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return {"preset": preset, "batch": batch, "tool": tool, "strategy": strategy_spec,
            "micro": cfg.micro_batch_size, "baseline_mb": baseline, "peak_mb": peak,
            "step_mb": peak - baseline, "gpu_peak_mb": gpu_peak,
            "steady_step_mb": steady_peak - settled[0], "tf_step_mb": tf_step,
            "median_step_ms": statistics.median(times[warmup:]) * 1000,
            "image_size": model.image_size, "steps": len(times[warmup:]),
            "weights": malign.models.count_params(model)}


def largest_batch(points: list[tuple[int, float]], budget_mb: float) -> str:
    """The largest batch whose step memory stays within ``budget_mb``, from a straight line
    through the measured (batch, step MiB) points; a text for the table."""
    if len(points) < 2:
        return "n/a (one batch measured)"
    xs, ys = zip(*points)
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum(
        (x - mean_x) ** 2 for x in xs)
    intercept = mean_y - slope * mean_x
    if slope <= 0.05:  # under 0.05 MiB per example: flat within the noise of the peak
        return f"> {max(xs) * 64:,} (flat: {slope:.2f} MiB/example)"
    return f"{max(0, int((budget_mb - intercept) / slope)):,} ({slope:.1f} MiB/example)"


def main(argv=None):
    load_start = os.getloadavg()[0]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="student-b0-bert-mini")
    parser.add_argument("--batches", default="8,64", help="global batches, comma-separated")
    parser.add_argument("--tools", default="plain,micro,remat")
    parser.add_argument("--micro", type=int, default=8, help="examples per micro-batch")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--strategy", default="default")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--sequence-length", type=int)
    parser.add_argument("--budget-mb", type=float, default=2048.0,
                        help="step-memory budget for the largest-batch estimate")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in dict(image_size=args.image_size,
                                       sequence_length=args.sequence_length).items() if v}
    if args.worker:
        spec = json.loads(args.worker)
        print("RESULT " + json.dumps(run_one(**spec)), flush=True)
        return
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown:
        parser.error(f"--tools: unknown {', '.join(unknown)}; choose from {', '.join(TOOLS)}")
    batches = [int(b) for b in args.batches.split(",")]
    results = []
    for tool in tools:
        for batch in batches:
            spec = dict(preset=args.preset, batch=batch, tool=tool, micro=args.micro,
                        steps=args.steps, warmup=args.warmup, strategy_spec=args.strategy,
                        overrides=overrides)
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                                   json.dumps(spec)], capture_output=True, text=True,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{tool} at batch {batch} failed:\n{proc.stderr[-3000:]}")
            results.append(json.loads(lines[-1][len("RESULT "):]))
            r = results[-1]
            print(f"{tool:16s} batch {batch:5d}: peak {r['peak_mb']:8.0f} MiB, step memory "
                  f"{r['step_mb']:7.0f} MiB, steady step {r['steady_step_mb']:7.0f} MiB, "
                  f"TF step {r['tf_step_mb']:7.0f} MiB, "
                  f"median step {r['median_step_ms']:8.0f} ms", flush=True)
    rows = ["| tool | global batch | micro-batch | peak RSS MiB | after build MiB | "
            "peak - after build MiB | steady step MiB | TF step MiB | median step ms |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['tool']} | {r['batch']} | {r['micro'] or '-'} | {r['peak_mb']:.0f} | "
                    f"{r['baseline_mb']:.0f} | {r['step_mb']:.0f} | {r['steady_step_mb']:.0f} | "
                    f"{r['tf_step_mb']:.0f} | "
                    f"{r['median_step_ms']:.0f} |")
    # The estimate uses peak - after build: the steady column does not resolve a step's
    # activations on CPU (TensorFlow keeps its allocations between steps; RESULTS.md).
    rows += ["", f"| tool | largest global batch within {args.budget_mb:.0f} MiB above the built "
                 "model (straight-line estimate) |", "|---|---|"]
    for tool in tools:
        points = [(r["batch"], r["step_mb"]) for r in results if r["tool"] == tool]
        rows.append(f"| {tool} | {largest_batch(points, args.budget_mb)} |")
    table = "\n".join(rows)
    print(table)
    if args.write:
        sys.path.insert(0, HERE)
        from machine import append_result, describe_machine

        first = results[0]
        command = "python benchmarks/bench_memory.py " + " ".join(argv or sys.argv[1:])
        body = (f"Command: `{command}`  \nMachine: {describe_machine()}  \n"
                f"1-min load average at the start and end: {load_start:.1f} / "
                f"{os.getloadavg()[0]:.1f}  \n"
                f"Preset {first['preset']} ({first['weights']:,} weights) at "
                f"{first['image_size']} px, strategy {args.strategy}; each row one process; "
                f"median over {first['steps']} timed steps after {args.warmup} warm-up; "
                "random in-memory batches. Peak = `ru_maxrss` of the process (model build, "
                "tracing and steps); after build = resident set before `fit`; steady step = "
                "the peak resident set during the timed steps (reset after the warm-up step, "
                "once freed heap is returned with `malloc_trim`) minus the resident set then: "
                "what a step itself needs, without the traced graph; TF step = TensorFlow's own "
                "peak of CPU bytes in use during `fit` minus its count before (pooling "
                "allocator only): the tensors of a step, without allocator or graph "
                "overheads.\n\n"
                + table)
        append_result(f"Peak memory and step time of the large-batch tools: "
                      f"{first['preset']}", body)


if __name__ == "__main__":
    main()
