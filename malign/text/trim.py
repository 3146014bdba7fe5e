"""Vocabulary trimming: keep the SentencePiece pieces a corpus uses, and their embedding rows.

A 250k multilingual vocabulary costs a BERT-small student most of its weights (250k x 512 =
128M of ``student-b0-small``'s 152M). A student that serves a few languages needs only the
pieces text in those languages uses. :func:`trim_vocabulary` tokenizes a corpus in the target
languages with the full model and writes a smaller SentencePiece model holding

- the special pieces (``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4: every
  non-``NORMAL`` piece, in fact, so control and user-defined symbols stay),
- the 256 byte pieces ``<0x00>``..``<0xFF>`` (so any text still encodes, byte by byte),
- every piece the corpus's segmentations use (at least ``min_count`` times),
- the ``NORMAL`` pieces with the lowest and the highest score (see below),
- any pieces named in ``keep``,

in their original order, with their scores, normalizer, denormalizer and trainer specs
(only ``trainer_spec.vocab_size`` is set to the new size). Because order is kept, the special
tokens and the bytes keep ids 0..260. :func:`trim_token_embedding` then builds the smaller
:class:`~malign.models.align_model.AlignModel`, taking the token embedding's rows of the kept
ids and copying every other weight.

Why the segmentation does not change. SentencePiece's unigram model segments a (normalized)
sentence with the Viterbi path of highest total score through the lattice of pieces that match
its substrings; a position that no single-character piece covers gets an "unknown" node of
score ``min_score - 10`` (``min_score``: the lowest score of a ``NORMAL`` piece; with byte
fallback that node becomes the character's bytes), and user-defined pieces score from
``max_score``. Trimming removes lattice nodes but never changes the score of a remaining path,
so the full model's best path for a corpus sentence (all of whose pieces are kept) stays
available and the best. The only nodes trimming can *add* are unknown nodes where a removed
single-character piece was; such a node scores below any normal piece, so a path through it is
worse than the same path through the removed piece, which the full model already rejected.
Both arguments need ``min_score`` and ``max_score`` unchanged, hence the two extreme-score
pieces are always kept. So with ``min_count=1`` every corpus sentence gets the same pieces;
:func:`trim_vocabulary` re-encodes the corpus with the trimmed model and raises if one does not
(``stats["corpus_sentences_changed"]``). On other text, a sentence whose full segmentation
uses only kept pieces also segments identically, by the same argument; a sentence that needs a
piece the corpus never used is segmented differently (into kept pieces or bytes). With
``min_count > 1`` rarely used pieces are dropped too, which *does* change the segmentation of
the corpus sentences that used them (counted in the stats, not an error).

Example:
    >>> import malign
    >>> result = trim_vocabulary(malign.text.test_vocab_path(),
    ...                          ["Zwei rote Kreise.", "Two red circles."], "/tmp/trimmed")
    >>> result.pieces_before, result.old_ids[:3].tolist()
    (1000, [0, 1, 2])
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from malign import atomic_files

__all__ = ["TrimResult", "iter_corpus", "load_trim_ids", "trim_token_embedding", "trim_vocabulary"]

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


@dataclasses.dataclass(frozen=True)
class TrimResult:
    """What :func:`trim_vocabulary` wrote.

    Args:
        model_path: the trimmed ``PREFIX.model``.
        vocab_path: ``PREFIX.vocab`` (``piece<TAB>score`` lines, as ``spm_train`` writes).
        ids_path: ``PREFIX.ids.npy``: int64 [new_size], ``old_ids[new_id] = old_id``, i.e. the
            rows of the full model's token embedding to take, in order.
        stats_path: ``PREFIX.trim.json``: the stats below plus the source model and options.
        old_ids: the contents of ``ids_path``.
        stats: pieces before/after, corpus sentences and tokens, coverage, changes.
    """

    model_path: Path
    vocab_path: Path
    ids_path: Path
    stats_path: Path
    old_ids: np.ndarray
    stats: dict[str, Any]

    @property
    def pieces_before(self) -> int:
        return int(self.stats["pieces_before"])

    @property
    def pieces_after(self) -> int:
        return int(self.stats["pieces_after"])

    def old_to_new(self) -> dict[int, int]:
        """``{old_id: new_id}`` for every kept piece."""
        return {int(old): new for new, old in enumerate(self.old_ids)}


def _open_lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    tsv = path.name.endswith((".tsv", ".tsv.gz"))
    try:
        with opener(path, "rb") as handle:
            for lineno, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    raise ValueError(f"{path}:{lineno}: not valid UTF-8") from None
                if tsv:
                    line = line.partition("\t")[2]
                line = line.strip()
                if line:
                    yield line
    except FileNotFoundError:
        raise FileNotFoundError(f"trim corpus file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"trim corpus {path} is a directory; pass the text files in it") from None


def iter_corpus(corpus: os.PathLike | Iterable[str | os.PathLike]) -> Iterator[str]:
    """Yields the non-empty sentences of a trim corpus.

    Args:
        corpus: one file (an ``os.PathLike``, e.g. a ``pathlib.Path``) or an iterable whose
            items are files (``os.PathLike``) or sentences (``str``). Files hold one sentence a
            line, ``.gz`` allowed; ``.tsv``/``.tsv.gz`` files hold ``lang<TAB>text`` lines.

    Raises:
        TypeError: for a bare ``str`` (ambiguous: pass ``[text]`` or ``Path(file)``) or an
            item that is neither a ``str`` nor a path.
        FileNotFoundError, ValueError: for a missing, directory or non-UTF-8 file.

    Example:
        >>> list(iter_corpus(["a cat", "  ", "ein Hund"]))
        ['a cat', 'ein Hund']
    """
    if isinstance(corpus, (str, bytes)):
        raise TypeError(
            "the trim corpus is a single string: pass a list of sentences ([text]) or of files "
            "(pathlib.Path objects)"
        )
    if isinstance(corpus, os.PathLike):
        corpus = [corpus]
    for item in corpus:
        if isinstance(item, os.PathLike):
            yield from _open_lines(Path(item))
        elif isinstance(item, str):
            item = item.strip()
            if item:
                yield item
        else:
            raise TypeError(
                f"trim corpus items must be sentences (str) or files (os.PathLike), got "
                f"{type(item).__name__}"
            )


def _model_proto(model: str | os.PathLike | bytes):
    from sentencepiece import sentencepiece_model_pb2

    if isinstance(model, (bytes, bytearray)):
        data, source = bytes(model), "the given bytes"
    else:
        source = os.fspath(model)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"SentencePiece model not found: {source}")
        data = Path(source).read_bytes()
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as error:  # protobuf's DecodeError
        raise ValueError(f"not a SentencePiece model: {source} ({error})") from None
    if not proto.pieces:
        raise ValueError(f"not a SentencePiece model: {source} (no pieces)")
    if proto.trainer_spec.model_type != proto.trainer_spec.UNIGRAM:
        raise ValueError(
            f"{source} is not a unigram SentencePiece model (model_type "
            f"{proto.trainer_spec.ModelType.Name(proto.trainer_spec.model_type)}); only unigram "
            "models can be trimmed this way"
        )
    return proto, data, source


def trim_vocabulary(
    model_path: str | os.PathLike | bytes,
    corpus: os.PathLike | Iterable[str | os.PathLike],
    out_prefix: str | os.PathLike,
    min_count: int = 1,
    keep: Iterable[str] = (),
    verbose: bool = False,
) -> TrimResult:
    """Writes a SentencePiece model holding only the pieces a corpus uses (and the reserved ones).

    See the module docstring for what is kept and why the corpus's segmentation is unchanged.

    Args:
        model_path: the full unigram ``.model`` (a path, or its bytes).
        corpus: text in the target languages (see :func:`iter_corpus`): files
            (``os.PathLike``) and/or sentences (``str``).
        out_prefix: writes ``PREFIX.model``, ``PREFIX.vocab``, ``PREFIX.ids.npy`` and
            ``PREFIX.trim.json``.
        min_count: drop pieces the corpus uses fewer times than this (1 keeps every used
            piece). Above 1 the segmentation of text that used a dropped piece changes.
        keep: further pieces to keep (strings, e.g. ``"▁Prague"``); each must exist in the model.
        verbose: print before/after sizes.

    Returns:
        A :class:`TrimResult`.

    Raises:
        FileNotFoundError: the model or a corpus file is missing.
        ValueError: not a unigram model, ``min_count < 1``, an empty corpus, a ``keep`` piece
            the model lacks.
        RuntimeError: when (``min_count=1``) a corpus sentence segments differently after
            trimming, which the argument in the module docstring rules out.

    Example:
        >>> import malign
        >>> r = trim_vocabulary(malign.text.test_vocab_path(), ["ein Hund"], "/tmp/t")
        >>> r.stats["corpus_sentences_changed"]
        0
    """
    import sentencepiece as spm

    if int(min_count) != min_count or min_count < 1:
        raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
    proto, data, source = _model_proto(model_path)
    processor = spm.SentencePieceProcessor(model_proto=data)
    size = len(proto.pieces)
    piece_to_id = {p.piece: i for i, p in enumerate(proto.pieces)}
    missing = [piece for piece in keep if piece not in piece_to_id]
    if missing:
        raise ValueError(f"pieces to keep are not in {source}: {missing[:10]}"
                         + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))

    # Count the pieces of the corpus's segmentations, in batches.
    counts = np.zeros(size, dtype=np.int64)
    sentences: list[str] = []
    n_sentences = 0
    for sentence in iter_corpus(corpus):
        sentences.append(sentence)
        n_sentences += 1
    if not n_sentences:
        raise ValueError("the trim corpus holds no non-empty sentence")
    full_segmentations = processor.encode(sentences)
    for ids in full_segmentations:
        np.add.at(counts, np.asarray(ids, dtype=np.int64), 1)

    types = np.array([p.type for p in proto.pieces])
    scores = np.array([p.score for p in proto.pieces], dtype=np.float64)
    keep_mask = types != _NORMAL  # special, control, user-defined, unused, byte pieces
    keep_mask |= counts >= min_count
    normal = np.flatnonzero(types == _NORMAL)
    if normal.size:
        # min_score sets the unknown-node penalty, max_score the user-defined pieces' scores.
        keep_mask[normal[np.argmin(scores[normal])]] = True
        keep_mask[normal[np.argmax(scores[normal])]] = True
    for piece in keep:
        keep_mask[piece_to_id[piece]] = True
    old_ids = np.flatnonzero(keep_mask).astype(np.int64)

    trimmed = type(proto)()
    trimmed.CopyFrom(proto)
    del trimmed.pieces[:]
    for old in old_ids:
        trimmed.pieces.add().CopyFrom(proto.pieces[int(old)])
    trimmed.trainer_spec.vocab_size = len(old_ids)
    trimmed_bytes = trimmed.SerializeToString()
    trimmed_processor = spm.SentencePieceProcessor(model_proto=trimmed_bytes)

    # Check: the trimmed model's segmentation of the corpus, mapped back to the full ids.
    new_segmentations = trimmed_processor.encode(sentences)
    changed = sum(
        1 for full, new in zip(full_segmentations, new_segmentations)
        if len(full) != len(new) or any(int(old_ids[n]) != f for f, n in zip(full, new))
    )
    if min_count == 1 and changed:
        raise RuntimeError(
            f"{changed} of {n_sentences} corpus sentences segment differently after trimming "
            f"{source}: this SentencePiece version's unigram encoder does not behave as "
            "malign.text.trim assumes; please report it"
        )
    total_tokens = int(counts.sum())
    byte_tokens = int(counts[types == _BYTE].sum())
    used = int((counts > 0).sum())
    stats = {
        "source_model": source,
        "pieces_before": size,
        "pieces_after": int(len(old_ids)),
        "min_count": int(min_count),
        "kept_pieces": {
            "reserved": int((types != _NORMAL).sum()),
            "used_by_corpus": int(((counts >= min_count) & (types == _NORMAL)).sum()),
            "extreme_scores_and_keep": int(len(old_ids)) - int((types != _NORMAL).sum())
            - int(((counts >= min_count) & (types == _NORMAL)).sum()),
        },
        "corpus_sentences": n_sentences,
        "corpus_tokens": total_tokens,
        "corpus_byte_fallback_tokens": byte_tokens,
        "corpus_distinct_pieces": used,
        "corpus_pieces_dropped_by_min_count": int(((counts > 0) & ~keep_mask).sum()),
        # Share of the corpus's tokens (full segmentation) whose piece is kept.
        "corpus_token_coverage": float(counts[keep_mask].sum() / max(total_tokens, 1)),
        "corpus_sentences_changed": int(changed),
    }

    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    model_out = out_prefix.with_name(out_prefix.name + ".model")
    vocab_out = out_prefix.with_name(out_prefix.name + ".vocab")
    ids_out = out_prefix.with_name(out_prefix.name + ".ids.npy")
    stats_out = out_prefix.with_name(out_prefix.name + ".trim.json")
    atomic_files.write_bytes(model_out, trimmed_bytes)
    atomic_files.write_text(vocab_out, "".join(f"{p.piece}\t{p.score:g}\n" for p in trimmed.pieces))
    with atomic_files.replacing(ids_out) as tmp:
        np.save(tmp, old_ids)  # the temporary name ends in .npy too: np.save keeps it
    atomic_files.write_text(stats_out, json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    if verbose:
        print(f"pieces: {size} -> {len(old_ids)} ({100 * len(old_ids) / size:.1f}%) from "
              f"{n_sentences} sentences, {total_tokens} tokens; wrote {model_out}, {ids_out}, "
              f"{stats_out}", flush=True)
    return TrimResult(model_out, vocab_out, ids_out, stats_out, old_ids, stats)


def load_trim_ids(mapping: TrimResult | np.ndarray | Sequence[int] | str | os.PathLike) -> np.ndarray:
    """The kept old ids (``old_ids[new_id] = old_id``) from a result, an array or ``.ids.npy``.

    Raises:
        ValueError: when the ids are not a strictly increasing 1-D list of ids >= 0 that keeps
            the special ids 0..4 in place.

    Example:
        >>> load_trim_ids([0, 1, 2, 3, 4, 9]).tolist()
        [0, 1, 2, 3, 4, 9]
    """
    if isinstance(mapping, TrimResult):
        ids = mapping.old_ids
    elif isinstance(mapping, (str, os.PathLike)):
        ids = np.load(os.fspath(mapping))
    else:
        ids = np.asarray(mapping)
    ids = np.asarray(ids)
    if ids.ndim != 1 or not ids.size or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"trim ids must be a non-empty 1-D integer array, got shape {ids.shape} "
                         f"of {ids.dtype}")
    if ids.min() < 0 or np.any(np.diff(ids) <= 0):
        raise ValueError("trim ids must be increasing ids >= 0 (old_ids[new_id] = old_id)")
    if ids.size < 5 or ids[:5].tolist() != [0, 1, 2, 3, 4]:
        raise ValueError(f"trim ids must keep the special ids 0..4 first, got {ids[:5].tolist()}")
    return ids.astype(np.int64)


def trim_token_embedding(model, mapping: TrimResult | np.ndarray | Sequence[int] | str | os.PathLike):
    """A copy of an AlignModel with the token embedding cut to the kept pieces.

    The new model's config differs only in ``text.vocabulary_size`` (``len(old_ids)``); every
    weight is copied, the token embedding's row ``new_id`` from row ``old_ids[new_id]``. Its
    text embeddings of a sentence tokenized with the trimmed tokenizer equal the full model's of
    the same sentence tokenized with the full tokenizer whenever the pieces are the same (every
    sentence of the trim corpus). Optimizer state is not carried over.

    Args:
        model: an :class:`~malign.models.align_model.AlignModel`.
        mapping: a :class:`TrimResult`, the old ids, or a ``PREFIX.ids.npy`` path.

    Returns:
        The new AlignModel.

    Raises:
        ValueError: the ids are malformed or reach past the model's vocabulary.

    Example:
        >>> import malign
        >>> small = trim_token_embedding(malign.AlignModel.from_preset("tiny"), range(300))
        >>> small.vocabulary_size
        300
    """
    from malign.models.align_model import AlignModel

    ids = load_trim_ids(mapping)
    full_size = model.vocabulary_size
    if ids[-1] >= full_size:
        raise ValueError(f"trim ids reach id {int(ids[-1])}, past the model's vocabulary of "
                         f"{full_size}: the ids come from another tokenizer")
    if isinstance(mapping, TrimResult) and mapping.pieces_before != full_size:
        raise ValueError(f"the trim was made from a {mapping.pieces_before}-piece tokenizer, the "
                         f"model has a vocabulary of {full_size}: they do not belong together")
    config = model.model_config
    config = config.replace(text=config.text.replace(vocabulary_size=int(ids.size)))
    small = AlignModel(config, name=model.name, dtype=model.dtype_policy)
    embedding = model.text_tower.backbone.token_embedding.embeddings
    small_embedding = small.text_tower.backbone.token_embedding.embeddings
    old_weights, new_weights = model.weights, small.weights
    if len(old_weights) != len(new_weights):  # pragma: no cover - same config but one field
        raise RuntimeError("the trimmed model has a different set of weights")
    for old, new in zip(old_weights, new_weights):
        if old.path != new.path:  # pragma: no cover
            raise RuntimeError(f"weights out of order: {old.path} vs {new.path}")
        if old is embedding:
            if new is not small_embedding:  # pragma: no cover
                raise RuntimeError(f"the token embedding is not at {new.path} in the new model")
            new.assign(np.asarray(old.numpy())[ids])
        else:
            new.assign(old.numpy())
    return small
