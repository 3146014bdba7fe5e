"""``malign convert``: import external checkpoints.

::

    malign convert transformers-align --src align-base/ --out models/align-base/model.keras

reads a transformers ALIGN checkpoint directory (``config.json``, ``model.safetensors`` or
``pytorch_model.bin``, ``vocab.txt``, the processor files), converts every weight with
checks (see ``malign.convert.from_transformers_align``) and writes, next to each other:

- ``model.keras``: the malign ``AlignModel`` (loads with ``keras.saving.load_model``);
- ``vocab.txt``: the checkpoint's WordPiece vocabulary, where ``malign eval`` (and
  ``find_tokenizer``) look for a tokenizer next to a model, with the checkpoint's
  ``tokenizer.json`` / ``tokenizer_config.json`` (lowercasing, accents, added tokens);
- ``tokenizer-fingerprint.json``: the SHA-256 of that ``vocab.txt``; ``malign eval`` and
  ``malign export`` refuse another tokenizer file for this model (``malign.text.fingerprint``);
- ``model.conversion.json``: source, tensor and weight counts, the malign config, and
  the checkpoint's image preprocessing (resize, crop, resampling, rescaling).

Example:
    $ malign convert transformers-align --src ~/align-base --out models/align-base/model.keras
    $ malign eval --model models/align-base/model.keras --data records/m30k-test --out eval/
"""

from __future__ import annotations

import argparse
import filecmp
import json
from pathlib import Path
from typing import Any

__all__ = ["add_subparser", "run_transformers_align"]

#: Tokenizer files that ``malign eval`` prefers over ``vocab.txt`` in the same directory.
_SHADOWING = ("tokenizer.model", "sentencepiece.model")


def add_subparser(subparsers: Any) -> None:
    """Adds ``malign convert transformers-align`` to the ``malign`` parser.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.

    Example:
        >>> parser = argparse.ArgumentParser(prog="malign")
        >>> add_subparser(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["convert", "transformers-align", "--src", "d",
        ...                           "--out", "m.keras"])
        >>> args.func.__name__, args.src
        ('run_transformers_align', 'd')
    """
    parser = subparsers.add_parser(
        "convert",
        help="import external checkpoints (transformers ALIGN)",
        description="Import external checkpoints into malign models.",
    )
    commands = parser.add_subparsers(dest="convert_command", metavar="SUBCOMMAND")
    commands.required = True
    align = commands.add_parser(
        "transformers-align",
        help="convert a transformers ALIGN checkpoint (kakaobrain/align-base) to .keras",
        description=(
            "Convert a transformers ALIGN checkpoint directory (config.json + model.safetensors "
            "or pytorch_model.bin, vocab.txt, processor files) into a malign .keras model with "
            "numeric parity. Every checkpoint tensor must be used and every model weight set. "
            "vocab.txt is copied next to the output, where `malign eval` finds it."
        ),
    )
    align.add_argument("--src", required=True, help="the checkpoint directory")
    align.add_argument("--out", required=True, help="output .keras file")
    align.add_argument("--image-size", type=int, default=None,
                       help="input size (default: the processor's crop size, 289 for align-base)")
    align.add_argument("--sequence-length", type=int, default=None,
                       help="tokens per caption (default: the tokenizer's, 64 for align-base)")
    align.add_argument("--overwrite", action="store_true",
                       help="replace an existing output file and vocab.txt")
    align.set_defaults(func=run_transformers_align)


def _check_outputs(out: Path, vocabulary: Path | None, overwrite: bool) -> None:
    if out.suffix != ".keras":
        raise ValueError(f"--out must end in .keras, got {out}")
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    for name in _SHADOWING:
        if (out.parent / name).exists():
            raise ValueError(
                f"{out.parent / name} exists: `malign eval` would take it as this model's "
                "tokenizer instead of the checkpoint's vocab.txt; write to another directory"
            )
    if vocabulary is None or overwrite:
        return
    from malign.text.tokenizers import WORDPIECE_SETTINGS_FILES

    for name in ("vocab.txt", *WORDPIECE_SETTINGS_FILES):
        source, target = vocabulary.parent / name, out.parent / name
        if target.exists() and not (source.is_file()
                                    and filecmp.cmp(source, target, shallow=False)):
            raise ValueError(f"{target} exists and differs from the checkpoint's {name}; "
                             "write to another directory or pass --overwrite")


