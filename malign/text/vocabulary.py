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
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from malign import atomic_files
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
# A language tag: ISO 639-1 (2 letters) or ISO 639-3 (3 letters, for languages without a
# 2-letter code) in lower case, optionally with a script ("Hans") or a region ("BR", "419").
_TAG_RE = re.compile(r"^([A-Za-z]{2,3})(?:-([A-Za-z]{4}|[A-Za-z]{2}|[0-9]{3}))?$")
#: The form of a language code, for error messages.
LANGUAGE_CODE_FORM = (
    "an ISO 639-1 code in lower case such as en, de, fr, zh, or a three-letter ISO 639-3 code "
    "such as yue for a language without one, optionally with a script or region: zh-Hans, pt-BR"
)
# Names people write instead of codes; only used to suggest the code in an error.
_LANGUAGE_NAMES = {
    "arabic": "ar", "chinese": "zh", "czech": "cs", "čeština": "cs", "danish": "da", "deutsch": "de",
    "dutch": "nl", "english": "en", "español": "es", "finnish": "fi", "français": "fr", "francais": "fr",
    "french": "fr", "german": "de", "greek": "el", "hebrew": "he", "hindi": "hi", "hungarian": "hu",
    "indonesian": "id", "italian": "it", "japanese": "ja", "korean": "ko", "norwegian": "no",
    "persian": "fa", "polish": "pl", "portuguese": "pt", "romanian": "ro", "russian": "ru",
    "spanish": "es", "swedish": "sv", "thai": "th", "turkish": "tr", "ukrainian": "uk",
    "vietnamese": "vi",
}


def language_code_problem(code: str) -> str | None:
    """What is wrong with a language code, or None when it is a valid one.

    Valid: an ISO 639-1 code (``en``; checked against the list), or three lower-case letters
    (an ISO 639-3 code such as ``yue``; not checked against a list), optionally followed by
    ``-Script`` (4 letters) or ``-REGION`` (2 letters or 3 digits).

    Args:
        code: the candidate.

    Returns:
        A sentence naming the fault, or None.

    Example:
        >>> language_code_problem("zh-Hans") is None
        True
        >>> language_code_problem("english")
        "'english' is a language name, not a code: use en"
    """
    if not code:
        return "the language code is empty"
    named = _LANGUAGE_NAMES.get(code.casefold())
    if named:
        return f"{code!r} is a language name, not a code: use {named}"
    match = _TAG_RE.match(code)
    if not match:
        return f"{code!r} is not a language code"
    primary = match.group(1)
    if primary != primary.lower():
        fixed = primary.lower() + code[len(primary):]
        if language_code_problem(fixed) is None:
            return f"{code!r}: write the language in lower case: {fixed}"
        return f"{code!r} is not a language code"
    if len(primary) == 2 and primary not in ISO_639_1:
        return f"{code!r} is not an ISO 639-1 language code"
    return None


def check_language_code(code: str, where: str = "") -> str:
    """Returns ``code`` when it is a valid language code, else raises naming the fault.

    Args:
        code: the candidate (see :func:`language_code_problem`).
        where: a prefix for the message, e.g. the input or ``file:line``.

    Raises:
        ValueError: naming the code, what is wrong and the expected form.

    Example:
        >>> check_language_code("pt-BR")
        'pt-BR'
    """
    problem = language_code_problem(code)
    if problem:
        raise ValueError(f"{where}{problem}; expected {LANGUAGE_CODE_FORM}")
    return code


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


def _name_hint(path: str) -> str:
    """Why no language was found in a file name, when a part of it nearly is one."""
    for part in reversed([p for p in re.split(r"[._]", Path(path).name) if p]):
        if part.casefold() in _LANGUAGE_NAMES or (_TAG_RE.match(part) and part != part.lower()):
            problem = language_code_problem(part)
            if problem:
                return f" ({problem})"
    return ""


