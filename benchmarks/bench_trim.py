"""Vocabulary trimming on a large vocabulary: pieces before and after, and the student's weights.

A real 250k multilingual vocabulary is not at hand here, and the text that is (Multi30K-mini's
captions, the synthetic captions, tokenizers/extra_lines.tsv) cannot train one: SentencePiece
refuses a vocabulary larger than the candidate pieces its corpus holds. So the benchmark

1. trains the largest unigram vocabulary this text allows (``malign.text.train_vocabulary``,
   byte fallback, language-balanced; the size comes from SentencePiece's own
   "Vocabulary size too high ... <= N" answer to a 250,000-piece request);
2. grows it to ``--size`` pieces (250,000), as a large multilingual vocabulary looks:
   a whole-word piece for every word of the training text that has no piece yet (scored just
   above its current segmentation, so the full model uses it; big vocabularies hold most
   words of their languages whole), then pieces of 2 to 4 characters of scripts the target
   languages do not write (CJK, Hangul, Devanagari, Arabic, Thai, Hebrew, Greek, Cyrillic:
   the share of a 250k vocabulary that serves the other languages), with scores inside the
   trained pieces' range. The special ids, the 256 byte pieces and the trained pieces keep
   their ids;
3. trims both vocabularies with ``malign.text.trim.trim_vocabulary`` on a corpus of
   en/de/fr/cs text (Multi30K-mini train captions of task1 and task2, the synthetic captions);
   and once more keeping every single-character piece (``keep=``), so that held-out words
   with a character the corpus only used inside longer pieces need no byte fallback;
4. encodes held-out text (Multi30K-mini val captions, en/de/fr/cs) with the full and the
   trimmed model and counts the sentences segmented identically and the tokens per sentence;
5. counts the weights of ``student-b0-trimmed`` at the trimmed size
   (``malign.presets.count_preset_weights``, no model built) against its teacher.

Without ../shared/data/multi30k-mini it uses synthetic captions only (and says so).

Usage:
    python benchmarks/bench_trim.py --write
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = Path(__file__).resolve().parents[1]
MINI = REPO.parent / "shared" / "data" / "multi30k-mini"
LANGUAGES = ("en", "de", "fr", "cs")

# Unicode blocks of scripts that en/de/fr/cs text does not use (first, last code point).
OTHER_SCRIPTS = (
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xAC00, 0xD7A3),  # Hangul syllables
    (0x0905, 0x0939),  # Devanagari letters
    (0x0621, 0x064A),  # Arabic letters
    (0x0E01, 0x0E2E),  # Thai consonants
    (0x05D0, 0x05EA),  # Hebrew letters
    (0x03B1, 0x03C9),  # Greek small letters
    (0x0430, 0x044F),  # Cyrillic small letters
)
_NORMAL, _BYTE = 1, 6


def _read_gz(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def load_text(synthetic_scenes: int) -> tuple[dict[str, list[str]], dict[str, list[str]],
                                              list[str], str]:
    """(vocabulary text by language, trim corpus by language, held-out sentences, source)."""
    from malign.data.synthetic import synthetic_captions

    synthetic: dict[str, list[str]] = {lang: [] for lang in LANGUAGES}
    for lang, text in synthetic_captions(synthetic_scenes, seed=0):
        synthetic[lang].append(text)
    extra: dict[str, list[str]] = {}
    for line in (REPO / "tokenizers" / "extra_lines.tsv").read_text(encoding="utf-8").splitlines():
        lang, _, text = line.partition("\t")
        extra.setdefault(lang, []).append(text)
    if not MINI.is_dir():
        held_out = [text for _, text in synthetic_captions(250, seed=1)]
        vocab = {**{k: v[:] for k, v in synthetic.items()}, **extra}
        return (vocab, synthetic, held_out,
                f"synthetic captions only ({MINI} not found): {synthetic_scenes} scenes x 4 "
                "languages; held out: 250 other scenes")
    raw1, raw2 = MINI / "data" / "task1" / "raw", MINI / "data" / "task2" / "raw"
    train = {lang: _read_gz(raw1 / f"train.{lang}.gz") + synthetic[lang] for lang in LANGUAGES}
    for lang in ("en", "de"):
        for k in range(1, 6):
            train[lang] += _read_gz(raw2 / f"train.{k}.{lang}.gz")
    val = {lang: _read_gz(raw1 / f"val.{lang}.gz") for lang in LANGUAGES}
    vocab = {lang: train[lang] + val[lang] for lang in LANGUAGES}
    for lang in ("en", "de"):
        for k in range(1, 6):
            vocab[lang] += _read_gz(raw2 / f"val.{k}.{lang}.gz")
    vocab.update(extra)
    held_out = [text for lang in LANGUAGES for text in val[lang]]
    source = (f"Multi30K-mini captions (task1 en/de/fr/cs, task2 5 x en/de; train and val) + "
              f"{synthetic_scenes} synthetic scenes x 4 languages + tokenizers/extra_lines.tsv "
              "(50 lines, 9 other languages); trim corpus: the train captions + synthetic "
              "ones; held out: task1 val (en/de/fr/cs)")
    return vocab, train, held_out, source


def train_largest(text: dict[str, list[str]], workdir: Path, request: int) -> tuple[Path, int]:
    """Trains the largest vocabulary (at most ``request``) the text allows."""
    from malign.text import train_vocabulary

    inputs = []
    for lang, lines in text.items():
        path = workdir / f"text.{lang}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        inputs.append(f"{lang}={path}")
    size = request
    while True:
        try:
            model = train_vocabulary(inputs, size, workdir / f"trained{size}", verbose=False)
            return model, size
        except ValueError as error:
            match = re.search(r"<= (\d+)", str(error))
            if "too large" not in str(error) or not match:
                raise
            size = int(match.group(1))
            print(f"SentencePiece: at most {size} pieces from this text", flush=True)


def _words(processor, proto, sentences: Iterable[str]) -> dict[str, float]:
    """``{"▁word": score of its current segmentation}`` for words of 2+ normal pieces."""
    scores = np.array([p.score for p in proto.pieces], dtype=np.float64)
    types = np.array([p.type for p in proto.pieces])
    words: dict[str, float] = {}
    for ids in processor.encode(list(sentences)):
        current: list[int] = []
        for i in [*ids, None]:
            starts = i is None or proto.pieces[i].piece.startswith("\u2581")
            if starts and current:
                if len(current) > 1 and all(types[j] == _NORMAL for j in current):
                    word = "".join(proto.pieces[j].piece for j in current)
                    words.setdefault(word, float(scores[current].sum()))
                current = []
            if i is not None:
                current.append(i)
    return words


def grow_vocabulary(model: Path, text: Iterable[str], size: int, out: Path,
                    seed: int = 0) -> dict[str, int]:
    """Writes ``out``: ``model`` grown to ``size`` pieces (see the module docstring)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.read_bytes())
    processor = spm.SentencePieceProcessor(model_file=str(model))
    existing = {p.piece for p in proto.pieces}
    normal_scores = [p.score for p in proto.pieces if p.type == _NORMAL]
    low, high = min(normal_scores), max(normal_scores)
    trained = len(proto.pieces)

    words = _words(processor, proto, text)
    added_words = 0
    for word, score in sorted(words.items(), key=lambda kv: -kv[1]):
        if len(proto.pieces) >= size:
            break
        if word in existing:
            continue
        piece = proto.pieces.add()
        # Above the sum of its current pieces' scores: the Viterbi path takes the whole word.
        piece.piece, piece.score, piece.type = word, score + 0.5, _NORMAL
        existing.add(word)
        added_words += 1

    rng = np.random.default_rng(seed)
    added_other = 0
    while len(proto.pieces) < size:
        first, last = OTHER_SCRIPTS[int(rng.integers(len(OTHER_SCRIPTS)))]
        chars = "".join(chr(int(c)) for c in rng.integers(first, last + 1, int(rng.integers(2, 5))))
        candidate = ("\u2581" + chars) if rng.random() < 0.5 else chars
        if candidate in existing:
            continue
        piece = proto.pieces.add()
        # Strictly inside the trained range: min and max scores stay those of trained pieces.
        piece.piece, piece.type = candidate, _NORMAL
        piece.score = float(rng.uniform(low + 1e-3, high - 1e-3))
        existing.add(candidate)
        added_other += 1
    proto.trainer_spec.vocab_size = len(proto.pieces)
    out.write_bytes(proto.SerializeToString())
    loaded = spm.SentencePieceProcessor(model_file=str(out))
    if loaded.get_piece_size() != size:  # pragma: no cover
        raise RuntimeError(f"grown vocabulary has {loaded.get_piece_size()} pieces, not {size}")
    return {"trained": trained, "whole_words": added_words, "other_scripts": added_other}


