"""``malign embed`` and ``malign search``: an embeddings file of images or captions, searched.

Embed a folder of images (sub-folders included), the images of a record set, or a file of
captions (one per line), with a ``.keras`` model or a SavedModel of ``malign export``::

    malign embed --model runs/demo/model.keras --images photos/ --out photos.npz
    malign embed --model export/malign/1 --data records/m30k-test --out m30k.npz
    malign embed --model runs/demo/model.keras --captions captions.de.txt --lang de --out de.npz

Search it with a caption in any language, an image, or the rows of another embeddings
file of the same model; print the top k with cosine scores (``--json`` for machines) and
draw the hits (``--sheet hits.html``, ``--sheet hits.png``)::

    malign search --embeddings photos.npz --text "ein Hund auf der Wiese" -k 5 --sheet hits.html
    malign search --embeddings photos.npz --image dog.jpg --json

The embeddings file records the model that made it (path and fingerprint); the query is
embedded by that model unless ``--model`` names another file of the same fingerprint, and
a query of another model is refused. See :mod:`malign.search`.

This module imports nothing heavy at module level: the console script builds its parser
(and runs the prechecks) without TensorFlow or numpy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from malign.data.commands import _pixels
from malign.data.limits import DEFAULT_MAX_IMAGE_PIXELS
from malign.search.fingerprint import model_format, resolve_model_path

__all__ = ["add_subparser", "check_embed", "check_search", "run_embed", "run_search"]

_SHEET_SUFFIXES = (".html", ".htm", ".png")  # as malign.search.contact_sheet.SHEET_SUFFIXES
_SHOWN = 20  # skipped files listed in the terminal (all are in the file's meta)


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _query(kind: str):
    def parse(value: str) -> tuple[str, str]:
        if kind == "text" and not value.strip():
            raise argparse.ArgumentTypeError("the text query is empty")
        return kind, value

    return parse


# -- prechecks (no TensorFlow: the console script runs them before loading it) -------------
def check_embed(args: argparse.Namespace) -> None:
    """Checks ``malign embed``'s arguments before any model is loaded.

    Args:
        args: the parsed arguments.

    Raises:
        ValueError, FileNotFoundError: naming the argument.

    Example:
        >>> check_embed(argparse.Namespace(model="/nonexistent.keras", tokenizer=None,
        ...     images="photos", data=None, captions=None, lang=None, out="e.npz",
        ...     overwrite=False))
        Traceback (most recent call last):
        ...
        FileNotFoundError: model not found: /nonexistent.keras
    """
    if args.lang is not None and args.captions is None:
        raise ValueError("--lang is the language of --captions; images have none")
    out = Path(args.out)
    if out.suffix != ".npz":
        raise ValueError(f"--out must be a .npz file, got {args.out}")
    if out.is_dir():
        raise ValueError(f"--out {args.out} is a directory; give a .npz file name")
    if out.exists() and not args.overwrite:
        raise ValueError(f"--out {args.out} exists; pass --overwrite to replace it")
    path = resolve_model_path(args.model)
    if args.tokenizer is not None:
        if model_format(path) == "saved_model":
            raise ValueError(f"--tokenizer is for .keras models: the SavedModel {path} holds its "
                             "own tokenizer")
        if not Path(args.tokenizer).is_file():
            raise FileNotFoundError(f"tokenizer not found: {args.tokenizer}")
        _check_fingerprint(path, args)
    if args.images is not None:
        images = Path(args.images)
        if not images.exists():
            raise FileNotFoundError(f"image folder not found: {args.images}")
        if not images.is_dir():
            raise ValueError(f"--images {args.images} is a file; give the folder that holds "
                             "the images")
    if args.captions is not None and not Path(args.captions).exists():
        raise FileNotFoundError(f"captions file not found: {args.captions}")


def check_search(args: argparse.Namespace) -> None:
    """Checks ``malign search``'s arguments before anything is loaded.

    Args:
        args: the parsed arguments.

    Raises:
        ValueError, FileNotFoundError: naming the argument.

    Example:
        >>> check_search(argparse.Namespace(embeddings="e.npz", query=None, queries=None,
        ...     sheet=None, model=None, tokenizer=None))
        Traceback (most recent call last):
        ...
        ValueError: give at least one query: --text TEXT, --image FILE or --queries FILE.npz
    """
    if not args.query and not args.queries:
        raise ValueError("give at least one query: --text TEXT, --image FILE or --queries FILE.npz")
    if getattr(args, "memory_budget_mb", 1.0) <= 0:
        raise ValueError("--memory-budget-mb must be positive")
    if not Path(args.embeddings).is_file():
        raise FileNotFoundError(f"embeddings file not found: {args.embeddings} (write one with "
                                "malign embed)")
    if args.queries is not None and not Path(args.queries).is_file():
        raise FileNotFoundError(f"--queries file not found: {args.queries}")
    for kind, value in args.query or ():
        if kind == "image" and not Path(value).is_file():
            raise FileNotFoundError(f"--image not found: {value}")
    for sheet in args.sheet or ():
        if Path(sheet).suffix.lower() not in _SHEET_SUFFIXES:
            raise ValueError(f"--sheet {sheet}: a contact sheet is .html or .png")
    if args.model is not None:
        path = resolve_model_path(args.model)
        if args.tokenizer is not None and model_format(path) == "saved_model":
            raise ValueError(f"--tokenizer is for .keras models: the SavedModel {path} holds its "
                             "own tokenizer")
    if args.tokenizer is not None and not Path(args.tokenizer).is_file():
        raise FileNotFoundError(f"tokenizer not found: {args.tokenizer}")
    if args.model is not None and args.tokenizer is not None:
        _check_fingerprint(resolve_model_path(args.model), args)


def _check_fingerprint(model: Path, args: argparse.Namespace) -> None:
    """Refuses a ``--tokenizer`` that is not the ``.keras`` model's own (its recorded
    SHA-256, ``malign.text.fingerprint``) unless ``--force-tokenizer`` is given."""
    from malign.text.fingerprint import check_tokenizer_fingerprint

    if model_format(model) == "keras":
        check_tokenizer_fingerprint(model, args.tokenizer,
                                    force=getattr(args, "force_tokenizer", False))


# -- malign embed -------------------------------------------------------------------------
def _names(items: list[str], limit: int = 10) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def run_embed(args: argparse.Namespace) -> int:
    """``malign embed``: writes the embeddings file and prints what was embedded and skipped.

    Args:
        args: the parsed arguments.

    Returns:
        The exit code.

    Example:
        >>> from malign.cli import main
        >>> main(["embed", "--model", "runs/demo/model.keras", "--images", "photos",
        ...       "--out", "photos.npz"])  # doctest: +SKIP
        0
    """
    check_embed(args)
    from malign.search import embed as embedding
    from malign.search import sources
    from malign.search.embeddings_file import Embeddings, write_embeddings

    started = time.time()
    meta: dict[str, Any] = {}
    notes: list[str] = []
    if args.captions is not None:
        # Read (and check) the captions before loading the model.
        rows, empty = sources.read_captions(args.captions)
        encoder = embedding.load_encoder(args.model, args.tokenizer)
        texts = [text for _, text in rows]
        vectors = embedding.embed_texts(encoder, texts, args.text_batch_size, not args.quiet)
        lang = args.lang or ""
        emb = Embeddings([str(n) for n, _ in rows], vectors, "text", texts, [lang] * len(texts),
                         model=encoder.record)
        meta["source"] = {"captions": str(Path(args.captions).resolve()), "lang": args.lang}
        meta["empty_lines"] = empty
        if empty:
            notes.append(f"skipped {len(empty)} empty line{'s' * (len(empty) > 1)}: "
                         f"{_names([str(n) for n in empty])}")
        what = "captions"
    else:
        if args.images is not None:
            listing = sources.list_image_folder(args.images)
            items = ((i, lambda i=i: sources.read_image_file(listing.root, i)) for i in listing.images)
            total: int | None = len(listing.images)
            meta["source"] = {"images": str(listing.root)}
            if listing.others:
                meta["other_files"] = listing.others
                one = len(listing.others) == 1
                notes.append(f"ignored {len(listing.others)} file{'' if one else 's'} that "
                             f"{'is not an image' if one else 'are not images'} by the suffix: "
                             f"{_names(listing.others)}")
        else:
            from malign.data import list_files

            files = list_files(args.data)
            items = (pair for chunk in sources.read_record_images(args.data, notes=notes)
                     for pair in chunk)
            total = None
            local = "://" not in args.data
            meta["source"] = {
                # Absolute, so that `malign search` finds the images from any directory.
                "data": str(Path(args.data).absolute()) if local else args.data,
                "files": [str(Path(f).resolve()) if "://" not in f else f for f in files],
            }
        encoder = embedding.load_encoder(args.model, args.tokenizer)
        result = embedding.embed_images(encoder, items, args.batch_size, args.max_image_pixels,
                                        total, not args.quiet)
        meta["skipped"] = [{"id": i, "reason": r} for i, r in result.skipped]
        meta["max_image_pixels"] = args.max_image_pixels
        if not result.ids:
            reasons = "; ".join(f"{i}: {r}" for i, r in result.skipped[:5])
            raise ValueError(f"none of the {len(result.skipped)} images could be embedded "
                             f"({reasons})")
        emb = Embeddings(result.ids, result.embeddings, "image", model=encoder.record)
        duplicates = len(result.ids) - len(set(result.ids))
        if duplicates:
            notes.append(f"{duplicates} ids occur more than once (records with the same "
                         "image/id); each is kept as its own row")
        what = "images"
    emb.meta = meta
    out = write_embeddings(args.out, emb)
    record = encoder.record
    print(f"embedded {emb.count} {what} ({emb.dim} dims) with {record['path']} "
          f"({record['format']}) in {time.time() - started:.1f} s -> {out}")
    skipped = meta.get("skipped", [])
    if skipped:
        print(f"skipped {len(skipped)} image{'s' * (len(skipped) > 1)} that could not be "
              "embedded:")
        for entry in skipped[:_SHOWN]:
            print(f"  {entry['id']}: {entry['reason']}")
        if len(skipped) > _SHOWN:
            print(f"  ... and {len(skipped) - _SHOWN} more (all are listed in the file's meta."
                  "skipped)")
    for note in notes:
        print(note)
    return 0


# -- malign search ------------------------------------------------------------------------
def _image_source(emb, wanted: set[str]):
    """``(bytes_of, path_of)`` for the images of an embeddings file (see contact_sheet)."""
    from malign.search import sources

    source = emb.meta.get("source", {})
    if "images" in source:
        root = Path(source["images"])

        def bytes_of(image_id: str) -> bytes | None:
            try:
                return (root / image_id).read_bytes()
            except OSError:
                return None

        return bytes_of, lambda image_id: root / image_id
    if "data" in source and wanted:
        try:
            found = sources.record_images_by_id(source["data"], wanted)
        except FileNotFoundError:
            found = {}
        return found.get, lambda image_id: None
    return (lambda image_id: None), (lambda image_id: None)


def _model_for_query(args: argparse.Namespace, gallery, texts: bool):
    from malign.search.embed import load_encoder
    from malign.search.fingerprint import check_same_model

    recorded = gallery.model
    spec = args.model or recorded["path"]
    if args.model is None and not Path(spec).exists():
        raise FileNotFoundError(f"the model that made {args.embeddings} ({spec}) is not there any "
                                "more; pass --model with that model (or a copy of it)")
    tokenizer = args.tokenizer
    saved = model_format(resolve_model_path(spec)) == "saved_model"
    known = recorded.get("tokenizer")
    if tokenizer is None and not saved and known and Path(known["path"]).is_file():
        tokenizer = known["path"]
    encoder = load_encoder(spec, tokenizer)
    check_same_model(recorded, encoder.record, args.embeddings, texts=texts)
    return encoder


def _embed_image_query(encoder, path: str) -> tuple:
    import tensorflow as tf

    from malign.search.embed import describe_decode_error
    from malign.search.sources import screen_image

    data = Path(path).read_bytes()
    reason = screen_image(data, DEFAULT_MAX_IMAGE_PIXELS)
    if reason is not None:
        raise ValueError(f"--image {path}: {reason}")
    try:
        return encoder.embed_image_batch([data]), data
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        raise ValueError(f"--image {path}: {describe_decode_error(error)}") from None


def run_search(args: argparse.Namespace) -> int:
    """``malign search``: the top k of each query, as a table or JSON, and contact sheets.

    Args:
        args: the parsed arguments.

    Returns:
        The exit code.

    Example:
        >>> from malign.cli import main
        >>> main(["search", "--embeddings", "photos.npz", "--text", "ein Hund"])  # doctest: +SKIP
        0
    """
    check_search(args)
    import numpy as np

    from malign.search.contact_sheet import write_sheet
    from malign.search.embeddings_file import read_embeddings
    from malign.search.fingerprint import check_same_model
    from malign.search.query import Query, results_json, results_table, search

    gallery = read_embeddings(args.embeddings)
    queries: list[Query] = []
    vectors: list[np.ndarray] = []
    query_images: list[bytes | None] = []
    query_paths: list[Path | None] = []
    model_record = None
    if args.query:
        texts = [value for kind, value in args.query if kind == "text"]
        encoder = _model_for_query(args, gallery, texts=bool(texts))
        model_record = encoder.record
        text_vectors = iter(encoder.embed_texts(texts) if texts else ())
        for kind, value in args.query:
            queries.append(Query(kind, value))
            if kind == "text":
                vectors.append(next(text_vectors)[None, :])
                query_images.append(None)
                query_paths.append(None)
            else:
                vector, data = _embed_image_query(encoder, value)
                vectors.append(vector)
                query_images.append(data)
                query_paths.append(Path(value))
    if args.queries is not None:
        rows = read_embeddings(args.queries)
        check_same_model(gallery.model, rows.model, args.embeddings,
                         texts=rows.kind == "text" or gallery.kind == "text")
        vectors.append(rows.embeddings)
        wanted = set(rows.ids) if rows.kind == "image" and args.sheet else set()
        bytes_of, path_of = _image_source(rows, wanted)
        for n, row_id in enumerate(rows.ids):
            label = f"line {row_id}" if rows.kind == "text" else row_id
            queries.append(Query("embedding", label, rows.source_text(n)))
            query_images.append(bytes_of(row_id) if wanted else None)
            query_paths.append(path_of(row_id) if rows.kind == "image" else None)
    results = search(gallery, np.concatenate(vectors), args.top_k,
                     memory_budget_bytes=int(args.memory_budget_mb * 2**20), backend=args.backend)
    if args.top_k > gallery.count:
        print(f"malign search: {args.embeddings} holds {gallery.count} {gallery.kind}s, fewer "
              f"than -k {args.top_k}: all are shown", file=sys.stderr)

    sheets = {}
    if args.sheet:
        if args.thumbnails == "link" and "images" not in gallery.meta.get("source", {}) \
                and gallery.kind == "image":
            raise ValueError("--thumbnails link needs images from a folder; these came from "
                             "records: use --thumbnails embed")
        wanted = {hit.id for hits in results for hit in hits} if gallery.kind == "image" else set()
        source = _image_source(gallery, wanted)
        for sheet in args.sheet:
            missing = write_sheet(sheet, queries, results, gallery, source, query_images,
                                  query_paths, args.thumb_size, args.thumbnails,
                                  title=f"malign search: {args.embeddings}")
            sheets[sheet] = missing
    if args.json:
        out = results_json(queries, results, gallery, file=args.embeddings, k=args.top_k,
                           query_model=model_record, sheets=list(sheets))
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        print(results_table(queries, results, gallery))
    for sheet, missing in sheets.items():
        gone = f" ({missing} images not available: moved or unreadable)" if missing else ""
        print(f"wrote {sheet}{gone}", file=sys.stderr)
    return 0


# -- the parsers --------------------------------------------------------------------------
def add_subparser(subparsers: Any) -> None:
    """Adds ``malign embed`` and ``malign search`` to the ``malign`` parser.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.

    Example:
        >>> parser = argparse.ArgumentParser(prog="malign")
        >>> add_subparser(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["search", "--embeddings", "e.npz", "--text", "a dog",
        ...                           "--image", "dog.jpg"])
        >>> args.func.__name__, args.query, args.top_k
        ('run_search', [('text', 'a dog'), ('image', 'dog.jpg')], 10)
    """
    embed = subparsers.add_parser(
        "embed",
        help="embed a folder of images, a record set's images or a file of captions",
        description=(
            "Embed images (a folder, sub-folders included, or the images of TFRecord shards) "
            "or captions (a text file, one per line) with a .keras model or a SavedModel "
            "exported by `malign export`, into an .npz file: ids, L2-normalised float32 "
            "embeddings, kind, and the model's path and fingerprint. Images that cannot be "
            "embedded are skipped and listed by name."
        ),
    )
    source = embed.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="DIR",
                        help="a folder of images (.jpg .jpeg .png .gif .bmp .webp, sub-folders "
                        "included); ids are paths relative to it")
    source.add_argument("--data", metavar="PATTERN",
                        help="TFRecord shards of `malign data` (prefix or glob); ids are the "
                        "records' image/id")
    source.add_argument("--captions", metavar="FILE",
                        help="a UTF-8 text file with one caption per line; ids are line numbers")
    embed.add_argument("--lang", help="the language of --captions (recorded per caption)")
    embed.add_argument("--model", required=True,
                       help="a .keras file saved by malign, or a SavedModel of `malign export` "
                       "(a version directory, or its base directory for the newest version)")
    embed.add_argument("--force-tokenizer", action="store_true",
                       help="use --tokenizer even when its SHA-256 is not the one the .keras "
                       "model recorded (tokenizer-fingerprint.json)")
    embed.add_argument("--tokenizer",
                       help="a .keras model's SentencePiece .model (or WordPiece vocab.txt); "
                       "default: tokenizer.model next to the model")
    embed.add_argument("--out", required=True, help="the embeddings file to write (.npz)")
    embed.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    embed.add_argument("--batch-size", type=_positive, default=64,
                       help="images per batch (default 64)")
    embed.add_argument("--text-batch-size", type=_positive, default=256,
                       help="captions per batch (default 256)")
    embed.add_argument("--max-image-pixels", type=_pixels, default=DEFAULT_MAX_IMAGE_PIXELS,
                       help="skip images with more pixels (width x height, read from the "
                       "header before decoding); default %(default)s = 8192^2")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    # precheck: run by the console script before TensorFlow loads (malign_launcher).
    embed.set_defaults(func=run_embed, precheck=check_embed)

    search = subparsers.add_parser(
        "search",
        help="top-k search of an embeddings file by text, image or embeddings",
        description=(
            "Search an embeddings file of `malign embed` with captions in any language "
            "(--text), image files (--image) or the rows of another embeddings file of the "
            "same model (--queries); print the top k with cosine scores. Text and image "
            "queries are embedded by the model that made the file (or --model, which must "
            "be the same model). The search is exact (malign eval's chunked top-k)."
        ),
    )
    search.add_argument("--embeddings", required=True, help="the embeddings file (.npz)")
    search.add_argument("--text", dest="query", action="append", type=_query("text"),
                        metavar="TEXT", help="a text query (repeatable)")
    search.add_argument("--image", dest="query", action="append", type=_query("image"),
                        metavar="FILE", help="an image file as the query (repeatable)")
    search.add_argument("--queries", metavar="FILE.npz",
                        help="every row of another embeddings file of the same model is a query")
    search.add_argument("-k", "--top-k", type=_positive, default=10,
                        help="results per query (default 10)")
    search.add_argument("--model",
                        help="the model that embeds the queries (default: the one recorded in "
                        "the embeddings file; another model is refused)")
    search.add_argument("--force-tokenizer", action="store_true",
                        help="use --tokenizer even when its SHA-256 is not the one the .keras "
                        "model recorded (tokenizer-fingerprint.json)")
    search.add_argument("--tokenizer",
                        help="a .keras model's tokenizer (default: the one recorded, or beside "
                        "the model)")
    search.add_argument("--json", action="store_true", help="print the results as JSON")
    search.add_argument("--sheet", action="append", metavar="OUT",
                        help="write a contact sheet of the hits: OUT.html or OUT.png "
                        "(repeatable)")
    search.add_argument("--thumbnails", choices=("embed", "link"), default="embed",
                        help="HTML sheets: embed base64 thumbnails (default) or link the image "
                        "files by relative path (images from a folder)")
    search.add_argument("--thumb-size", type=_positive, default=128,
                        help="thumbnail side in pixels (default 128)")
    search.add_argument("--memory-budget-mb", type=float, default=512.0,
                        help="working memory of the exact search in MiB (default 512)")
    search.add_argument("--backend", choices=("numpy", "tensorflow"), default="numpy",
                        help="search backend: numpy (CPU BLAS) or tensorflow (GPU/TPU if present)")
    search.set_defaults(func=run_search, precheck=check_search)
