"""``malign eval``: multilingual retrieval and zero-shot classification from the command line.

Retrieval (Multi30K protocol; task1 and task2 record sets alike)::

    malign eval --model runs/m30k/model.keras --data records/m30k-test \\
        --languages en,de,fr,cs --out runs/m30k/eval-test

writes ``metrics.json``, ``metrics.md`` (table) and ``recall.png`` (R@1/5/10 per
language and direction) into ``--out``.

Zero-shot classification::

    malign eval zero-shot --model runs/x/model.keras --data records/labelled \\
        --classes classes.json [--templates templates.json] --out runs/x/zero-shot

writes ``metrics.json``, ``metrics.md`` (accuracy per language and per class),
``accuracy.png`` and, per language, ``confusion-<lang>.csv`` / ``.png`` (rows: true
class, columns: predicted class). Every table and chart shows the chance level.

The tokenizer is ``--tokenizer PATH`` (a SentencePiece ``.model`` or a WordPiece
``vocab.txt``); without it, ``tokenizer.model``, ``sentencepiece.model`` or
``vocab.txt`` next to the model file (or one directory up) is used.
``--model preset:NAME`` evaluates an untrained preset (pipeline checks).

Example:
    $ malign eval --model runs/demo/model.keras --data records/m30k-val --out runs/demo/eval
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_subparser", "find_tokenizer", "load_model", "load_tokenizer", "run_retrieval", "run_zero_shot"]

TOKENIZER_NAMES = ("tokenizer.model", "sentencepiece.model", "vocab.txt")


def _languages(value: str | None) -> list[str] | None:
    if value is None:
        return None
    langs = [v.strip() for v in value.split(",") if v.strip()]
    if not langs:
        raise argparse.ArgumentTypeError("expected comma-separated language codes, e.g. en,de")
    return langs


def _ks(value: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"K values must be positive, got {value!r}")
    return ks


def _add_common(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--model", required=required, help="a .keras file saved by malign, or preset:NAME")
    parser.add_argument(
        "--tokenizer",
        help="SentencePiece .model (or WordPiece vocab.txt); default: tokenizer.model next to the model",
    )
    parser.add_argument(
        "--force-tokenizer", action="store_true",
        help="use --tokenizer even when it is not the file the model was trained or converted "
        "with (its SHA-256 differs from the model's tokenizer-fingerprint.json)",
    )
    parser.add_argument("--out", required=required, help="output directory")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--text-batch-size", type=int, default=256, help="captions per batch (default 256)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_subparser(subparsers: Any) -> None:
    """Adds ``eval`` (retrieval) and ``eval zero-shot`` to the ``malign`` parser.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser(prog="malign")
        >>> add_subparser(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["eval", "--model", "m.keras", "--data", "r", "--out", "o"])
        >>> args.func.__name__, args.languages
        ('run_retrieval', None)
    """
    parser = subparsers.add_parser(
        "eval",
        help="retrieval (Multi30K protocol) or zero-shot evaluation",
        description=(
            "Image-text retrieval: embeds every image and caption of a record set once and "
            "reports R@1/5/10 in both directions and mR per language, pooled and averaged. "
            "Use 'malign eval zero-shot --help' for classification."
        ),
    )
    # The retrieval options are not 'required' for argparse, so that 'eval zero-shot'
    # parses; run_retrieval checks them.
    _add_common(parser, required=False)
    parser.add_argument("--data", help="record prefix or glob of TFRecord shards (e.g. records/m30k-test)")
    parser.add_argument(
        "--languages", type=_languages, default=None,
        help="comma-separated languages, e.g. en,de,fr,cs (default: all in the record set)",
    )
    parser.add_argument("--ks", type=_ks, default=(1, 5, 10), help="recall cut-offs (default 1,5,10)")
    parser.add_argument(
        "--memory-budget-mb", type=float, default=512.0,
        help="working memory of the exact search in MiB (default 512)",
    )
    parser.add_argument(
        "--backend", choices=("numpy", "tensorflow"), default="numpy",
        help="search backend: numpy (CPU BLAS) or tensorflow (GPU/TPU if present)",
    )
    parser.add_argument("--name", help="title of the table and chart (default: the model path)")
    # precheck: run by the console script before TensorFlow loads (malign_launcher).
    parser.set_defaults(func=run_retrieval, precheck=check_retrieval_args)

    sub = parser.add_subparsers(dest="eval_command", metavar="{zero-shot}")
    zero = sub.add_parser(
        "zero-shot",
        help="zero-shot image classification with prompt ensembling",
        description=(
            "Zero-shot classification: class names x prompt templates per language, prompt "
            "embeddings averaged per class; top-1/top-5 accuracy per language."
        ),
    )
    _add_common(zero, required=True)
    zero.add_argument(
        "--data", required=True,
        help="a record set whose images each have a caption equal to their class name, "
        "or a directory with one sub-directory of images per class",
    )
    zero.add_argument(
        "--classes", required=True,
        help=".txt (one class per line) or .json (list, or {language: [names]} aligned by class)",
    )
    zero.add_argument(
        "--templates",
        help=".txt (one template with {} per line) or .json {language: [templates]}; "
        "default: built-in English templates",
    )
    zero.add_argument(
        "--languages", type=_languages, default=None,
        help="languages to evaluate (default: all in the classes file; a .txt classes file "
        "is in the one language given here, default en)",
    )
    zero.add_argument("--ks", type=_ks, default=(1, 5), help="top-K cut-offs (default 1,5)")
    zero.set_defaults(func=run_zero_shot)


# -- loading ------------------------------------------------------------------------------
def load_model(spec: str):
    """Loads a ``.keras`` model saved by malign, or builds ``preset:NAME``.

    Args:
        spec: a path to a ``.keras`` file, or ``preset:NAME`` (untrained weights).

    Returns:
        The model.

    Example:
        >>> load_model("preset:tiny").embedding_dim
        32
    """
    import keras

    import malign  # registers the custom objects

    if spec.startswith("preset:"):
        return malign.AlignModel.from_preset(spec.split(":", 1)[1])
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {spec}")
    if path.suffix != ".keras":
        raise ValueError(f"--model must be a .keras file saved by malign (or preset:NAME), got {spec}")
    # No optimizer: evaluation and export need only the weights (and a 250k-row
    # vocabulary's optimizer slots would double the memory).
    model = keras.saving.load_model(path, compile=False)
    for attr in ("embed_image", "embed_text", "image_size", "sequence_length"):
        if not hasattr(model, attr):
            raise ValueError(f"{spec} is not an image-text model: it has no {attr}")
    return model


def find_tokenizer(model_spec: str) -> Path:
    """The tokenizer file next to a model: ``tokenizer.model`` and friends, here or one level up.

    Args:
        model_spec: the ``--model`` value.

    Returns:
        The path found.

    Raises:
        FileNotFoundError: naming every place looked at.

    Example:
        >>> find_tokenizer("runs/demo/model.keras")  # doctest: +SKIP
        PosixPath('runs/demo/tokenizer.model')
    """
    tried = []
    if not model_spec.startswith("preset:"):
        here = Path(model_spec).resolve().parent
        for directory in (here, here.parent):
            for name in TOKENIZER_NAMES:
                candidate = directory / name
                tried.append(str(candidate))
                if candidate.is_file():
                    return candidate
    where = f" (looked for {', '.join(tried)})" if tried else ""
    raise FileNotFoundError(
        f"no tokenizer given and none found next to the model{where}; pass --tokenizer PATH, "
        "the SentencePiece .model the model was trained with"
    )


def load_tokenizer(path: str | os.PathLike, model: Any):
    """Builds the tokenizer layer for a model from a ``.model`` or ``vocab.txt`` file.

    Args:
        path: a SentencePiece model (``.model``) or a WordPiece vocabulary (``.txt``).
        model: the model, for its sequence length and vocabulary size.

    Returns:
        A ``malign.text`` tokenizer with the model's sequence length.

    Raises:
        ValueError: when the tokenizer has more ids than the model's vocabulary.

    Example:
        >>> import malign
        >>> tok = load_tokenizer(malign.text.test_vocab_path(), load_model("preset:tiny"))
        >>> tok.vocabulary_size
        1000
    """
    from malign import text

    return text.tokenizer_from_file(path, model.sequence_length, model.vocabulary_size)


def model_tokenizer_path(model_spec: str, tokenizer: str | None, force: bool = False) -> Path:
    """The tokenizer file to use with a model, checked against the model's fingerprint.

    Args:
        model_spec: the ``--model`` value (a ``.keras`` file or ``preset:NAME``).
        tokenizer: the ``--tokenizer`` value, or None to take the one beside the model
            (``find_tokenizer``).
        force: the ``--force-tokenizer`` flag: a tokenizer whose SHA-256 differs from the
            one the model recorded is used anyway, with a warning on stderr.

    Returns:
        The tokenizer path.

    Raises:
        FileNotFoundError: the model file is missing (named before any tokenizer search);
            no tokenizer given and none found, or the one given is missing.
        ValueError: (``malign.text.fingerprint.TokenizerMismatchError``) the tokenizer is
            not the one the model was made with, naming both files and ``--force-tokenizer``;
            models without a recorded fingerprint are not refused (``load_tokenizer``
            still checks the vocabulary size).

    Example:
        >>> import malign
        >>> model_tokenizer_path("preset:tiny", str(malign.text.test_vocab_path())).suffix
        '.model'
    """
    from malign.text.fingerprint import check_tokenizer_fingerprint

    if not model_spec.startswith("preset:") and not Path(model_spec).is_file():
        raise FileNotFoundError(f"model not found: {model_spec}")
    path = Path(tokenizer) if tokenizer else find_tokenizer(model_spec)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer not found: {path}")
    warning = check_tokenizer_fingerprint(model_spec, path, force=force)
    if warning:
        print(warning, file=sys.stderr)
    return path


def _model_and_tokenizer(args: argparse.Namespace):
    tokenizer_path = model_tokenizer_path(args.model, args.tokenizer,
                                          getattr(args, "force_tokenizer", False))
    model = load_model(args.model)
    return model, load_tokenizer(tokenizer_path, model), tokenizer_path


def _check_positive(args: argparse.Namespace) -> None:
    for name in ("batch_size", "text_batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")


def _meta(args: argparse.Namespace, tokenizer_path: Path, started: float, **extra: Any) -> dict[str, Any]:
    import malign

    return {
        "model": args.model,
        "data": args.data,
        "tokenizer": str(tokenizer_path),
        **extra,
        "malign_version": malign.__version__,
        "seconds": round(time.time() - started, 2),
    }


def _count_weights(model: Any) -> int:
    from malign.models.align_model import count_params

    return count_params(model)


def check_retrieval_args(args: argparse.Namespace) -> None:
    """The arguments ``malign eval`` (retrieval) needs, checked without TensorFlow (the
    console script runs it before loading it); ``eval zero-shot`` is left alone.

    Args:
        args: the parsed arguments.

    Raises:
        ValueError: naming the missing or invalid argument.

    Example:
        >>> check_retrieval_args(argparse.Namespace(model="m.keras", data=None, out="o"))
        Traceback (most recent call last):
        ...
        ValueError: --data required (see malign eval --help)
    """
    if getattr(args, "eval_command", None):
        return
    missing = [f"--{n}" for n in ("model", "data", "out") if not getattr(args, n)]
    if missing:
        raise ValueError(f"{', '.join(missing)} required (see malign eval --help)")
    _check_positive(args)
    if args.memory_budget_mb <= 0:
        raise ValueError("--memory-budget-mb must be positive")


# -- commands -------------------------------------------------------------------------------
def run_retrieval(args: argparse.Namespace) -> int:
    """``malign eval``: retrieval metrics of one record set, written to ``--out``.

    Args:
        args: the parsed arguments.

    Returns:
        The exit code.

    Example:
        >>> from malign.cli import main
        >>> main(["eval", "--model", "m.keras", "--data", "r", "--out", "o"])  # doctest: +SKIP
    """
    check_retrieval_args(args)
    from malign.data import model_eval_resize, read_eval_split
    from malign.evaluation.evaluate import evaluate_retrieval
    from malign.evaluation.report import retrieval_markdown, write_retrieval_report

    started = time.time()
    model, tokenizer, tokenizer_path = _model_and_tokenizer(args)
    eval_resize = model_eval_resize(model)
    split = read_eval_split(
        args.data, model.image_size, args.batch_size, languages=args.languages, verbose=not args.quiet,
        eval_resize=eval_resize,
    )
    report = evaluate_retrieval(
        model,
        tokenizer,
        split,
        languages=args.languages,
        ks=args.ks,
        text_batch_size=args.text_batch_size,
        memory_budget_bytes=int(args.memory_budget_mb * 2**20),
        backend=args.backend,
        verbose=not args.quiet,
    )
    report["meta"] = _meta(
        args, tokenizer_path, started,
        image_size=int(model.image_size), eval_resize=eval_resize,
        sequence_length=int(model.sequence_length), weights=_count_weights(model),
        dropped_records=int(split.dropped), search_backend=args.backend,
    )
    title = args.name or f"{args.model} on {args.data}"
    paths = write_retrieval_report(report, args.out, title)
    print(retrieval_markdown(report, title))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


def run_zero_shot(args: argparse.Namespace) -> int:
    """``malign eval zero-shot``: zero-shot accuracy per language, written to ``--out``.

    Args:
        args: the parsed arguments.

    Returns:
        The exit code.

    Example:
        >>> from malign.cli import main
        >>> main(["eval", "zero-shot", "--model", "m.keras", "--data", "d", "--classes", "c.txt",
        ...       "--out", "o"])  # doctest: +SKIP
    """
    _check_positive(args)
    from malign.evaluation.report import write_zero_shot_report, zero_shot_markdown
    from malign.evaluation.zero_shot import (
        evaluate_zero_shot,
        labels_from_captions,
        load_class_names,
        load_templates,
        read_image_folder,
    )

    started = time.time()
    default_lang = args.languages[0] if args.languages and len(args.languages) == 1 else "en"
    names = load_class_names(args.classes, language=default_lang)
    languages = args.languages or list(names)
    missing = [lang for lang in languages if lang not in names]
    if missing:
        raise ValueError(f"the classes file has no names in {', '.join(missing)} (it has {', '.join(names)})")
    names = {lang: names[lang] for lang in languages}
    templates = load_templates(languages, args.templates)
    model, tokenizer, tokenizer_path = _model_and_tokenizer(args)
    from malign.data import model_eval_resize

    eval_resize = model_eval_resize(model)
    if Path(args.data).is_dir():
        images, labels, _ = read_image_folder(args.data, names, model.image_size, args.batch_size,
                                              eval_resize=eval_resize)
    else:
        from malign.data import read_eval_split

        split = read_eval_split(args.data, model.image_size, args.batch_size, verbose=not args.quiet,
                                eval_resize=eval_resize)
        labels = labels_from_captions(
            split.captions, split.text_to_image, split.num_images, names, split.image_ids
        )
        images = split.images
    report = evaluate_zero_shot(
        model, tokenizer, images, labels, names, templates, args.ks, args.text_batch_size, not args.quiet
    )
    report["meta"] = _meta(
        args, tokenizer_path, started, classes=args.classes, templates=args.templates or "built-in",
        image_size=int(model.image_size), eval_resize=eval_resize,
    )
    report["templates"] = templates
    title = f"zero-shot: {args.model} on {args.data}"
    paths = write_zero_shot_report(report, args.out, title)
    # The per-class table goes to metrics.md; the terminal shows it only for a few classes.
    num_classes = len(next(iter(names.values())))
    print(zero_shot_markdown(report, title, per_class=num_classes <= 30))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0