def single_character_pieces(model: Path) -> list[str]:
    """The normal pieces of one character (with or without the word-start mark)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.read_bytes())
    return [p.piece for p in proto.pieces
            if p.type == _NORMAL and len(p.piece.replace("\u2581", "")) <= 1]


def held_out_check(full_model: Path, trim, sentences: list[str]) -> dict[str, float]:
    """Segmentation of held-out text by the full and the trimmed model."""
    import sentencepiece as spm

    full = spm.SentencePieceProcessor(model_file=str(full_model))
    small = spm.SentencePieceProcessor(model_file=str(trim.model_path))
    old_ids = trim.old_ids
    a, b = full.encode(sentences), small.encode(sentences)
    same = sum(1 for x, y in zip(a, b) if list(x) == [int(old_ids[j]) for j in y])
    byte_ids_full = {i for i in range(full.get_piece_size()) if full.is_byte(i)}
    byte_ids_small = {i for i in range(small.get_piece_size()) if small.is_byte(i)}
    return {
        "sentences": len(sentences),
        "identical": same,
        "tokens_full": sum(map(len, a)) / len(a),
        "tokens_trimmed": sum(map(len, b)) / len(b),
        "byte_tokens_full": sum(1 for x in a for i in x if i in byte_ids_full),
        "byte_tokens_trimmed": sum(1 for y in b for i in y if i in byte_ids_small),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=250_000,
                        help="pieces of the large vocabulary (default 250000)")
    parser.add_argument("--synthetic-scenes", type=int, default=4000)
    parser.add_argument("--workdir", default="/tmp/malign-bench-trim")
    parser.add_argument("--student", default="student-b0-trimmed")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)

    from machine import append_result, describe_machine

    from malign.presets import (
        STUDENT_TEACHERS,
        TRIMMED_FORMS,
        count_preset_weights,
        max_vocabulary_within,
    )
    from malign.text.trim import trim_vocabulary

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    vocab_text, corpus, held_out, source = load_text(args.synthetic_scenes)
    all_text = [s for lines in vocab_text.values() for s in lines]
    corpus_sentences = [s for lang in LANGUAGES for s in corpus[lang]]

    start = time.perf_counter()
    trained_model, trained_size = train_largest(vocab_text, workdir, args.size)
    train_seconds = time.perf_counter() - start
    grown_model = workdir / f"grown{args.size}.model"
    growth = grow_vocabulary(trained_model, all_text, args.size, grown_model)

    teacher = STUDENT_TEACHERS[args.student]
    teacher_weights = count_preset_weights(teacher)
    budget = max_vocabulary_within(args.student, teacher_weights // 4)
    full_student = next((k for k, v in TRIMMED_FORMS.items() if v == args.student), None)
    characters = single_character_pieces(grown_model)
    rows, details = [], {}
    for label, model, keep in (
            (f"trained ({trained_size:,})", trained_model, ()),
            (f"grown ({args.size:,})", grown_model, ()),
            (f"grown ({args.size:,}), keep={len(characters)} single characters", grown_model,
             characters)):
        start = time.perf_counter()
        trim = trim_vocabulary(model, corpus_sentences,
                               workdir / f"trimmed-{model.stem}-{len(keep)}", keep=keep)
        seconds = time.perf_counter() - start
        check = held_out_check(model, trim, held_out)
        student_full = count_preset_weights(args.student, vocabulary_size=trim.pieces_before)
        student = count_preset_weights(args.student, vocabulary_size=trim.pieces_after)
        kept = trim.stats["kept_pieces"]
        rows.append(
            f"| {label} | {trim.pieces_before:,} | {trim.pieces_after:,} "
            f"({100 * trim.pieces_after / trim.pieces_before:.1f}%) | {kept['reserved']:,} / "
            f"{kept['used_by_corpus']:,} / {kept['extreme_scores_and_keep']} | "
            f"{trim.stats['corpus_sentences_changed']} | {check['identical']}/{check['sentences']} "
            f"({100 * check['identical'] / check['sentences']:.1f}%) | "
            f"{check['tokens_full']:.2f} -> {check['tokens_trimmed']:.2f} | "
            f"{check['byte_tokens_full']} -> {check['byte_tokens_trimmed']} | "
            f"{student_full:,} ({student_full / teacher_weights:.3f}) -> {student:,} "
            f"({student / teacher_weights:.3f}) | {seconds:.1f} |"
        )
        details[label] = {"trim": trim.stats, "held_out": check, "student_full": student_full,
                          "student_trimmed": student, "seconds": seconds}
    print(json.dumps({"growth": growth, "details": details}, indent=1, default=str))

    body = "\n".join([
        f"Command: `python benchmarks/bench_trim.py{' --write' if args.write else ''}"
        f"{'' if args.size == 250_000 else f' --size {args.size}'}`  ",
        f"Machine: {describe_machine()}  ",
        f"Text: {source}.  ",
        f"Trained vocabulary: SentencePiece gives at most {trained_size:,} unigram pieces "
        f"from this text (a {args.size:,}-piece request is refused), trained in "
        f"{train_seconds:.0f} s. Grown to {args.size:,} pieces: "
        f"+{growth['whole_words']:,} whole-word pieces of the training text, "
        f"+{growth['other_scripts']:,} pieces of other scripts (see the script's docstring).  ",
        f"Trim corpus: {len(corpus_sentences):,} en/de/fr/cs sentences; held out: "
        f"{len(held_out):,} sentences. Student: `{args.student}` (teacher `{teacher}`, "
        f"{teacher_weights:,} weights; a quarter allows {budget:,} pieces"
        + (f"; `{full_student}` is the same student over the full 250k vocabulary"
           if full_student else "") + ").",
        "",
        "| vocabulary | pieces before | after | kept: reserved / used / extreme-score | "
        "corpus sentences changed | held-out sentences segmented identically | "
        "held-out tokens per sentence | held-out byte tokens | student weights before -> after "
        "(share of teacher) | trim s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    print(body)
    if args.write:
        append_result(f"Vocabulary trimming: {args.size:,}-piece vocabulary -> en/de/fr/cs "
                      f"({args.student})", body)


if __name__ == "__main__":
    main()
