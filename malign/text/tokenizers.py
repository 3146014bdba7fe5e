"""In-graph tokenizer layers: strings in, ``{"token_ids", "padding_mask"}`` out.

Both layers produce what the BERT text tower consumes: ``[CLS] pieces... [SEP]`` truncated or
padded to ``sequence_length``, as int32 ``token_ids`` and an int32 0/1 ``padding_mask`` (not
bool: Keras ``fit`` under a distribution strategy cannot average bool tensors). They run in
eager mode, inside ``tf.function`` and inside ``tf.data`` pipelines, and save with a model:

- :class:`SentencePieceTokenizer` wraps tensorflow-text's SentencePiece op. The model proto is
  an asset of the ``.keras`` archive and a constant of a SavedModel, so neither needs a file
  beside it. Its ids equal the Python ``sentencepiece`` package's ids for the same text.
- :class:`WordPieceTokenizer` is BERT's tokenizer for WordPiece vocabularies such as the
  English one of ``kakaobrain/align-base``: BERT's text cleaning and normalization
  (:mod:`malign.text.bert_normalization`) and tensorflow-text's WordPiece op. Its ids equal
  those of the checkpoint's ``tokenizer.json`` run by HuggingFace ``tokenizers``.

Example:
    >>> import malign
    >>> tokenizer = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), 8)
    >>> out = tokenizer(["two red circles"])
    >>> out["token_ids"].shape, out["padding_mask"].dtype
    (TensorShape([1, 8]), tf.int32)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from malign.text import bert_normalization
from malign.text.bert_normalization import DEFAULT_ADDED_TOKENS
from malign.text.vocabulary import CLS_TOKEN, MASK_TOKEN, PAD_TOKEN, SEP_TOKEN, UNK_TOKEN

_SPECIAL_NAMES = {
    "cls": CLS_TOKEN,
    "sep": SEP_TOKEN,
    "pad": PAD_TOKEN,
    "mask": MASK_TOKEN,
    "unk": UNK_TOKEN,
}


class _PackedTokenizer(keras.layers.Layer):
    """Common packing logic: ragged ids -> ``[CLS] ids [SEP]`` padded to ``sequence_length``.

    Subclasses implement ``_tokenize(strings) -> tf.RaggedTensor`` (rank-1 strings in, int32
    ragged ids out) and ``_detokenize(ragged_ids) -> strings`` and call
    ``_set_special_ids(dict)`` when they get a vocabulary.
    """

    def __init__(self, sequence_length: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        sequence_length = int(sequence_length)
        if sequence_length < 2:
            raise ValueError(
                f"sequence_length must be at least 2 (room for [CLS] and [SEP]), "
                f"got {sequence_length}"
            )
        self._sequence_length = sequence_length
        self._special_ids: dict[str, int] | None = None
        self._vocabulary_size: int | None = None
        # Strings are not backend tensors: take inputs as they come, like keras-hub does.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self.built = True

    # -- properties ---------------------------------------------------------------------
    @property
    def sequence_length(self) -> int:
        """Length of every output row, ``[CLS]`` and ``[SEP]`` included."""
        return self._sequence_length

    def _special(self, name: str) -> int:
        self._check_ready()
        return self._special_ids[name]  # type: ignore[index]

    @property
    def cls_token_id(self) -> int:
        """Id of ``[CLS]``, the first token of every row."""
        return self._special("cls")

    @property
    def sep_token_id(self) -> int:
        """Id of ``[SEP]``, the token after the last piece."""
        return self._special("sep")

    @property
    def pad_token_id(self) -> int:
        """Id of ``[PAD]``, filling rows up to ``sequence_length``."""
        return self._special("pad")

    @property
    def mask_token_id(self) -> int:
        """Id of ``[MASK]``."""
        return self._special("mask")

    @property
    def unk_token_id(self) -> int:
        """Id of ``[UNK]``."""
        return self._special("unk")

    @property
    def vocabulary_size(self) -> int:
        """Number of ids; the text tower's embedding table needs this many rows."""
        self._check_ready()
        return int(self._vocabulary_size)  # type: ignore[arg-type]

    # -- vocabulary checks --------------------------------------------------------------
    def _set_special_ids(self, ids: dict[str, int | None], vocabulary_size: int, source: str):
        missing = [_SPECIAL_NAMES[k] for k, v in ids.items() if v is None]
        if missing:
            raise ValueError(
                f"{type(self).__name__}: the vocabulary {source} lacks the special token(s) "
                f"{', '.join(missing)}; the text tower needs [CLS], [SEP], [PAD], [MASK] and "
                "[UNK]. Train a vocabulary with `malign tokenizer train` (see "
                "tokenizers/README.md), which puts them at ids 0-4."
            )
        self._special_ids = {k: int(v) for k, v in ids.items()}  # type: ignore[arg-type]
        self._vocabulary_size = int(vocabulary_size)

    def _check_ready(self) -> None:
        if self._special_ids is None:
            raise ValueError(
                f"{type(self).__name__} has no vocabulary: pass one to the constructor, or "
                "load the layer from a .keras file (the vocabulary is one of its assets)."
            )

    # -- tokenization -------------------------------------------------------------------
    def _tokenize(self, strings: tf.Tensor) -> tf.RaggedTensor:
        raise NotImplementedError

    def _detokenize(self, ids: tf.RaggedTensor) -> tf.Tensor:
        raise NotImplementedError

    def call(self, inputs: Any) -> dict[str, tf.Tensor]:
        """Tokenizes a batch of UTF-8 strings.

        Args:
            inputs: a string tensor, list or array of rank 1 (a batch), rank 0 (one text),
                or rank 2 with a last dimension of 1 (e.g. ``keras.Input(shape=(1,))``).

        Returns:
            ``{"token_ids": int32 [B, L], "padding_mask": int32 [B, L]}`` (``[L]`` for a
            scalar input), ``L = sequence_length``.
        """
        self._check_ready()
        strings = tf.convert_to_tensor(inputs, dtype=tf.string)
        rank = strings.shape.rank
        if rank == 0:
            out = self.call(tf.expand_dims(strings, 0))
            return {k: v[0] for k, v in out.items()}
        if rank == 2 and strings.shape[-1] == 1:
            strings = tf.squeeze(strings, -1)
        elif rank != 1:
            raise ValueError(
                f"{type(self).__name__} takes a rank-1 batch of strings (or a scalar, or "
                f"shape [B, 1]); got shape {strings.shape}"
            )
        length = self._sequence_length
        ids = self._tokenize(strings)[:, : length - 2]
        batch = ids.nrows()
        cls = tf.fill([batch, 1], tf.constant(self.cls_token_id, tf.int32))
        sep = tf.fill([batch, 1], tf.constant(self.sep_token_id, tf.int32))
        packed = tf.concat(
            [tf.RaggedTensor.from_tensor(cls), ids, tf.RaggedTensor.from_tensor(sep)], axis=1
        )
        token_ids = packed.to_tensor(default_value=self.pad_token_id, shape=[None, length])
        mask = tf.sequence_mask(packed.row_lengths(), length, dtype=tf.int32)
        static = [strings.shape[0], length]
        token_ids = tf.ensure_shape(token_ids, static)
        mask = tf.ensure_shape(mask, static)
        return {"token_ids": token_ids, "padding_mask": mask}

    def tokenize(self, inputs: Any) -> tf.RaggedTensor:
        """Returns the ragged piece ids of a batch of strings, without special tokens.

        Args:
            inputs: a rank-1 batch of strings.

        Example:
            >>> import malign
            >>> tok = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path())
            >>> tok.tokenize(["a dog"]).shape.rank
            2
        """
        self._check_ready()
        return self._tokenize(tf.convert_to_tensor(inputs, dtype=tf.string))

    def detokenize(self, token_ids: Any) -> tf.Tensor:
        """Turns ``token_ids`` [B, L] back into strings, dropping ``[CLS]``/``[SEP]``/``[PAD]``.

        Args:
            token_ids: int ids as produced by calling the layer.

        Returns:
            A string tensor [B].

        Example:
            >>> import malign
            >>> tok = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), 16)
            >>> tok.detokenize(tok(["a red square"])["token_ids"]).numpy()
            array([b'a red square'], dtype=object)
        """
        self._check_ready()
        ids = tf.cast(tf.convert_to_tensor(token_ids), tf.int32)
        keep = (
            tf.not_equal(ids, self.cls_token_id)
            & tf.not_equal(ids, self.sep_token_id)
            & tf.not_equal(ids, self.pad_token_id)
        )
        return self._detokenize(tf.ragged.boolean_mask(ids, keep))

    def compute_output_spec(self, inputs: Any) -> dict[str, keras.KerasTensor]:
        shape = tuple(getattr(inputs, "shape", ()) or ())
        batch_shape = () if len(shape) == 0 else (shape[0],)
        out_shape = batch_shape + (self._sequence_length,)
        return {
            "token_ids": keras.KerasTensor(out_shape, dtype="int32"),
            "padding_mask": keras.KerasTensor(out_shape, dtype="int32"),
        }

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["sequence_length"] = self._sequence_length
        return config


