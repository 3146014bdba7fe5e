"""SavedModel export: time to export, size, load time and serving latency of the signatures.

Exports a preset (random weights) with :func:`malign.export.export_saved_model`, then times
the export's own parity check (reload + compare), a fresh ``tf.saved_model.load`` and the
median latency of ``embed_text`` (a batch of captions) and ``embed_image`` (a batch of JPEG
files, decoded and cropped in the graph).

Usage:
    python benchmarks/bench_export.py --preset tiny
    python benchmarks/bench_export.py --preset student-b0-small --image-batch 4 --repeats 3
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

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from machine import append_result, describe_machine  # noqa: E402

import malign  # noqa: E402
from malign import export  # noqa: E402

CAPTIONS = ["a black dog runs across the grass", "ein schwarzer Hund läuft über die Wiese",
            "un chien noir court sur l'herbe", "černý pes běží po trávě"]


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(preset: str, text_batch: int, image_batch: int, repeats: int) -> dict:
    model = malign.AlignModel.from_preset(preset)
    tokenizer = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(),
                                                   model.sequence_length)
    towers = export.TOWERS
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = export.export_saved_model(model, tokenizer, Path(tmp) / "m", verify=False)
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        check = export._verify(path, model, tokenizer, towers)
        verify_s = time.perf_counter() - start
        size_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
        start = time.perf_counter()
        loaded = tf.saved_model.load(str(path))
        load_s = time.perf_counter() - start
        texts = tf.constant((CAPTIONS * text_batch)[:text_batch])
        rng = np.random.default_rng(0)
        side = int(model.image_size * 1.5)
        jpegs = tf.constant([
            tf.io.encode_jpeg(rng.integers(0, 256, (side, side + side // 3, 3), np.uint8)).numpy()
            for _ in range(image_batch)
        ])
        text_ms = _median_ms(lambda: loaded.signatures["embed_text"](text=texts), repeats)
        image_ms = _median_ms(lambda: loaded.signatures["embed_image"](image_bytes=jpegs),
                              repeats)
    return {
        "preset": preset, "export_s": export_s, "verify_s": verify_s, "size_mb": size_mb,
        "load_s": load_s, "text_batch": text_batch, "text_ms": text_ms,
        "image_batch": image_batch, "image_ms": image_ms,
        "max_diff": max(check["text_max_abs_diff"], check["image_max_abs_diff"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--text-batch", type=int, default=32)
    parser.add_argument("--image-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    r = measure(args.preset, args.text_batch, args.image_batch, args.repeats)
    table = (
        "| preset | export s (trace + save) | parity check s | SavedModel MiB | load s | "
        f"embed_text x{r['text_batch']} ms | embed_image x{r['image_batch']} JPEG ms | "
        "max abs diff vs Keras |\n|---|---|---|---|---|---|---|---|\n"
        f"| {r['preset']} | {r['export_s']:.1f} | {r['verify_s']:.1f} | {r['size_mb']:.1f} | "
        f"{r['load_s']:.1f} | {r['text_ms']:.1f} | {r['image_ms']:.1f} | {r['max_diff']:.1e} |"
    )
    body = (
        f"Command: `python benchmarks/bench_export.py {' '.join(argv or sys.argv[1:])}`  \n"
        f"Machine: {describe_machine()}  \n"
        f"Random weights; latencies are medians over {args.repeats} calls of the loaded "
        "SavedModel's signatures (in-graph tokenization / decoding included).\n\n" + table
    )
    print(body)
    if args.write:
        append_result(f"SavedModel export: {r['preset']}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