def _looks_like_lang_assignment(spec: str) -> bool:
    """``LANG=PATH``: an '=' whose left side is a bare word (no directory, no extension)."""
    left, sep, _ = spec.partition("=")
    return bool(sep) and not os.path.exists(spec) and not re.search(r"[/\\.\s]", left)


def parse_input(spec: str | os.PathLike | InputFile) -> InputFile:
    """Turns a command-line input into an :class:`InputFile`.

    ``LANG=PATH`` names the language explicitly; ``*.tsv`` / ``*.tsv.gz`` files hold
    ``lang<TAB>text`` lines; any other file takes its language from its name. Language
    codes are checked (:func:`language_code_problem`); the file itself is checked by
    :func:`check_input_file`.

    Args:
        spec: ``"de=corpus.txt"``, ``"mixed.tsv"`` or ``"train.fr.gz"`` (or an InputFile).

    Raises:
        ValueError: when the language is not a valid code, or cannot be found, naming the
            input and the expected form.

    Example:
        >>> parse_input("de=corpus.txt")
        InputFile(path='corpus.txt', lang='de')
        >>> parse_input("mixed.tsv").lang is None
        True
    """
    if isinstance(spec, InputFile):
        if spec.lang is not None:
            check_language_code(spec.lang, f"input {spec.path}: ")
        return spec
    spec = str(spec)
    if _looks_like_lang_assignment(spec):
        lang, _, path = spec.partition("=")
        check_language_code(lang, f"--input {spec!r}: ")
        if not path:
            raise ValueError(f"--input {spec!r}: no file after '='; expected LANG=PATH, e.g. de=corpus.txt")
        return InputFile(path=path, lang=lang)
    if spec.endswith(_TSV_SUFFIXES):
        return InputFile(path=spec, lang=None)
    lang = language_from_filename(spec)
    if lang is None:
        raise ValueError(
            f"cannot tell the language of {spec!r} from its name{_name_hint(spec)}; name it like "
            "'corpus.de.txt', pass it as 'de=PATH', or use a .tsv file of lang<TAB>text lines; "
            f"a language is {LANGUAGE_CODE_FORM}"
        )
    return InputFile(path=spec, lang=lang)


_GZIP_MAGIC = b"\x1f\x8b"