def _read_bytes(path: str | os.PathLike) -> bytes:
    with tf.io.gfile.GFile(os.fspath(path), "rb") as handle:
        return handle.read()


@keras.saving.register_keras_serializable(package="malign")
class SentencePieceTokenizer(_PackedTokenizer):
    """Tokenizes strings with a SentencePiece model inside the TensorFlow graph.

    Output rows are ``[CLS] pieces... [SEP] [PAD]...`` of length ``sequence_length``; text
    longer than ``sequence_length - 2`` pieces is truncated (``[SEP]`` is always kept). At
    construction the model must contain ``[CLS]``, ``[SEP]``, ``[PAD]``, ``[MASK]`` and
    ``[UNK]``, or a ValueError says which are missing. Vocabularies from
    :func:`malign.text.train_vocabulary` have them at ids 0-4.

    Args:
        proto: the SentencePiece model: a path (local or any ``tf.io.gfile`` URL such as
            ``gs://``), or the serialized model bytes. None only when the layer is being
            loaded from a ``.keras`` file (the proto is then read from its assets).
        sequence_length: length of every output row.
        **kwargs: keras Layer arguments (``name``...).

    Example:
        >>> import malign
        >>> tok = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), 6)
        >>> ids = tok(["zwei rote Kreise", ""])["token_ids"].numpy()
        >>> ids[1].tolist() == [tok.cls_token_id, tok.sep_token_id, 0, 0, 0, 0]
        True
    """

    ASSET_FILENAME = "sentencepiece.model"

    def __init__(
        self,
        proto: str | os.PathLike | bytes | None = None,
        sequence_length: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(sequence_length=sequence_length, **kwargs)
        self._proto: bytes | None = None
        self._tf_tokenizer = None
        if proto is not None:
            self.set_proto(proto)

    @property
    def proto(self) -> bytes:
        """The serialized SentencePiece model."""
        self._check_ready()
        return self._proto  # type: ignore[return-value]

    def set_proto(self, proto: str | os.PathLike | bytes) -> None:
        """Loads a SentencePiece model and checks its special tokens.

        Args:
            proto: a path to a ``.model`` file or the serialized model bytes.
        """
        import sentencepiece as spm
        import tensorflow_text as tf_text

        if isinstance(proto, (bytes, bytearray)):
            data, source = bytes(proto), "given as bytes"
        elif isinstance(proto, (str, os.PathLike)):
            if not tf.io.gfile.exists(os.fspath(proto)):
                raise FileNotFoundError(f"SentencePiece model not found: {os.fspath(proto)}")
            data, source = _read_bytes(proto), os.fspath(proto)
        else:
            raise TypeError(
                f"proto must be a path or the model's bytes, got {type(proto).__name__}"
            )
        try:
            processor = spm.SentencePieceProcessor(model_proto=data)
        except Exception as error:  # sentencepiece raises RuntimeError/OSError variants
            raise ValueError(f"not a SentencePiece model: {source} ({error})") from error
        size = processor.get_piece_size()

        def lookup(piece: str) -> int | None:
            i = processor.piece_to_id(piece)
            return i if 0 <= i < size and processor.id_to_piece(i) == piece else None

        ids = {name: lookup(piece) for name, piece in _SPECIAL_NAMES.items()}
        if ids["unk"] is not None and ids["unk"] != processor.unk_id():
            ids["unk"] = None  # "[UNK]" exists but is not the model's unknown piece
        self._set_special_ids(ids, size, source)
        self._proto = data
        self._tf_tokenizer = tf_text.SentencepieceTokenizer(model=data, out_type=tf.int32)

    def _tokenize(self, strings: tf.Tensor) -> tf.RaggedTensor:
        return self._tf_tokenizer.tokenize(strings)

    def _detokenize(self, ids: tf.RaggedTensor) -> tf.Tensor:
        return self._tf_tokenizer.detokenize(ids)

    def id_to_token(self, token_id: int) -> str:
        """Returns the piece of an id (e.g. ``id_to_token(2) == "[CLS]"``).

        Args:
            token_id: an id below ``vocabulary_size``.
        """
        import sentencepiece as spm

        return spm.SentencePieceProcessor(model_proto=self.proto).id_to_piece(int(token_id))

    def save_assets(self, dir_path: str) -> None:
        with open(os.path.join(dir_path, self.ASSET_FILENAME), "wb") as handle:
            handle.write(self.proto)

    def load_assets(self, dir_path: str) -> None:
        self.set_proto(_read_bytes(os.path.join(dir_path, self.ASSET_FILENAME)))


@keras.saving.register_keras_serializable(package="malign")
class WordPieceTokenizer(_PackedTokenizer):
    """BERT WordPiece tokenization with BERT's text rules, in the TensorFlow graph.

    For the English WordPiece vocabulary of the released ``kakaobrain/align-base``
    checkpoint and other BERT vocabularies. The ids are those of the checkpoint's
    ``tokenizer.json`` as HuggingFace ``tokenizers`` computes them (see
    :mod:`malign.text.bert_normalization`): the added tokens (``[CLS]``, ``[MASK]``...) written
    in the text are kept whole (case-sensitive, before normalization); the rest is cleaned
    (NUL, control and format characters such as BEL, soft hyphen and zero-width space deleted;
    every Unicode whitespace made a space), CJK ideographs become words of their own, accents
    are stripped and text lowercased (uncased BERT), and the words split at whitespace and
    punctuation go through greedy longest-match WordPiece (a word of more than 100 characters,
    or one with no split into the vocabulary, is ``[UNK]``). Text must be valid UTF-8 (an
    InvalidArgumentError names the bad positions). The ids of ``[CLS]``, ``[SEP]``, ``[PAD]``,
    ``[MASK]`` and ``[UNK]`` come from the vocabulary; all five must be in it.

    Args:
        vocabulary: a path to a ``vocab.txt`` (one token a line, line number = id) or a
            list of tokens. None only while loading from a ``.keras`` file.
        sequence_length: length of every output row.
        lowercase: lowercase the text (True for uncased BERT).
        strip_accents: delete accents (NFD, then non-spacing marks); None: as ``lowercase``,
            like ``tokenizers``' ``"strip_accents": null``.
        added_tokens: tokens matched whole in the raw text, before normalization (the
            ``added_tokens`` of ``tokenizer.json`` with ``"normalized": false``); each must be
            in the vocabulary. None: BERT's five special tokens.
        **kwargs: keras Layer arguments.

    Raises:
        ValueError: a special or added token is missing from the vocabulary, or an added
            token is empty or holds a character that cleaning deletes (NUL, U+FFFD).

    Example:
        >>> vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "##s"]
        >>> tok = WordPieceTokenizer(vocab, sequence_length=7)
        >>> tok(["A dogs", "a\\u00a0[MASK]\\u200bdog"])["token_ids"].numpy().tolist()
        [[2, 5, 6, 7, 3, 0, 0], [2, 5, 4, 6, 3, 0, 0]]
    """

    ASSET_FILENAME = "vocabulary.txt"
    MAX_INPUT_CHARS_PER_WORD = 100
    """Longer words are ``[UNK]`` (``max_input_chars_per_word`` of BERT's WordPiece)."""

    def __init__(
        self,
        vocabulary: str | os.PathLike | Sequence[str] | None = None,
        sequence_length: int = 64,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        added_tokens: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(sequence_length=sequence_length, **kwargs)
        self._lowercase = bool(lowercase)
        self._strip_accents = None if strip_accents is None else bool(strip_accents)
        if isinstance(added_tokens, str):
            raise TypeError(f"added_tokens must be a list of tokens, got the string {added_tokens!r}")
        self._added_tokens = (DEFAULT_ADDED_TOKENS if added_tokens is None
                              else tuple(str(t) for t in added_tokens))
        self._added_ids: tuple[int, ...] = ()
        self._vocabulary: list[str] | None = None
        self._fast_wordpiece = None
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)

    @property
    def lowercase(self) -> bool:
        """Whether text is lowercased before WordPiece."""
        return self._lowercase

    @property
    def strip_accents(self) -> bool:
        """Whether accents are stripped (NFD, then non-spacing marks deleted)."""
        return self._lowercase if self._strip_accents is None else self._strip_accents

    @property
    def added_tokens(self) -> tuple[str, ...]:
        """The tokens matched whole in the raw text."""
        return self._added_tokens

    @property
    def vocabulary(self) -> list[str]:
        """The tokens, index = id."""
        self._check_ready()
        return list(self._vocabulary)  # type: ignore[arg-type]

    def set_vocabulary(self, vocabulary: str | os.PathLike | Sequence[str]) -> None:
        """Loads a WordPiece vocabulary and checks its special and added tokens.

        Args:
            vocabulary: a ``vocab.txt`` path or a list of tokens.
        """
        import tensorflow_text as tf_text

        if isinstance(vocabulary, (str, os.PathLike)):
            source = os.fspath(vocabulary)
            if not tf.io.gfile.exists(source):
                raise FileNotFoundError(f"WordPiece vocabulary not found: {source}")
            try:
                text = _read_bytes(source).decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"WordPiece vocabulary {source} is not UTF-8 text (byte "
                                 f"{error.start}); it is damaged or not a vocab.txt") from None
            tokens = vocabulary_lines(text)
        else:
            source, tokens = "given as a list", [str(t) for t in vocabulary]
        index = {}
        for i, token in enumerate(tokens):
            index.setdefault(token, i)
        ids = {name: index.get(piece) for name, piece in _SPECIAL_NAMES.items()}
        self._set_special_ids(ids, len(tokens), source)
        bad = [t for t in self._added_tokens if not t or "\x00" in t or "\ufffd" in t]
        if bad:
            raise ValueError(f"WordPieceTokenizer: added tokens must be non-empty and hold no NUL or "
                             f"U+FFFD (text cleaning deletes them); got {bad}")
        missing = [t for t in self._added_tokens if t not in index]
        if missing:
            raise ValueError(f"WordPieceTokenizer: the added token(s) {', '.join(missing)} are not in "
                             f"the vocabulary {source}")
        self._added_ids = tuple(index[t] for t in self._added_tokens)
        self._vocabulary = tokens
        # Words are split by bert_normalization.pre_tokenize; the length limit is applied in
        # characters in _tokenize (the op counts bytes: 4 per character at most).
        self._fast_wordpiece = tf_text.FastWordpieceTokenizer(
            vocab=tokens, suffix_indicator="##", unknown_token=UNK_TOKEN,
            max_bytes_per_word=4 * self.MAX_INPUT_CHARS_PER_WORD, token_out_type=tf.int32,
            no_pretokenization=True, support_detokenization=True)

    def _tokenize(self, strings: tf.Tensor) -> tf.RaggedTensor:
        strings = bert_normalization.check_utf8(strings, f"{type(self).__name__} input")
        pieces = bert_normalization.split_added_tokens(strings, self._added_tokens)  # [B, P]
        piece = pieces.flat_values
        if self._added_tokens:
            matches = tf.equal(piece[:, None], tf.constant(self._added_tokens)[None, :])
            is_added = tf.reduce_any(matches, axis=1)
            added_id = tf.reduce_sum(tf.where(matches, tf.constant(self._added_ids, tf.int32), 0), axis=1)
        else:
            is_added = tf.zeros_like(piece, dtype=tf.bool)
            added_id = tf.zeros_like(piece, dtype=tf.int32)
        text = tf.where(is_added, "", piece)
        text = bert_normalization.normalize(text, lowercase=self._lowercase,
                                            strip_accents=self.strip_accents)
        words = bert_normalization.pre_tokenize(text)  # [pieces, W]
        word = words.flat_values
        too_long = tf.strings.length(word, unit="UTF8_CHAR") > self.MAX_INPUT_CHARS_PER_WORD
        word_ids = self._fast_wordpiece.tokenize(word)  # [words, K]
        keep = word_ids.with_flat_values(tf.gather(tf.logical_not(too_long), word_ids.value_rowids()))
        word_ids = tf.concat([_one_id_where(too_long, self.unk_token_id, word_ids.row_splits.dtype),
                              tf.ragged.boolean_mask(word_ids, keep)], axis=1)
        text_ids = words.with_flat_values(word_ids).merge_dims(1, 2)  # [pieces, T]
        piece_ids = tf.concat(
            [_one_id_where(is_added, added_id, text_ids.row_splits.dtype), text_ids], axis=1)
        return pieces.with_flat_values(piece_ids).merge_dims(1, 2)

    def _detokenize(self, ids: tf.RaggedTensor) -> tf.Tensor:
        return self._fast_wordpiece.detokenize(ids)

    def id_to_token(self, token_id: int) -> str:
        """Returns the token of an id.

        Args:
            token_id: an id below ``vocabulary_size``.
        """
        return self.vocabulary[int(token_id)]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["lowercase"] = self._lowercase
        config["strip_accents"] = self._strip_accents
        config["added_tokens"] = list(self._added_tokens)
        return config

    def save_assets(self, dir_path: str) -> None:
        with open(os.path.join(dir_path, self.ASSET_FILENAME), "w", encoding="utf-8") as f:
            f.write("".join(t + "\n" for t in self.vocabulary))

    def load_assets(self, dir_path: str) -> None:
        self.set_vocabulary(os.path.join(dir_path, self.ASSET_FILENAME))


