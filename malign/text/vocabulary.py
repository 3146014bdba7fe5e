"""Training the shared multilingual SentencePiece vocabulary.

The vocabulary is a SentencePiece *unigram* model with byte fallback (so no input is ever
unknown: a character outside the vocabulary becomes its UTF-8 bytes) and five special tokens
at fixed ids, the ones a BERT text tower needs:

=========  ==  ==========================================================
piece      id  SentencePiece role
=========  ==  ==========================================================
``[PAD]``  0   ``pad_id=0, pad_piece="[PAD]"``
``[UNK]``  1   ``unk_id=1, unk_piece="[UNK]"`` (unused with byte fallback)
``[CLS]``  2   control symbol
``[SEP]``  3   control symbol
``[MASK]`` 4   control symbol
=========  ==  ==========================================================

``bos``/``eos`` are disabled (the tokenizer layer adds ``[CLS]``/``[SEP]`` itself). The three
markers are *control* symbols rather than user-defined ones: both give ids 2, 3, 4, but a
user-defined symbol is also matched inside the text, so a caption containing the literal
string "[SEP]" would inject a separator. Control symbols never come out of the text.
The 256 byte pieces ``<0x00>``..``<0xFF>`` follow at ids 5..260.

Languages are balanced the way XLM-R balances them: a language with a share ``p`` of the
corpus's sentences is sampled with probability proportional to ``p ** alpha`` (``alpha=0.3``),
which up-samples low-resource languages (repeating their sentences when needed) and
down-samples the large ones.

Example:
    >>> path = train_vocabulary(["captions.en.txt", "captions.de.txt"], 1000, "out/vocab")
    ... # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from malign.data.progress import Progress

PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
#: The special tokens and their fixed ids in every vocabulary malign trains.
SPECIAL_TOKENS: dict[str, int] = {
    PAD_TOKEN: PAD_ID,
    UNK_TOKEN: UNK_ID,
    CLS_TOKEN: CLS_ID,
    SEP_TOKEN: SEP_ID,
    MASK_TOKEN: MASK_ID,
}
#: Number of ids before the first learned piece: 5 special tokens and 256 byte pieces.
NUM_RESERVED_IDS = len(SPECIAL_TOKENS) + 256

_TSV_SUFFIXES = (".tsv", ".tsv.gz")
# ISO 639-1 codes: a file name part is taken as a language only if it is one of these
# (optionally with a script or region, "zh-Hans", "pt-BR"), so that "foo.txt" or "dev.txt"
# are not mistaken for languages. Other codes can be given as LANG=PATH or in .tsv files.
ISO_639_1 = frozenset(
    """
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy
da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz
ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo
lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps
pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn
to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
""".split()
)
_LANG_RE = re.compile(r"^([a-z]{2})(?:-[A-Za-z]{2,4})?$")


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One text file of the vocabulary corpus.

    Args:
        path: the file; ``.gz`` files are decompressed on the fly.
        lang: the language of every line, or None for a ``lang<TAB>text`` file.
    """

    path: str
    lang: str | None


def language_from_filename(path: str | os.PathLike) -> str | None:
    """Guesses a language code from a file name such as ``train.de.gz`` or ``wiki_fr.txt``.

    The last dot- or underscore-separated part of the name that is an ISO 639-1 code
    (optionally followed by a script or region, such as ``zh-Hans``) wins.

    Args:
        path: a file path.

    Returns:
        The language code, or None when the name holds none.

    Example:
        >>> language_from_filename("data/task1/raw/train.cs.gz")
        'cs'
        >>> language_from_filename("corpus.txt") is None
        True
    """
    name = Path(path).name
    for part in reversed([p for p in re.split(r"[._]", name) if p]):
        match = _LANG_RE.match(part)
        if match and match.group(1) in ISO_639_1:
            return part
    return None


def parse_input(spec: str | os.PathLike | InputFile) -> InputFile:
    """Turns a command-line input into an :class:`InputFile`.

    ``LANG=PATH`` names the language explicitly; ``*.tsv`` / ``*.tsv.gz`` files hold
    ``lang<TAB>text`` lines; any other file takes its language from its name.

    Args:
        spec: ``"de=corpus.txt"``, ``"mixed.tsv"`` or ``"train.fr.gz"`` (or an InputFile).

    Raises:
        ValueError: when no language can be found, naming the file.

    Example:
        >>> parse_input("de=corpus.txt")
        InputFile(path='corpus.txt', lang='de')
        >>> parse_input("mixed.tsv").lang is None
        True
    """
    if isinstance(spec, InputFile):
        return spec
    spec = str(spec)
    match = re.match(r"^([A-Za-z]{2,3}(?:-[A-Za-z]{2,4})?)=(.+)$", spec)
    if match:
        return InputFile(path=match.group(2), lang=match.group(1))
    if spec.endswith(_TSV_SUFFIXES):
        return InputFile(path=spec, lang=None)
    lang = language_from_filename(spec)
    if lang is None:
        raise ValueError(
            f"cannot tell the language of {spec!r} from its name; name it like "
            "'corpus.de.txt', pass it as 'de=PATH', or use a .tsv file of lang<TAB>text lines"
        )
    return InputFile(path=spec, lang=lang)


