"""``malign export``: a trained model as a TF Serving SavedModel (strings and image files in).

Example:
    $ malign export --model runs/demo/model.keras --out export/malign
    $ malign export --model runs/student/model.keras --towers text --out export/student-text \\
        --version 7 --eval runs/student/eval-test/metrics.json

writes ``OUT/<version>/`` (the next free version unless ``--version``) with the signatures
``embed_text``, ``embed_image`` and ``serving_default`` and the model card
``OUT/<version>/assets.extra/model.json``; see :mod:`malign.export`.

The tokenizer is ``--tokenizer PATH``, or, as for ``malign eval``, ``tokenizer.model``,
``sentencepiece.model`` or ``vocab.txt`` next to the model (or one directory up). A
tokenizer file whose SHA-256 is not the one the model recorded
(``tokenizer-fingerprint.json``, written by ``malign train``/``distill``/``convert``) is
refused unless ``--force-tokenizer`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from malign.data.commands import DEFAULT_MAX_IMAGE_PIXELS, _pixels

__all__ = ["add_subparser", "run_export"]


def _read_json(path: str, what: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{what} {path} is not valid JSON: {error}") from error


def check_out(args: argparse.Namespace) -> None:
    """Refuses an ``--out`` that is, or lies under, a file (TensorFlow-free precheck).

    Args:
        args: the parsed arguments (``out``).

    Raises:
        ValueError: naming the path that is a file.

    Example:
        >>> check_out(argparse.Namespace(out="export/new-model"))  # nothing there yet: fine
    """
    out = Path(args.out)
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            where = "is a file" if path == out else f"lies under {path}, which is a file"
            raise ValueError(f"--out {args.out} {where}; it must be a directory (the model's "
                             "base directory, TF Serving's --model_base_path)")


def run_export(args: argparse.Namespace) -> int:
    """``malign export``: writes the SavedModel and prints where and what.

    Args:
        args: the parsed arguments.

    Returns:
        The exit code.

    Example:
        >>> from malign.cli import main
        >>> main(["export", "--model", "runs/demo/model.keras", "--out", "export/demo"])
        ... # doctest: +SKIP
    """
    from malign.evaluation.commands import load_model, load_tokenizer, model_tokenizer_path
    from malign.export import saved_model as export

    check_out(args)
    started = time.time()
    towers = export._check_towers(args.towers)
    if args.version is not None and args.version < 0:
        raise ValueError("--version must be a non-negative integer")
    card: dict[str, Any] = {}
    tokenizer_path = None
    if "text" in towers:  # checked first: a tokenizer that is not the model's is refused
        tokenizer_path = model_tokenizer_path(args.model, args.tokenizer, args.force_tokenizer)
    if not args.model.startswith("preset:"):
        card.update(export.training_record(args.model))
    model = load_model(args.model)
    tokenizer = load_tokenizer(tokenizer_path, model) if tokenizer_path is not None else None
    card["source"] = {
        "model": str(Path(args.model).resolve()) if not args.model.startswith("preset:")
        else args.model,
        "tokenizer": None if tokenizer_path is None else str(Path(tokenizer_path).resolve()),
    }
    for path in args.eval or ():
        card.setdefault("evaluation", {})[str(path)] = _read_json(path, "--eval file")
    if args.model_card:
        extra = _read_json(args.model_card, "--model-card file")
        if not isinstance(extra, dict):
            raise ValueError(f"--model-card {args.model_card} must hold a JSON object")
        card = export._merge(card, extra)
    out = export.export_saved_model(
        model, tokenizer, args.out, version=args.version, towers=towers, model_card=card,
        overwrite=args.overwrite, verify=not args.no_verify,
        max_image_pixels=args.max_image_pixels,
    )
    written = export.read_model_card(out)
    print(f"exported {', '.join(towers)} tower{'s' if len(towers) > 1 else ''} to {out} "
          f"in {time.time() - started:.1f} s")
    for name, spec in written["signatures"].items():
        inputs = ", ".join(f"{k}: {v['dtype']}{v['shape']}" for k, v in spec["inputs"].items())
        outputs = ", ".join(f"{k}: {v['dtype']}{v['shape']}" for k, v in spec["outputs"].items())
        print(f"  {name}({inputs}) -> {outputs}")
    check = written.get("export_check")
    if check:
        diffs = ", ".join(f"{k} {v:.2g}" for k, v in check.items() if k.endswith("max_abs_diff"))
        print(f"  reloaded and compared with the Keras model: {diffs}")
    print(f"  model card: {out / export.MODEL_CARD_PATH}")
    print(f"serve: docker run -p 8501:8501 -v {Path(args.out).resolve()}:/models/malign "
          "-e MODEL_NAME=malign tensorflow/serving", file=sys.stderr)
    return 0


def add_subparser(subparsers: Any) -> None:
    """Adds ``malign export`` to the ``malign`` parser.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.

    Example:
        >>> import argparse
        >>> parser = argparse.ArgumentParser(prog="malign")
        >>> add_subparser(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["export", "--model", "m.keras", "--out", "e"])
        >>> args.func.__name__, args.towers, args.version
        ('run_export', 'image,text', None)
    """
    parser = subparsers.add_parser(
        "export",
        help="write a TF Serving SavedModel (raw captions and image files in, embeddings out)",
        description=(
            "Write OUT/<version>/, a SavedModel with the signatures embed_text (text: string "
            "[N] -> embeddings [N, D]), embed_image (image_bytes: JPEG/PNG/GIF/BMP/WebP files "
            "[N] -> embeddings [N, D]) and serving_default (both -> both embeddings and the "
            "[N_images, N_texts] logits). Tokenization and the evaluation image preprocessing "
            "run inside the graph; the SavedModel needs only tensorflow and tensorflow-text. "
            "The model card is OUT/<version>/assets.extra/model.json."
        ),
    )
    parser.add_argument("--model", required=True,
                        help="a .keras file saved by malign (or preset:NAME, untrained)")
    parser.add_argument("--out", required=True,
                        help="the model's base directory (TF Serving's --model_base_path)")
    parser.add_argument("--version", type=int, default=None,
                        help="version number, the sub-directory (default: next free one)")
    parser.add_argument("--towers", default="image,text",
                        help="image,text (default), image or text")
    parser.add_argument(
        "--tokenizer",
        help="SentencePiece .model (or WordPiece vocab.txt); default: tokenizer.model next to "
        "the model",
    )
    parser.add_argument(
        "--force-tokenizer", action="store_true",
        help="use --tokenizer even when it is not the file the model was trained or converted "
        "with (its SHA-256 differs from the model's tokenizer-fingerprint.json)",
    )
    parser.add_argument("--eval", action="append", metavar="METRICS_JSON",
                        help="a metrics.json of `malign eval` for the model card (repeatable); "
                        "those next to the model that name it are found by themselves")
    parser.add_argument("--model-card", metavar="JSON",
                        help="a JSON object of extra model-card fields (e.g. training data, "
                        "license, intended use), merged over the generated card")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing version directory")
    parser.add_argument("--max-image-pixels", type=_pixels, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="refuse images with more pixels (read from the file's header, "
                        "before decoding) with INVALID_ARGUMENT; default %(default)s = 8192^2")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip reloading the export and comparing it with the Keras model")
    # precheck: run by the console script before TensorFlow loads (malign_launcher).
    parser.set_defaults(func=run_export, precheck=check_out)
