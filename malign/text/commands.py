"""``malign tokenizer``: train a shared vocabulary, or look at how text is tokenized.

Example:
    $ malign tokenizer train --input data/train.en.gz data/train.de.gz zh=zh.txt \
        --vocab-size 32000 --out vocab/malign32k
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
    """Adds ``malign tokenizer {train,encode}``.

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

    encode = commands.add_parser(
        "encode", help="show pieces and ids of texts",
        description="Tokenize texts with the in-graph tokenizer and print pieces and ids.",
    )
    encode.add_argument("--model", required=True, help="a SentencePiece .model file")
    encode.add_argument("--sequence-length", type=int, default=64)
    encode.add_argument("text", nargs="+")
    encode.set_defaults(func=_encode)
