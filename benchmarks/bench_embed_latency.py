"""Embedding latency of exported SavedModels, side by side (e.g. a teacher and its student).

Loads each SavedModel written by ``malign export`` with ``tf.saved_model.load`` and times its
serving signatures on the same inputs: ``embed_text`` on a batch of captions (in-graph
tokenization included) and ``embed_image`` on a batch of JPEG bytes (in-graph decoding and
cropping included). The models are timed in alternation (A B A B ...) after one warm-up call
each, so that neither gets a quieter slice of a shared machine; the table gives the median,
min and max per batch in milliseconds and the ratio of each model's median to the first's.

Usage:
    python benchmarks/bench_embed_latency.py \\
        --saved-model teacher=runs/m30k/export --saved-model student=runs/student/export
    python benchmarks/bench_embed_latency.py --saved-model a=DIR --text-batch 1 --image-batch 1

Raises SystemExit with a message naming the directory when a path is not a malign export.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (registers the SentencePiece ops the exports use)
from machine import append_result, describe_machine  # noqa: E402

CAPTIONS = ["a black dog runs across the grass", "ein schwarzer Hund läuft über die Wiese",
            "un chien noir court sur l'herbe", "černý pes běží po trávě"]
SIGNATURES = ("embed_text", "embed_image")


def _load(name: str, path: str):
    if not (Path(path) / "saved_model.pb").is_file():
        raise SystemExit(f"--saved-model {name}={path}: no saved_model.pb in {path} "
                         "(pass the directory written by malign export)")
    loaded = tf.saved_model.load(path)
    missing = [s for s in SIGNATURES if s not in loaded.signatures]
    if missing:
        raise SystemExit(f"--saved-model {name}={path}: no {', '.join(missing)} signature "
                         "(not a malign export)")
    return loaded


def _jpegs(count: int, side: int) -> tf.Tensor:
    rng = np.random.default_rng(0)
    return tf.constant([
        tf.io.encode_jpeg(rng.integers(0, 256, (side, side + side // 3, 3), np.uint8)).numpy()
        for _ in range(count)
    ])


def measure(models: dict[str, str], text_batch: int, image_batch: int, repeats: int,
            image_side: int) -> dict[str, dict[str, list[float]]]:
    """``{model: {signature: [ms per call]}}``, the models called in alternation."""
    loaded = {name: _load(name, path) for name, path in models.items()}
    inputs = {
        "embed_text": {"text": tf.constant((CAPTIONS * text_batch)[:text_batch])},
        "embed_image": {"image_bytes": _jpegs(image_batch, image_side)},
    }
    times = {name: {s: [] for s in SIGNATURES} for name in loaded}
    for signature in SIGNATURES:
        for model in loaded.values():  # warm-up
            model.signatures[signature](**inputs[signature])
        for _ in range(repeats):
            for name, model in loaded.items():
                start = time.perf_counter()
                model.signatures[signature](**inputs[signature])
                times[name][signature].append(1000 * (time.perf_counter() - start))
    return times


def table(times: dict[str, dict[str, list[float]]], text_batch: int, image_batch: int) -> str:
    first = next(iter(times))
    rows = [f"| model | embed_text x{text_batch} ms (median, min-max) | ratio | "
            f"embed_image x{image_batch} JPEG ms (median, min-max) | ratio |",
            "|---|---|---|---|---|"]
    for name, by_signature in times.items():
        cells = [name]
        for signature in SIGNATURES:
            values = by_signature[signature]
            median = statistics.median(values)
            base = statistics.median(times[first][signature])
            cells += [f"{median:.1f} ({min(values):.1f}-{max(values):.1f})",
                      f"{median / base:.2f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saved-model", action="append", required=True, metavar="NAME=DIR",
                        help="an exported model to time (repeat; the first is the ratios' base)")
    parser.add_argument("--text-batch", type=int, default=32)
    parser.add_argument("--image-batch", type=int, default=8)
    parser.add_argument("--image-side", type=int, default=320,
                        help="side of the random JPEGs (pixels; the wider side is 4/3 of it)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    models = {}
    for item in args.saved_model:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--saved-model takes NAME=DIR, got {item!r}")
        models[name] = path
    times = measure(models, args.text_batch, args.image_batch, args.repeats, args.image_side)
    body = (
        f"Command: `python benchmarks/bench_embed_latency.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`  \n"
        f"Machine: {describe_machine()}  \n"
        f"{args.repeats} alternating calls per model and signature after a warm-up; "
        "tokenization and JPEG decoding in the graph included.\n\n"
        + table(times, args.text_batch, args.image_batch)
    )
    print(body)
    if args.write:
        append_result("Embedding latency: " + " vs ".join(models), body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
