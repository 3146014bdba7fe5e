"""Input pipeline throughput (examples/s) next to the train-step throughput of the same preset.

Builds TFRecord shards from the multi30k-mini train split (4000 real 224-px JPEGs, four
captions each; or uses ``--records``), runs ``malign.data.make_dataset(training=True)`` at the
preset's image size and sequence length (decode, ALIGN random crop + flip, one random caption,
in-graph SentencePiece tokenization, static batches) and times batches after warm-up. Then it
times training steps of the same preset on in-memory batches (bench_train_step.measure), so the
two numbers sit side by side: the input pipeline must deliver more examples per second than the
model consumes.

Usage:
    python benchmarks/bench_input_pipeline.py --preset student-b0-small --write
    python benchmarks/bench_input_pipeline.py --preset tiny --image-size 224 --write
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = Path(__file__).resolve().parents[1]
MINI = REPO.parent / "shared" / "data" / "multi30k-mini"

import tensorflow as tf  # noqa: E402
from machine import append_result, describe_machine  # noqa: E402

import malign  # noqa: E402
from malign.data import make_dataset, write_multi30k  # noqa: E402
from malign.presets import get_preset  # noqa: E402
from malign.text import SentencePieceTokenizer, test_vocab_path  # noqa: E402


def build_records(directory: str) -> str:
    if not MINI.is_dir():
        raise SystemExit(f"{MINI} not found: pass --records PATTERN with your own shards")
    prefix = os.path.join(directory, "m30k-train")
    write_multi30k(MINI, MINI / "images", "train", prefix, shards=8, verbose=False)
    return prefix


def measure_input(pattern: str, image_size: int, sequence_length: int, batch: int,
                  batches: int, repeats: int, warmup: int) -> dict:
    tokenizer = SentencePieceTokenizer(test_vocab_path(), sequence_length=sequence_length)
    ds = make_dataset(pattern, tokenizer, image_size=image_size, global_batch_size=batch,
                      training=True)
    iterator = iter(ds)
    for _ in range(warmup):
        next(iterator)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            element = next(iterator)
        element["image"].numpy()  # make sure the last batch is materialised
        rates.append(batches * batch / (time.perf_counter() - start))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "spec": {k: v.shape.as_list() for k, v in ds.element_spec.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="student-b0-small")
    parser.add_argument("--image-size", type=int, default=None,
                        help="override the preset's image size (e.g. 224 for tiny)")
    parser.add_argument("--records", default=None, help="shard pattern (default: build them)")
    parser.add_argument("--batch", type=int, default=32, help="input pipeline batch size")
    parser.add_argument("--batches", type=int, default=20, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5, help="batches before timing")
    parser.add_argument("--train-batch", type=int, default=None,
                        help="train-step batch (default: --batch)")
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--train-warmup", type=int, default=2)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)

    overrides = {"image_size": args.image_size} if args.image_size else {}
    config = get_preset(args.preset, **overrides)
    image_size, sequence_length = config.image.image_size, config.text.sequence_length
    with tempfile.TemporaryDirectory(prefix="malign-bench-") as tmp:
        pattern = args.records or build_records(tmp)
        result = measure_input(pattern, image_size, sequence_length, args.batch, args.batches,
                               args.repeats, args.warmup)
    print(f"input pipeline: {result['median']:.1f} examples/s (median of {args.repeats} runs "
          f"of {args.batches} batches of {args.batch}; min {result['min']:.1f}, "
          f"max {result['max']:.1f}); element spec {result['spec']}")
    train = None
    if not args.skip_train:
        from bench_train_step import measure

        train_batch = args.train_batch or args.batch
        train = measure(args.preset, train_batch, args.train_steps, args.train_warmup,
                        "default", overrides, "float32")
        print(f"train step ({args.preset}, batch {train_batch}): "
              f"{train['samples_per_s']:.1f} samples/s, median step "
              f"{train['median_step_s'] * 1000:.0f} ms")
    if args.write:
        load = os.getloadavg()[0]
        command = "python benchmarks/bench_input_pipeline.py " + " ".join(
            argv if argv is not None else sys.argv[1:])
        rows = [f"| input pipeline (make_dataset, training=True) | {args.batch} | "
                f"{result['median']:.1f} |"]
        if train:
            rows.append(f"| train step, Keras fit on in-memory batches | {train['batch']} | "
                        f"{train['samples_per_s']:.1f} |")
        body = (
            f"Command: `{command}`  \nMachine: {describe_machine()}; 1-min load average at the "
            f"end {load:.1f} (the machine is shared)  \n"
            f"Data: multi30k-mini train as TFRecords (4000 JPEGs of 224 px, 8 shards); preset "
            f"`{args.preset}` at {image_size} px, {sequence_length} tokens, test vocabulary. "
            f"Input: median of {args.repeats} runs of {args.batches} batches after "
            f"{args.warmup} warm-up batches (decode, ALIGN crop + flip, caption choice, in-graph "
            "tokenization, batching, prefetch). Train step: median over "
            f"{args.train_steps} steps (bench_train_step.measure).\n\n"
            "| what | batch | examples/s |\n|---|---|---|\n" + "\n".join(rows)
        )
        if train:
            ratio = result["median"] / train["samples_per_s"]
            body += (f"\n\nThe input pipeline delivers {ratio:.1f}x what the train step "
                     "consumes.")
        append_result(f"Input pipeline vs train step: {args.preset} at {image_size} px", body)
    _ = malign  # imported for its side effect of configuring Keras' backend
    _ = tf


if __name__ == "__main__":
    main()