def check_input_file(item: InputFile) -> None:
    """Checks that an input is a readable, non-empty file, gzip-compressed when named ``.gz``.

    Args:
        item: the input.

    Raises:
        FileNotFoundError: when the path does not exist.
        ValueError: when it is a directory, not readable, empty, or its compression does
            not match its name, naming the path.

    Example:
        >>> check_input_file(InputFile("no/such/file.en.txt", "en"))
        Traceback (most recent call last):
        ...
        FileNotFoundError: vocabulary input not found: no/such/file.en.txt
    """
    path = item.path
    if not os.path.exists(path):
        raise FileNotFoundError(f"vocabulary input not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"vocabulary input {path} is a directory; pass the text files in it (e.g. {path}/*.txt)")
    if not os.path.isfile(path):
        raise ValueError(f"vocabulary input {path} is not a regular file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except OSError as error:
        raise ValueError(f"cannot read vocabulary input {path}: {error.strerror or error}") from None
    if not head:
        raise ValueError(f"vocabulary input {path} is empty (0 bytes)")
    if path.endswith(".gz") and head != _GZIP_MAGIC:
        raise ValueError(
            f"vocabulary input {path} is named .gz but is not gzip-compressed; rename it without .gz "
            "or compress it"
        )
    if not path.endswith(".gz") and head == _GZIP_MAGIC:
        raise ValueError(f"vocabulary input {path} is gzip-compressed; name it {path}.gz")


def check_inputs(inputs: Sequence[str | os.PathLike | InputFile]) -> list[InputFile]:
    """Parses and checks every input, reporting all faults at once.

    Args:
        inputs: as for :func:`train_vocabulary`.

    Returns:
        The parsed inputs.

    Raises:
        FileNotFoundError: when the only faults are missing files.
        ValueError: otherwise, one line per faulty input.

    Example:
        >>> check_inputs(["english=corpus.txt"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unusable vocabulary inputs (1 of 1):
          - --input 'english=corpus.txt': 'english' is a language name, not a code: use en; ...
          - vocabulary input not found: corpus.txt
    """
    if not inputs:
        raise ValueError("train_vocabulary needs at least one input file")
    files, problems, bad_inputs, missing_only = [], [], 0, True
    for spec in inputs:
        # Both the file and its language are checked, so that one run names every fault;
        # only a directory named without LANG= is not searched for a language.
        named = isinstance(spec, InputFile) or _looks_like_lang_assignment(str(spec))
        path = spec.path if isinstance(spec, InputFile) else (
            str(spec).partition("=")[2] if named else str(spec))
        here = []
        if path:
            try:
                check_input_file(InputFile(path, None))
            except FileNotFoundError as error:
                here.append(str(error))
            except ValueError as error:
                here.append(str(error))
                missing_only = False
        if named or not os.path.isdir(path):
            try:
                item = parse_input(spec)
            except ValueError as error:
                here.insert(0, str(error))
                missing_only = False
            else:
                if not here:
                    files.append(item)
        problems += here
        bad_inputs += bool(here)
    if problems:
        message = problems[0] if len(problems) == 1 else (
            f"unusable vocabulary inputs ({bad_inputs} of {len(inputs)}):\n  - " + "\n  - ".join(problems))
        raise (FileNotFoundError if missing_only else ValueError)(message)
    return files


def _open_text(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


#: Reasons a line is skipped, as counted by :func:`iter_sentences`.
SKIP_REASONS = ("invalid_utf8", "no_tab", "no_language")


def iter_sentences(
    inputs: Sequence[InputFile], skipped: dict[str, int] | None = None
) -> Iterator[tuple[str, str]]:
    """Yields ``(lang, sentence)`` for every non-empty, valid UTF-8 line of ``inputs``.

    Empty lines are passed over. Lines with invalid UTF-8, and ``lang<TAB>text`` lines
    without a tab or without a language, are skipped and counted in ``skipped`` (by the
    reasons of :data:`SKIP_REASONS`). A ``lang<TAB>text`` line whose language is not a
    valid code is an error, as is a damaged gzip stream.

    Args:
        inputs: the corpus files.
        skipped: a dict to count skipped lines in (updated in place), or None.

    Raises:
        ValueError: naming the file and line: an invalid language code, or a ``.gz``
            file that cannot be decompressed.

    Example:
        >>> list(iter_sentences([]))
        []
    """
    checked: set[str] = set()
    for item in inputs:
        lineno = 0
        try:
            with _open_text(item.path) as handle:
                for lineno, raw in enumerate(handle, start=1):
                    try:
                        line = raw.decode("utf-8").rstrip("\r\n")
                    except UnicodeDecodeError:
                        _count(skipped, "invalid_utf8")
                        continue
                    lang = item.lang
                    if lang is None:
                        if not line.strip():
                            continue
                        lang, sep, line = line.partition("\t")
                        lang = lang.strip()
                        if not sep:
                            _count(skipped, "no_tab")
                            continue
                        if not lang:
                            if line.strip():
                                _count(skipped, "no_language")
                            continue
                        if lang not in checked:
                            check_language_code(lang, f"{item.path}:{lineno}: ")
                            checked.add(lang)
                    line = line.strip()
                    if line:
                        yield lang, line
        except (OSError, EOFError, zlib.error) as error:
            if isinstance(error, FileNotFoundError):
                raise
            raise ValueError(
                f"cannot read {item.path} after line {lineno}: {error} (a damaged or truncated "
                "gzip file?)"
            ) from None


def _count(counts: dict[str, int] | None, key: str) -> None:
    if counts is not None:
        counts[key] = counts.get(key, 0) + 1


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


def _describe_skipped(skipped: dict[str, int]) -> str:
    names = {"invalid_utf8": "invalid UTF-8", "no_tab": "no tab in a lang<TAB>text file",
             "no_language": "text without a language"}
    return ", ".join(f"{n} {names[k]}" for k, n in skipped.items() if n)


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
    sentencepiece_log: bool | None = None,
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
        verbose: print progress.
        sentencepiece_log: show SentencePiece's own training log; by default only when
            the user asked for library logs (``malign -v``, ``MALIGN_VERBOSE=1``).
        **trainer_options: further ``SentencePieceTrainer`` options, e.g.
            ``max_sentence_length=8192``.

    Returns:
        The path of the ``.model`` file.

    Raises:
        FileNotFoundError: when input files are missing (all of them are named).
        ValueError: on an input whose language is missing or not a valid code, a directory,
            an empty or unreadable file, a ``.gz`` that is not gzip (or the reverse), a file
            without any sentence, or a bad option; checked before anything is written.

    Example:
        >>> train_vocabulary(["train.en.gz", "train.de.gz", "zh=zh.txt"], 32000, "vocab/m")
        ... # doctest: +SKIP
        PosixPath('vocab/m.model')
    """
    import sentencepiece as spm

    from malign.tf_logging import verbose as libraries_verbose

    show_log = libraries_verbose() if sentencepiece_log is None else sentencepiece_log
    files = check_inputs(inputs)
    if vocab_size <= NUM_RESERVED_IDS:
        raise ValueError(
            f"vocab_size must exceed {NUM_RESERVED_IDS} (5 special tokens + 256 byte pieces), "
            f"got {vocab_size}"
        )
    # Pass 1: count sentences per language; every file must give some.
    counts: dict[str, int] = {}
    skipped: dict[str, int] = {}
    with Progress("counting sentences", unit="lines", enabled=verbose) as progress:
        for item in files:
            found, skipped_here = 0, {}
            for lang, _ in iter_sentences([item], skipped_here):
                counts[lang] = counts.get(lang, 0) + 1
                found += 1
                progress.update()
            if not found:
                why = f" (skipped: {_describe_skipped(skipped_here)})" if skipped_here else ""
                raise ValueError(f"vocabulary input {item.path} holds no non-empty UTF-8 line to learn from{why}")
            for reason, n in skipped_here.items():
                skipped[reason] = skipped.get(reason, 0) + n
    total_sentences = sum(counts.values())
    if verbose and skipped:
        print(f"  skipped lines: {_describe_skipped(skipped)}", flush=True)
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
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
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
            model_prefix=os.path.join(tmp, "spm"),  # renamed into place when complete
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
            minloglevel=0 if show_log else 2,
            accept_language=",".join(sorted(counts)),
        )
        options.update(trainer_options)
        if verbose:
            print(
                f"training SentencePiece unigram, {vocab_size} pieces, on {sample_size} "
                "sentences" + (" (its log follows)" if show_log else " (its log: malign -v)"),
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
            if atomic_files.is_write_failure(error):
                raise atomic_files.WriteFailedError(f"{out_prefix}.model", error) from error
            raise
        for suffix in (".model", ".vocab"):
            with atomic_files.replacing(f"{out_prefix}{suffix}") as final:
                os.replace(os.path.join(tmp, "spm" + suffix), final)

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
        "skipped_lines": {reason: skipped.get(reason, 0) for reason in SKIP_REASONS},
        "sampled": targets,
        "special_tokens": SPECIAL_TOKENS,
        "trainer_options": {k: v for k, v in trainer_options.items()},
    }
    stats_path = out_prefix.with_name(out_prefix.name + ".stats.json")
    atomic_files.write_text(stats_path, json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    if verbose:
        print(f"wrote {model_path} ({processor.get_piece_size()} pieces) and {stats_path}")
    return model_path
