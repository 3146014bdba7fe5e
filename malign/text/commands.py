"""``malign tokenizer``: train a shared vocabulary, trim it to a corpus, or look at tokenization.

Example:
    $ malign tokenizer train --input data/train.en.gz data/train.de.gz zh=zh.txt \
        --vocab-size 32000 --out vocab/malign32k
    $ malign tokenizer trim --model vocab/malign32k.model --corpus data/train.de.gz \
        --out vocab/de --keras-model teacher.keras --keras-out student-de.keras
    $ malign tokenizer encode --model vocab/malign32k.model "Zwei rote Kreise"
"""

from __future__ import annotations

import argparse

__all__ = ["add_subparser"]


def _train(args: argparse.Namespace) -> int:
    from malign.text.vocabulary import train_vocabulary

    options = {}
    if args.max_sentence_length:
        options["max_sentence_length"] = args.max_sentence_length
    train_vocabulary(
        args.input,
        args.vocab_size,
        args.out,
        alpha=args.alpha,
        sample_size=args.sample_size,
        character_coverage=args.character_coverage,
        seed=args.seed,
        num_threads=args.threads,
        verbose=not args.quiet,
        **options,
    )
    return 0


def _trim(args: argparse.Namespace) -> int:
    from pathlib import Path

    from malign.text.trim import trim_vocabulary

    if (args.keras_model is None) != (args.keras_out is None):
        raise SystemExit("malign tokenizer trim: --keras-model and --keras-out go together")
    result = trim_vocabulary(
        args.model, [Path(p) for p in args.corpus], args.out, min_count=args.min_count,
        keep=args.keep or (),
    )
    stats = result.stats
    print(f"pieces: {result.pieces_before} -> {result.pieces_after} "
          f"({100 * result.pieces_after / result.pieces_before:.1f}%)")
    print(f"corpus: {stats['corpus_sentences']} sentences, {stats['corpus_tokens']} tokens, "
          f"{stats['corpus_distinct_pieces']} distinct pieces; token coverage "
          f"{100 * stats['corpus_token_coverage']:.3f}%, sentences segmented differently: "
          f"{stats['corpus_sentences_changed']}")
    print(f"wrote {result.model_path}, {result.vocab_path}, {result.ids_path}, {result.stats_path}")
    if args.keras_model:
        import keras

        import malign  # noqa: F401  registers the model classes
        from malign import atomic_files
        from malign.models.align_model import count_params
        from malign.text.trim import trim_token_embedding

        model = keras.saving.load_model(args.keras_model, compile=False)
        small = trim_token_embedding(model, result)
        with atomic_files.replacing(args.keras_out) as tmp:
            small.save(tmp)
        print(f"model: {count_params(model):,} -> {count_params(small):,} weights; wrote "
              f"{args.keras_out}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    import sentencepiece as spm

    from malign.text.tokenizers import SentencePieceTokenizer

    tokenizer = SentencePieceTokenizer(args.model, sequence_length=args.sequence_length)
    processor = spm.SentencePieceProcessor(model_proto=tokenizer.proto)
    out = tokenizer(list(args.text))
    for text, ids, mask in zip(args.text, out["token_ids"].numpy(), out["padding_mask"].numpy()):
        used = ids[mask.astype(bool)].tolist()
        print(text)
        print("  pieces:", " ".join(processor.id_to_piece(i) for i in used))
        print("  ids:   ", " ".join(str(i) for i in used))
    return 0


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``malign tokenizer {train,trim,encode}``.

    Args:
        subparsers: the ``malign`` command's sub-parsers.
    """
    parser = subparsers.add_parser(
        "tokenizer",
        help="train the shared SentencePiece vocabulary, inspect tokenization",
        description="Train the shared SentencePiece vocabulary or inspect tokenization.",
    )
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")
    commands.required = True

    train = commands.add_parser(
        "train",
        help="train a SentencePiece unigram vocabulary with language-balanced sampling",
        description=(
            "Train a SentencePiece unigram vocabulary (byte fallback; [PAD]=0 [UNK]=1 [CLS]=2 "
            "[SEP]=3 [MASK]=4) over multilingual text, sampling each language with "
            "probability proportional to its share ** alpha. Writes PREFIX.model, "
            "PREFIX.vocab and PREFIX.stats.json."
        ),
    )
    train.add_argument(
        "--input", nargs="+", required=True, metavar="FILE",
        help="text files, one sentence a line (.gz ok). The language comes from the file "
        "name (train.de.gz, wiki_fr.txt), from LANG=FILE, or from lang<TAB>text lines in "
        ".tsv files; a language is an ISO 639-1 code such as en or de (or a three-letter "
        "ISO 639-3 code), optionally with a script or region: zh-Hans, pt-BR. Every input is "
        "checked before training starts",
    )
    train.add_argument("--vocab-size", type=int, required=True, help="pieces in the vocabulary")
    train.add_argument("--out", required=True, metavar="PREFIX", help="output path prefix")
    train.add_argument("--alpha", type=float, default=0.3,
                       help="language sampling exponent (default 0.3, as XLM-R)")
    train.add_argument("--sample-size", type=int, default=None,
                       help="sentences to train on after balancing (default: corpus size, "
                       "at most 10M)")
    train.add_argument("--character-coverage", type=float, default=0.9995)
    train.add_argument("--max-sentence-length", type=int, default=None,
                       help="longest sentence in bytes SentencePiece keeps (its default 4192)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=None)
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.set_defaults(func=_train)

    trim = commands.add_parser(
        "trim",
        help="keep the pieces a corpus uses: a smaller tokenizer (and model) for its languages",
        description=(
            "Tokenize a corpus in the target languages with a full SentencePiece unigram model "
            "and write a model with only the pieces it uses, plus the special pieces (ids 0-4 "
            "unchanged) and the 256 byte pieces. The corpus's sentences segment into the same "
            "pieces as before (checked); other text of those languages too unless it needs a "
            "piece the corpus never used. Writes PREFIX.model, PREFIX.vocab, PREFIX.ids.npy "
            "(the full model's embedding rows to keep) and PREFIX.trim.json."
        ),
    )
    trim.add_argument("--model", required=True, help="the full SentencePiece .model")
    trim.add_argument("--corpus", nargs="+", required=True, metavar="FILE",
                      help="text files, one sentence a line (.gz ok; .tsv: lang<TAB>text)")
    trim.add_argument("--out", required=True, metavar="PREFIX", help="output path prefix")
    trim.add_argument("--min-count", type=int, default=1,
                      help="drop pieces used fewer times (default 1: keep every used piece; "
                      "above 1 the segmentation of text using a dropped piece changes)")
    trim.add_argument("--keep", nargs="+", metavar="PIECE", help="further pieces to keep")
    trim.add_argument("--keras-model", default=None, metavar="IN.keras",
                      help="also trim this AlignModel's token embedding (with --keras-out)")
    trim.add_argument("--keras-out", default=None, metavar="OUT.keras",
                      help="where to write the trimmed AlignModel")
    trim.set_defaults(func=_trim)

    encode = commands.add_parser(
        "encode", help="show pieces and ids of texts",
        description="Tokenize texts with the in-graph tokenizer and print pieces and ids.",
    )
    encode.add_argument("--model", required=True, help="a SentencePiece .model file")
    encode.add_argument("--sequence-length", type=int, default=64)
    encode.add_argument("text", nargs="+")
    encode.set_defaults(func=_encode)
