"""``malign data``: write TFRecord shards (from rows, Multi30K, synthetic scenes), inspect them.

Example:
    $ malign data build --input captions.jsonl --images photos/ --out records/mine --shards 8
    $ malign data multi30k --root multi30k --images flickr30k-images --split train \
        --out records/m30k-train --shards 16
    $ malign data prepare-multi30k --root multi30k --images flickr30k-images \
        --out records/multi30k --image-size 64 --vocab-size 4000
    $ malign data synthetic --out records/synthetic-train --n 4000
    $ malign data inspect records/m30k-train
    $ malign data captions records/m30k-train --out corpus/m30k-train
"""

from __future__ import annotations

import argparse

from malign.data.limits import DEFAULT_MAX_IMAGE_PIXELS

__all__ = ["add_subparser"]


def _languages(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [x.strip() for x in value.split(",") if x.strip()]


def _pixels(value: str) -> int:
    """A positive pixel count (``67108864``, ``64e6`` or ``64M`` = 64 * 2**20)."""
    text = value.strip().replace("_", "").replace(",", "")
    scale = 1
    if text[-1:].upper() == "M":
        text, scale = text[:-1], 1 << 20
    try:
        number = float(text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of pixels: {value!r}") from None
    if not number >= 1 or number != int(number):
        raise argparse.ArgumentTypeError(f"must be a positive whole number of pixels, got {value!r}")
    return int(number)


def _write_options(args: argparse.Namespace) -> dict:
    return {
        "max_image_pixels": args.max_image_pixels,
        "max_image_side": args.max_image_side,
        "sequence_length": args.sequence_length,
        "sentencepiece_model": args.vocab,
        "workers": args.workers,
    }


def _build(args: argparse.Namespace) -> int:
    from malign.data.writer import WriteStats, read_rows, write_rows

    stats = WriteStats()
    rows = []
    for path in args.input:
        rows.extend(read_rows(path, default_lang=args.lang, stats=stats))
    write_rows(
        rows, args.out, images_dir=args.images, shards=args.shards, stats=stats,
        verbose=not args.quiet, **_write_options(args),
    )
    return 0


def _multi30k(args: argparse.Namespace) -> int:
    from malign.data.multi30k import write_multi30k

    write_multi30k(
        args.root, args.images, args.split, args.out, shards=args.shards,
        languages=_languages(args.languages), captions=args.captions,
        verbose=not args.quiet, **_write_options(args),
    )
    return 0


def _prepare_multi30k(args: argparse.Namespace) -> int:
    from malign.data.multi30k import prepare_records, prepare_tokenizer

    options = {"max_image_pixels": args.max_image_pixels}
    if args.workers:
        options["workers"] = args.workers
    patterns = prepare_records(
        args.root, args.out, splits=_languages(args.splits) or [], captions=args.captions,
        images=args.images, image_size=args.image_size, languages=_languages(args.languages),
        verbose=not args.quiet, **options,
    )
    tokenizer = None
    if args.vocab_size:
        tokenizer = prepare_tokenizer(args.root, args.out, args.vocab_size,
                                      captions=args.captions,
                                      languages=_languages(args.languages),
                                      verbose=not args.quiet)
    for split, pattern in patterns.items():
        print(f"{split}: {pattern}")
    if tokenizer is not None:
        print(f"tokenizer: {tokenizer}")
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    from malign.data.synthetic import write_synthetic

    write_synthetic(
        args.out, args.n, image_size=args.image_size, seed=args.seed, shards=args.shards,
        image_format=args.format, verbose=not args.quiet,
    )
    return 0


def _captions(args: argparse.Namespace) -> int:
    from malign.data.captions import write_caption_files

    written = write_caption_files(args.pattern, args.out, _languages(args.languages))
    for lang, (path, count) in sorted(written.items()):
        print(f"{path}: {count} captions ({lang})")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from malign.data.pipeline import NoUsableRecordsError, check_shard, list_files, read_eval_split

    files = list_files(args.pattern)
    damaged = 0
    for path in files:
        if "://" in path:
            continue
        records, problem = check_shard(path)
        if problem:
            damaged += 1
            print(f"damaged shard {path}: {problem} (after {records} records)")
    print(f"{len(files)} shard files, {damaged} with lost framing")
    try:
        split = read_eval_split(
            args.pattern, image_size=args.image_size, batch_size=64,
            languages=_languages(args.languages), verbose=False,
            max_image_pixels=args.max_image_pixels,
        )
    except NoUsableRecordsError as error:
        print(error)
        return 1
    # Every record was read by TensorFlow's reader, which checks both checksums of each.
    for line in split.damage:
        print(f"damaged: {line}")
    print(split.summary())
    shown = 0
    for j, (text, lang) in enumerate(zip(split.captions, split.caption_langs)):
        if shown >= args.examples:
            break
        print(f"  {split.image_ids[split.text_to_image[j]]} [{lang}] {text}")
        shown += 1
    bad = split.dropped or damaged or split.damage
    return 1 if bad and args.strict else 0


def _add_write_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="PREFIX",
                        help="shards go to PREFIX-00000-of-0000N.tfrecord")
    parser.add_argument("--shards", type=int, default=1,
                        help="number of shard files (a multiple of the number of hosts)")
    parser.add_argument("--max-image-side", type=int, default=None, metavar="PIXELS",
                        help="downscale images whose shorter side is larger (re-encodes JPEG)")
    _add_max_pixels(
        parser,
        "images with more pixels (width x height, read from the header) are not stored as "
        "they are: JPEGs are decoded scaled down and stored downsized (to --max-image-side, "
        "else to fit), other formats skipped as 'image too large'. Raise it to let the writer "
        "decode bigger images (and pass --max-image-side to store them smaller)",
    )
    parser.add_argument("--sequence-length", type=int, default=64,
                        help="tokenizer length, for counting captions that will be truncated")
    parser.add_argument("--vocab", default=None, metavar="MODEL",
                        help="SentencePiece model for an exact count of long captions")
    parser.add_argument("--workers", type=int, default=None, help="image-reading threads")
    parser.add_argument("--quiet", action="store_true", help="no progress output")




def _add_max_pixels(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--max-image-pixels", type=_pixels, default=DEFAULT_MAX_IMAGE_PIXELS,
                        metavar="N", help=f"{text} (default {DEFAULT_MAX_IMAGE_PIXELS} = 64M, "
                        "an 8192x8192 image; also 64M or 64e6)")


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``malign data {build,multi30k,prepare-multi30k,synthetic,inspect}``.

    Args:
        subparsers: the ``malign`` command's sub-parsers.
    """
    parser = subparsers.add_parser(
        "data",
        help="write and inspect image-text TFRecord shards",
        description="Write image-text TFRecord shards in malign's schema, or inspect them.",
    )
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    commands.required = True

    build = commands.add_parser(
        "build",
        help="shards from JSONL/CSV rows of (image, caption, lang)",
        description=(
            "Write shards from rows of (image path, caption, lang): JSON lines with keys "
            "image, caption (a string or a list), lang and optionally image_id, or CSV/TSV "
            "with a header naming the same columns. Rows of one image become one record. "
            "Rows with a missing or corrupt image, an empty caption or invalid UTF-8 are "
            "skipped and counted, and so are images over --max-image-pixels other than JPEGs "
            "(those are stored downsized). Images keep their EXIF orientation, which training, "
            "evaluation and the exported model apply."
        ),
    )
    build.add_argument("--input", nargs="+", required=True, metavar="JSONL|CSV")
    build.add_argument("--images", required=True, metavar="DIR",
                       help="directory that relative image paths are resolved against")
    build.add_argument("--lang", default=None, help="language of rows that name none")
    _add_write_options(build)
    build.set_defaults(func=_build)

    multi30k = commands.add_parser(
        "multi30k",
        help="shards from the Multi30K layout (task1 four languages, task2 five captions)",
        description=(
            "Write one record per image of a Multi30K split from data/task1/raw/"
            "{split}.{lang}.gz and data/task1/image_splits/{split}.txt (and the task2 "
            "five-caption files with --captions task2/all)."
        ),
    )
    multi30k.add_argument("--root", required=True, metavar="DIR",
                          help="the Multi30K checkout (holding data/task1)")
    multi30k.add_argument("--images", required=True, metavar="DIR",
                          help="directory of the Flickr30K images")
    multi30k.add_argument("--split", required=True,
                          help="train, val, test_2016_flickr, ... (as in the file names)")
    multi30k.add_argument("--languages", default=None,
                          help="comma-separated, e.g. en,de (default: all available)")
    multi30k.add_argument("--captions", choices=("task1", "task2", "all"), default="task1",
                          help="task1: one caption per language; task2: 5 en + 5 de; all")
    _add_write_options(multi30k)
    multi30k.set_defaults(func=_multi30k)

    prepare = commands.add_parser(
        "prepare-multi30k",
        help="a Multi30K root's train and val records (and tokenizer), written once",
        description=(
            "Write the records a Multi30K training run reads into one directory: the train "
            "split with --captions (default all: the four task1 captions and the ten task2 "
            "ones per image) and every other split with task1 captions (one per language, "
            "the retrieval benchmark), as OUT/<split>-*-of-*.tfrecord, and with "
            "--vocab-size a SentencePiece tokenizer trained on the train captions "
            "(OUT/tokenizer.model). A split or tokenizer whose OUT/<name>.done marker "
            "records the same settings and source file sizes is not written again, so the "
            "command can be re-run. recipes/multi30k_finetune.py reads OUT (its "
            "MALIGN_MULTI30K_RECORDS)."
        ),
    )
    prepare.add_argument("--root", required=True, metavar="DIR",
                         help="the Multi30K checkout (holding data/task1)")
    prepare.add_argument("--images", default=None, metavar="DIR",
                         help="directory of the Flickr30K images (default ROOT/images)")
    prepare.add_argument("--out", required=True, metavar="DIR", help="output directory")
    prepare.add_argument("--splits", default="train,val",
                         help="comma-separated split names (default %(default)s; e.g. "
                         "train,val,test_2016_flickr)")
    prepare.add_argument("--captions", choices=("task1", "task2", "all"), default="all",
                         help="captions of the train split (default %(default)s)")
    prepare.add_argument("--languages", default=None,
                         help="comma-separated, e.g. en,de (default: all available)")
    prepare.add_argument("--image-size", type=int, default=None, metavar="PIXELS",
                         help="the model's image size: images are stored with the shorter side "
                         "the crops resize to (round(size * 346 / 289)); default: as they are")
    prepare.add_argument("--vocab-size", type=int, default=None, metavar="N",
                         help="also train an N-piece SentencePiece tokenizer on the train "
                         "captions into OUT/tokenizer.model")
    prepare.add_argument("--workers", type=int, default=None, help="image-reading threads")
    _add_max_pixels(prepare, "JPEGs with more pixels are stored downsized, other images "
                    "skipped as 'image too large'")
    prepare.add_argument("--quiet", action="store_true", help="no progress output")
    prepare.set_defaults(func=_prepare_multi30k)

    synthetic = commands.add_parser(
        "synthetic",
        help="drawn demo scenes with en/de/fr/cs captions",
        description=(
            "Write N procedurally drawn scenes (coloured shapes on a background) with "
            "captions in English, German, French and Czech. Use different --seed values for "
            "training and held-out sets."
        ),
    )
    synthetic.add_argument("--out", required=True, metavar="PREFIX",
                           help="output prefix: writes PREFIX-00000-of-00001.tfrecord ... and "
                           "PREFIX.summary.json")
    synthetic.add_argument("--n", type=int, required=True, help="number of images (scenes)")
    synthetic.add_argument("--image-size", type=int, default=64,
                           help="side of the square images in pixels (default %(default)s)")
    synthetic.add_argument("--seed", type=int, default=0,
                           help="scene seed (default %(default)s); the same seed gives the same "
                           "scenes: `malign train` on synthetic data writes its training "
                           "scenes with training.seed and its held-out ones with "
                           "training.seed + 100003")
    synthetic.add_argument("--shards", type=int, default=1,
                           help="number of shard files (default %(default)s)")
    synthetic.add_argument("--format", choices=("png", "jpeg"), default="png",
                           help="image file format inside the records (default %(default)s)")
    synthetic.add_argument("--quiet", action="store_true", help="print no progress")
    synthetic.set_defaults(func=_synthetic)

    captions = commands.add_parser(
        "captions",
        help="write the captions of shards as one text file per language",
        description="Write every usable caption (non-empty, valid UTF-8) of the records to "
                    "PREFIX.<lang>.txt, one a line (line breaks inside a caption become "
                    "spaces): the corpus for `malign tokenizer train` and `malign tokenizer "
                    "trim`. Files are written whole or not at all.",
    )
    captions.add_argument("pattern", help="shard glob or prefix")
    captions.add_argument("--out", required=True, metavar="PREFIX",
                          help="output prefix: writes PREFIX.en.txt, PREFIX.de.txt, ...")
    captions.add_argument("--languages", default=None,
                          help="comma-separated languages to write (default: all)")
    captions.set_defaults(func=_captions)

    inspect = commands.add_parser(
        "inspect",
        help="count records, captions per language and bad records of shards",
        description="Read shards once (checking both checksums of every record and decoding "
                    "every image) and report what is in them: each record whose checksum "
                    "fails (shard, record index, byte offset), each shard whose record "
                    "framing is lost (and the bytes lost), and the records dropped by "
                    "reason. A record set without a usable record exits with status 1.",
    )
    inspect.add_argument("pattern", help="shard glob or prefix")
    inspect.add_argument("--languages", default=None)
    inspect.add_argument("--image-size", type=int, default=64)
    inspect.add_argument("--examples", type=int, default=5, help="captions to print")
    _add_max_pixels(inspect, "count records whose image has more pixels (from the header) "
                    "as 'image too large', as training and evaluation drop them")
    inspect.add_argument("--strict", action="store_true",
                         help="exit with status 1 when a record is dropped or damaged, or a "
                         "shard's framing is lost")
    inspect.set_defaults(func=_inspect)
