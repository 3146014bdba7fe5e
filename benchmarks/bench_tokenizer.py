"""In-graph tokenization throughput (sentences/s) next to the Python ``sentencepiece`` package.

Same sentences, same model (the checked-in test vocabulary, or ``--model``): the Multi30K-mini
train captions in en/de/fr/cs (16000 sentences) plus the multi-script lines of
tokenizers/extra_lines.tsv. Measured, each as the median of ``--repeats`` passes over all
sentences:

- ``SentencePieceTokenizer`` layer, packed to ``[CLS] ... [SEP]`` + padding, called in a
  ``tf.function`` on batches of ``--batch`` sentences;
- the same layer mapped over a batched ``tf.data`` pipeline (how training uses it);
- the raw tensorflow-text op (ragged ids, no packing) on the same batches;
- Python ``sentencepiece``: ``encode(list)`` per batch, and ``encode(str)`` one by one.

Usage:
    python benchmarks/bench_tokenizer.py --write
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = Path(__file__).resolve().parents[1]
MINI = REPO.parent / "shared" / "data" / "multi30k-mini"

import sentencepiece as spm  # noqa: E402
import tensorflow as tf  # noqa: E402
from machine import append_result, describe_machine  # noqa: E402

from malign.text import SentencePieceTokenizer, test_vocab_path  # noqa: E402


def load_sentences() -> tuple[list[str], str]:
    extra = (REPO / "tokenizers" / "extra_lines.tsv").read_text(encoding="utf-8").splitlines()
    extra = [line.split("\t", 1)[1] for line in extra]
    if MINI.is_dir():
        lines = []
        for lang in ("en", "de", "fr", "cs"):
            with gzip.open(MINI / "data" / "task1" / "raw" / f"train.{lang}.gz", "rt",
                           encoding="utf-8") as handle:
                lines += handle.read().splitlines()
        return lines + extra, "multi30k-mini train captions (en/de/fr/cs) + extra_lines.tsv"
    from malign.data.synthetic import synthetic_captions

    lines = [text for _, text in synthetic_captions(4000)]
    return lines + extra, "synthetic captions (en/de/fr/cs) + extra_lines.tsv"


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="SentencePiece model (default: test vocab)")
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)

    model = args.model or str(test_vocab_path())
    sentences, source = load_sentences()
    n = len(sentences)
    batches = [sentences[i : i + args.batch] for i in range(0, n, args.batch)]
    tensors = [tf.constant(b) for b in batches]
    layer = SentencePieceTokenizer(model, sequence_length=args.sequence_length)
    processor = spm.SentencePieceProcessor(model_file=model)

    # The same ids, checked once before timing.
    assert layer.tokenize(batches[0]).to_list() == processor.encode(batches[0])

    packed = tf.function(layer, input_signature=[tf.TensorSpec([None], tf.string)])
    raw = tf.function(layer._tf_tokenizer.tokenize,
                      input_signature=[tf.TensorSpec([None], tf.string)])
    dataset = tf.data.Dataset.from_tensor_slices(sentences).batch(args.batch).map(
        layer, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    packed(tensors[0])
    raw(tensors[0])

    def run_packed():
        for t in tensors:
            packed(t)["token_ids"].numpy()

    def run_raw():
        for t in tensors:
            raw(t).flat_values.numpy()

    def run_dataset():
        for _ in dataset:
            pass

    def run_python_batch():
        for b in batches:
            processor.encode(b)

    def run_python_loop():
        for s in sentences:
            processor.encode(s)

    results = [
        ("malign SentencePieceTokenizer in tf.function (packed, padded)", timed(run_packed,
                                                                               args.repeats)),
        ("malign SentencePieceTokenizer in tf.data map (packed, padded)", timed(run_dataset,
                                                                               args.repeats)),
        ("tensorflow-text op alone (ragged ids)", timed(run_raw, args.repeats)),
        ("Python sentencepiece, encode(list) per batch", timed(run_python_batch, args.repeats)),
        ("Python sentencepiece, encode(str) one by one", timed(run_python_loop, args.repeats)),
    ]
    rows = []
    for name, seconds in results:
        rate = n / seconds
        print(f"{name}: {rate:,.0f} sentences/s")
        rows.append(f"| {name} | {rate:,.0f} |")
    if args.write:
        command = "python benchmarks/bench_tokenizer.py " + " ".join(
            argv if argv is not None else sys.argv[1:])
        body = (
            f"Command: `{command}`  \nMachine: {describe_machine()}; 1-min load average at the "
            f"end {os.getloadavg()[0]:.1f} (the machine is shared)  \n"
            f"Sentences: {n:,} ({source}); model {Path(model).name}; batches of {args.batch}; "
            f"sequence length {args.sequence_length}; median of {args.repeats} passes. The ids "
            "are identical (checked).\n\n| tokenizer | sentences/s |\n|---|---|\n"
            + "\n".join(rows)
        )
        append_result("Tokenization: in-graph vs Python sentencepiece", body)


if __name__ == "__main__":
    main()