def _one_id_where(condition: tf.Tensor, ids: Any, row_splits_dtype: tf.DType) -> tf.RaggedTensor:
    """Rows of one id (``ids``, a scalar or per row) where ``condition``, empty rows elsewhere."""
    ids = tf.broadcast_to(tf.cast(ids, tf.int32), tf.shape(condition))
    return tf.RaggedTensor.from_row_lengths(tf.boolean_mask(ids, condition),
                                            tf.cast(condition, row_splits_dtype), validate=False)


#: Files beside a ``vocab.txt`` that say how the vocabulary is used (transformers' names).
WORDPIECE_SETTINGS_FILES = ("tokenizer.json", "tokenizer_config.json")


def wordpiece_settings(directory: str | os.PathLike) -> dict[str, Any]:
    """``WordPieceTokenizer`` arguments from a transformers tokenizer's files in ``directory``.

    ``tokenizer.json`` (the fast tokenizer, preferred) gives the ``BertNormalizer``'s
    ``lowercase`` and ``strip_accents`` and the added tokens matched before normalisation
    (``"normalized": false``); ``tokenizer_config.json`` gives ``do_lower_case`` and
    ``strip_accents``. Without either, the arguments are BERT uncased's defaults (empty dict).

    Args:
        directory: the folder of the ``vocab.txt``.

    Returns:
        Keyword arguments for :class:`WordPieceTokenizer` (``lowercase``, ``strip_accents``,
        ``added_tokens``), only those the files set.

    Raises:
        ValueError: naming the file and the setting, when the tokenizer does something
            ``WordPieceTokenizer`` does not (another normaliser or pre-tokenizer,
            ``clean_text`` or ``handle_chinese_chars`` off, added tokens that are normalised).

    Example:
        >>> wordpiece_settings("tests/fixtures/align_tiny")["lowercase"]  # doctest: +SKIP
        True
    """
    directory = Path(directory)
    fast = directory / "tokenizer.json"
    config = directory / "tokenizer_config.json"
    file = fast if fast.is_file() else config
    if not file.is_file():
        return {}
    try:
        return _settings_of_tokenizer_json(fast) if file == fast else \
            _settings_of_tokenizer_config(config)
    except (AttributeError, TypeError, KeyError) as error:  # e.g. a list where an object is
        raise ValueError(f"{file}: not the layout of a transformers tokenizer file "
                         f"({type(error).__name__}: {error}); it is damaged or of another "
                         "kind") from None