def run_transformers_align(args: argparse.Namespace) -> int:
    """Runs ``malign convert transformers-align``; returns the exit code.

    Args:
        args: parsed arguments (``src``, ``out``, ``image_size``, ``sequence_length``,
            ``overwrite``).

    Raises:
        ValueError: bad output paths, or a ``ConversionError`` naming the weight or field.
        FileNotFoundError: no checkpoint directory.

    Example:
        >>> run_transformers_align(argparse.Namespace(src="align-base", out="m/model.keras",
        ...     image_size=None, sequence_length=None, overwrite=False))  # doctest: +SKIP
        0
    """
    import malign  # noqa: F401  (registers the custom objects)
    from malign import atomic_files
    from malign.convert.transformers_align import import_transformers_align
    from malign.models.align_model import count_params
    from malign.text.fingerprint import FINGERPRINT_NAME, write_tokenizer_fingerprint

    src = Path(args.src)
    if not src.exists():
        raise FileNotFoundError(f"checkpoint directory not found: {src}")
    out = Path(args.out)
    directory = src.parent if src.is_file() else src
    vocabulary = directory / "vocab.txt"
    _check_outputs(out, vocabulary if vocabulary.is_file() else None, args.overwrite)

    result = import_transformers_align(src, image_size=args.image_size,
                                       sequence_length=args.sequence_length)
    model = result.model
    with atomic_files.replacing(out) as tmp:
        model.save(tmp)
    copied = None
    if result.vocabulary is not None:
        copied = out.parent / "vocab.txt"
        if not copied.exists() or not filecmp.cmp(result.vocabulary, copied, shallow=False):
            atomic_files.copy_file(result.vocabulary, copied)
        # The files that say how vocab.txt is used travel with it (tokenizer_from_file
        # reads them), so eval and export tokenize as the checkpoint's tokenizer does.
        from malign.text.tokenizers import WORDPIECE_SETTINGS_FILES

        for name in WORDPIECE_SETTINGS_FILES:
            source, target = directory / name, out.parent / name
            if source.is_file():
                atomic_files.copy_file(source, target)
            elif target.exists():
                target.unlink()
    # What eval and export compare a tokenizer against (malign.text.fingerprint); a record
    # left by another model in this directory would name a vocabulary that is not this one's.
    fingerprint = write_tokenizer_fingerprint(copied, "malign convert") if copied else None
    if copied is None and (out.parent / FINGERPRINT_NAME).exists():
        (out.parent / FINGERPRINT_NAME).unlink()

    settings = result.image_processor
    record = {
        "source": str(src.resolve()),
        "format": "transformers-align",
        "tensors": result.tensors,
        "weights": count_params(model),
        "temperature": float(model.temperature_variable.numpy()),
        "image_processor": settings.to_dict(),
        "eval_resize": model.model_config.image.eval_resize,
        "eval_crop_mismatch": settings.eval_crop_mismatch(model.image_size),
        "tokenizer": {"vocabulary": str(copied) if copied else None,
                      "sha256": fingerprint["sha256"] if fingerprint else None,
                      "lowercase": result.lowercase,
                      "sequence_length": model.sequence_length},
        "model_config": model.model_config.to_dict(),
    }
    record_path = out.with_suffix(".conversion.json")
    atomic_files.write_text(record_path, json.dumps(record, indent=2) + "\n")

    resize = "x".join(map(str, settings.resize)) if settings.resize else "none"
    crop = "x".join(map(str, settings.crop)) if settings.crop else "none"
    print(f"converted {result.tensors} tensors ({record['weights']:,} weights) from {src}")
    print(f"  model:       {out}")
    print(f"  tokenizer:   {copied or 'none (the checkpoint has no vocab.txt)'} "
          f"(WordPiece, lowercase={result.lowercase}, {model.sequence_length} tokens)")
    print(f"  images:      resize {resize} ({settings.method}), centre crop {crop}, "
          f"then the model's {settings.normalization} normalisation of [0, 1] pixels")
    mismatch = record["eval_crop_mismatch"]
    print(f"  evaluation:  eval_resize={record['eval_resize']} (malign eval and export), "
          + ("the processor's crop" if mismatch is None else f"not the processor's: {mismatch}"))
    print(f"  temperature: {record['temperature']:.6g}")
    print(f"  record:      {record_path}")
    if copied is None:
        print("warning: no vocab.txt in the checkpoint; pass --tokenizer to `malign eval`")
    elif not result.lowercase:
        print("warning: the checkpoint's tokenizer is cased; build it with "
              "malign.text.WordPieceTokenizer(vocab, lowercase=False)")
    return 0