def _open_text(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def iter_sentences(inputs: Sequence[InputFile]) -> Iterator[tuple[str, str]]:
    """Yields ``(lang, sentence)`` for every non-empty, valid UTF-8 line of ``inputs``.

    Lines with invalid UTF-8, empty lines and malformed ``lang<TAB>text`` lines are skipped.

    Args:
        inputs: the corpus files.

    Example:
        >>> list(iter_sentences([]))
        []
    """
    for item in inputs:
        with _open_text(item.path) as handle:
            for raw in handle:
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    continue
                lang = item.lang
                if lang is None:
                    lang, sep, line = line.partition("\t")
                    lang = lang.strip()
                    if not sep or not lang:
                        continue
                line = line.strip()
                if line:
                    yield lang, line


def balanced_sample_sizes(
    counts: dict[str, int], alpha: float = 0.3, total: int | None = None
) -> dict[str, int]:
    """How many sentences to draw from each language under ``p ** alpha`` sampling.

    Args:
        counts: sentences available per language.
        alpha: the smoothing exponent; 1 keeps the natural distribution, 0 makes it uniform.
        total: the size of the sample; defaults to the sum of ``counts``.

    Returns:
        Sentences per language; they sum to ``total`` (up to rounding).

    Example:
        >>> balanced_sample_sizes({"en": 900, "cs": 100}, alpha=0.0)
        {'en': 500, 'cs': 500}
        >>> balanced_sample_sizes({"en": 900, "cs": 100}, alpha=1.0)
        {'en': 900, 'cs': 100}
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    counts = {k: v for k, v in counts.items() if v > 0}
    if not counts:
        return {}
    n = sum(counts.values())
    total = n if total is None else int(total)
    weights = {k: (v / n) ** alpha for k, v in counts.items()}
    norm = sum(weights.values())
    return {k: int(round(total * w / norm)) for k, w in weights.items()}


def _line_multiplicities(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``n`` lines enters a sample of ``m``: all ``m // n`` times, plus once
    more for a random ``m % n`` of them (i.e. sampling without replacement when m <= n)."""
    reps = np.full(n, m // n, dtype=np.int32)
    extra = rng.choice(n, size=m % n, replace=False)
    reps[extra] += 1
    return reps


def train_vocabulary(
    inputs: Sequence[str | os.PathLike | InputFile],
    vocab_size: int,
    out_prefix: str | os.PathLike,
    alpha: float = 0.3,
    sample_size: int | None = None,
    max_sample_size: int = 10_000_000,
    character_coverage: float = 0.9995,
    seed: int = 0,
    num_threads: int | None = None,
    verbose: bool = True,
    **trainer_options: object,
) -> Path:
    """Trains a SentencePiece unigram vocabulary with language-balanced sampling.

    Writes ``{out_prefix}.model``, ``{out_prefix}.vocab`` and ``{out_prefix}.stats.json``
    (sentences per language before and after sampling, the options used). The special tokens
    get the ids in :data:`SPECIAL_TOKENS`; this is checked after training.

    Args:
        inputs: text files, one sentence a line (``.gz`` allowed), as accepted by
            :func:`parse_input`: the language comes from the file name, ``LANG=PATH``,
            or ``lang<TAB>text`` lines in ``.tsv`` files.
        vocab_size: the number of pieces, special tokens and the 256 byte pieces included.
        out_prefix: the output path without extension.
        alpha: language sampling exponent (XLM-R: 0.3).
        sample_size: sentences to train on after balancing; defaults to the corpus size
            capped at ``max_sample_size``.
        max_sample_size: the cap on the default sample size.
        character_coverage: share of characters covered by single-character pieces; the
            rest fall back to bytes.
        seed: seeds the language sampling and SentencePiece's own sampling.
        num_threads: trainer threads; defaults to the number of CPUs.
        verbose: print progress (and SentencePiece's training log).
        **trainer_options: further ``SentencePieceTrainer`` options, e.g.
            ``max_sentence_length=8192``.

    Returns:
        The path of the ``.model`` file.

    Raises:
        ValueError: on an empty corpus, a bad option, or a language without a name.

    Example:
        >>> train_vocabulary(["train.en.gz", "train.de.gz", "zh=zh.txt"], 32000, "vocab/m")
        ... # doctest: +SKIP
        PosixPath('vocab/m.model')
    """
    import sentencepiece as spm

    files = [parse_input(x) for x in inputs]
    if not files:
        raise ValueError("train_vocabulary needs at least one input file")
    for item in files:
        if not os.path.exists(item.path):
            raise FileNotFoundError(f"vocabulary input not found: {item.path}")
    if vocab_size <= NUM_RESERVED_IDS:
        raise ValueError(
            f"vocab_size must exceed {NUM_RESERVED_IDS} (5 special tokens + 256 byte pieces), "
            f"got {vocab_size}"
        )
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)

    # Pass 1: count sentences per language.
    counts: dict[str, int] = {}
    with Progress("counting sentences", unit="lines", enabled=verbose) as progress:
        for lang, _ in iter_sentences(files):
            counts[lang] = counts.get(lang, 0) + 1
            progress.update()
    total_sentences = sum(counts.values())
    if total_sentences == 0:
        raise ValueError("the vocabulary corpus holds no non-empty UTF-8 lines")
    if sample_size is None:
        sample_size = min(total_sentences, max_sample_size)
    targets = balanced_sample_sizes(counts, alpha, sample_size)
    rng = np.random.default_rng(seed)
    reps = {lang: _line_multiplicities(counts[lang], targets[lang], rng) for lang in counts}
    if verbose:
        for lang in sorted(counts, key=counts.get, reverse=True):
            print(
                f"  {lang}: {counts[lang]} sentences ({100 * counts[lang] / total_sentences:.1f}%)"
                f" -> {targets[lang]} sampled ({100 * targets[lang] / max(sample_size, 1):.1f}%)",
                flush=True,
            )

    # Pass 2: write the balanced sample, then train on it.
    with tempfile.TemporaryDirectory(prefix="malign-vocab-", dir=out_prefix.parent) as tmp:
        sample_path = os.path.join(tmp, "sample.txt")
        seen = dict.fromkeys(counts, 0)
        with open(sample_path, "w", encoding="utf-8") as out, Progress(
            "sampling", total=total_sentences, unit="lines", enabled=verbose
        ) as progress:
            for lang, line in iter_sentences(files):
                k = reps[lang][seen[lang]]
                seen[lang] += 1
                if k:
                    out.write((line.replace("\n", " ") + "\n") * int(k))
                progress.update()
        options: dict[str, object] = dict(
            input=sample_path,
            model_prefix=str(out_prefix),
            model_type="unigram",
            vocab_size=vocab_size,
            character_coverage=character_coverage,
            byte_fallback=True,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            eos_id=-1,
            pad_piece=PAD_TOKEN,
            unk_piece=UNK_TOKEN,
            control_symbols=[CLS_TOKEN, SEP_TOKEN, MASK_TOKEN],
            input_sentence_size=0,  # the sample above is the training set
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=0 if verbose else 2,
            accept_language=",".join(sorted(counts)),
        )
        options.update(trainer_options)
        if verbose:
            print(
                f"training SentencePiece unigram, {vocab_size} pieces, on {sample_size} "
                "sentences (its log follows)",
                flush=True,
            )
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(**options)
        except RuntimeError as error:
            message = str(error).split("] ")[-1]
            if "Vocabulary size too high" in message:
                raise ValueError(
                    f"vocab_size {vocab_size} is too large for this corpus (SentencePiece: "
                    f"{message})"
                ) from error
            if "smaller than required_chars" in message:
                raise ValueError(
                    f"vocab_size {vocab_size} is too small for the characters of this corpus "
                    f"(SentencePiece: {message})"
                ) from error
            raise

    model_path = out_prefix.with_name(out_prefix.name + ".model")
    processor = spm.SentencePieceProcessor(model_file=str(model_path))
    wrong = {p: processor.piece_to_id(p) for p, i in SPECIAL_TOKENS.items()
             if processor.piece_to_id(p) != i}
    if wrong:  # pragma: no cover - guards against a SentencePiece behaviour change
        raise RuntimeError(f"special tokens at unexpected ids after training: {wrong}")
    stats = {
        "vocab_size": vocab_size,
        "alpha": alpha,
        "seed": seed,
        "character_coverage": character_coverage,
        "inputs": [dataclasses.asdict(f) for f in files],
        "sentences": counts,
        "sampled": targets,
        "special_tokens": SPECIAL_TOKENS,
        "trainer_options": {k: v for k, v in trainer_options.items()},
    }
    stats_path = out_prefix.with_name(out_prefix.name + ".stats.json")
    stats_path.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    if verbose:
        print(f"wrote {model_path} ({processor.get_piece_size()} pieces) and {stats_path}")
    return model_path