def _settings_of_tokenizer_config(config: Path) -> dict[str, Any]:
    data = _read_json_object(config)
    if data.get("tokenize_chinese_chars", True) is not True:
        raise ValueError(f"{config}: tokenize_chinese_chars=false is not supported by "
                         "malign's WordPieceTokenizer (it spaces CJK ideographs as BERT does)")
    settings: dict[str, Any] = {"lowercase": bool(data.get("do_lower_case", True))}
    if data.get("strip_accents") is not None:
        settings["strip_accents"] = bool(data["strip_accents"])
    return settings


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    except OSError as error:
        raise ValueError(f"{path} cannot be read: {error.strerror or error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _settings_of_tokenizer_json(path: Path) -> dict[str, Any]:
    data = _read_json_object(path)
    normalizer = data.get("normalizer") or {}
    if normalizer.get("type") != "BertNormalizer":
        raise ValueError(f"{path}: normalizer {normalizer.get('type')!r} is not supported; "
                         "malign's WordPieceTokenizer implements BertNormalizer")
    for flag in ("clean_text", "handle_chinese_chars"):
        if normalizer.get(flag, True) is not True:
            raise ValueError(f"{path}: BertNormalizer {flag}=false is not supported")
    pre = (data.get("pre_tokenizer") or {}).get("type")
    if pre != "BertPreTokenizer":
        raise ValueError(f"{path}: pre_tokenizer {pre!r} is not supported; malign's "
                         "WordPieceTokenizer implements BertPreTokenizer")
    added = data.get("added_tokens") or []
    normalised = [t.get("content") for t in added if t.get("normalized")]
    if normalised:
        raise ValueError(f"{path}: added tokens matched after normalisation "
                         f"(\"normalized\": true) are not supported: {normalised[:5]}")
    settings: dict[str, Any] = {"lowercase": bool(normalizer.get("lowercase", True))}
    if normalizer.get("strip_accents") is not None:
        settings["strip_accents"] = bool(normalizer["strip_accents"])
    if added:
        settings["added_tokens"] = [t["content"] for t in added]
    return settings


def tokenizer_from_file(
    path: str | os.PathLike,
    sequence_length: int,
    max_vocabulary_size: int | None = None,
) -> SentencePieceTokenizer | WordPieceTokenizer:
    """The tokenizer layer stored in a file: ``*.txt`` is WordPiece, anything else SentencePiece.

    A WordPiece vocabulary takes its settings (lowercase, accents, added tokens) from the
    transformers files beside it (:func:`wordpiece_settings`), as ``malign convert``
    leaves them next to a converted model.

    Args:
        path: a SentencePiece model (``.model``) or a BERT WordPiece vocabulary (``.txt``).
        sequence_length: tokens per caption.
        max_vocabulary_size: the model's vocabulary size; a tokenizer with more ids is an
            error (it is not the tokenizer the model was trained with).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the tokenizer has more ids than ``max_vocabulary_size``.

    Example:
        >>> import malign
        >>> tokenizer_from_file(malign.text.test_vocab_path(), 16, 1000).vocabulary_size
        1000
    """
    path = Path(path)
    kinds = "a SentencePiece .model or a WordPiece vocab.txt"
    if path.is_dir():
        raise FileNotFoundError(f"tokenizer {path} is a directory: give the file ({kinds})")
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer not found: {path} ({kinds})")
    if path.suffix == ".txt":
        tokenizer = WordPieceTokenizer(str(path), sequence_length=sequence_length,
                                       **wordpiece_settings(path.parent))
    else:
        tokenizer = SentencePieceTokenizer(str(path), sequence_length=sequence_length)
    if max_vocabulary_size is not None and tokenizer.vocabulary_size > max_vocabulary_size:
        raise ValueError(
            f"tokenizer {path} has {tokenizer.vocabulary_size} ids but the model's vocabulary has "
            f"{max_vocabulary_size}: it is not the tokenizer this model was trained with"
        )
    return tokenizer


def vocabulary_lines(text: str) -> list[str]:
    """The tokens of a ``vocab.txt`` text: one a line (``\n`` or ``\r\n``), no final empty line.

    Example:
        >>> vocabulary_lines("[PAD]\r\nhello\n")
        ['[PAD]', 'hello']
    """
    tokens = [line.rstrip("\r") for line in text.split("\n")]
    if tokens and tokens[-1] == "":
        tokens.pop()
    return tokens
