"""BERT's text rules in the TensorFlow graph, as HuggingFace ``tokenizers`` runs them.

A BERT checkpoint's ``tokenizer.json`` turns text into WordPiece words in three steps, each
reproduced here with TensorFlow string ops (so a SavedModel gives the same ids without Python):

1. :func:`split_added_tokens`: the added tokens (``[CLS]``, ``[SEP]``, ``[PAD]``, ``[MASK]``,
   ``[UNK]`` for BERT) written in the text are matched first, whole and case-sensitively, in the
   raw text; the leftmost match wins, the longest at one position. They are not normalized.
2. :func:`normalize` (``BertNormalizer``): ``clean_text`` deletes NUL, U+FFFD and the control,
   format and private-use characters (BEL, soft hyphen, zero-width space, BOM, bidi controls...)
   and turns every whitespace character (tab, newline, NBSP, U+2003, U+3000...) into a space;
   ``handle_chinese_chars`` puts spaces around CJK ideographs; ``strip_accents`` decomposes
   (NFD) and deletes non-spacing marks; ``lowercase`` lowercases one character at a time.
3. :func:`pre_tokenize` (``BertPreTokenizer``): split at whitespace (dropped) and punctuation
   (each punctuation character a word: ASCII symbols and Unicode's P* classes).

The character classes are those of the reference, not RE2's ``\\p{...}`` or ICU's: the Rust
crates behind ``tokenizers`` use older (categories, NFD) and newer (lowercase) Unicode versions
than TensorFlow, and they disagree on a few hundred recently added characters. The tables at the
end of this file are read off ``tokenizers`` one character at a time by
``tests/text/bert_unicode_tables.py``, and the tests compare every step with ``tokenizers`` on
every Unicode character.

Text must be valid UTF-8: :func:`check_utf8` fails with the positions of the bad strings.

Example:
    >>> import tensorflow as tf
    >>> from malign.text import bert_normalization as bn
    >>> text = tf.constant(["Caf\\u00e9\\u00adAU\\u200b LAIT\\u3000[MASK]!"])
    >>> bn.normalize(text).numpy()[0].decode()
    'cafeau lait [mask]!'
    >>> bn.pre_tokenize(bn.normalize(text)).to_list()
    [[b'cafeau', b'lait', b'[', b'mask', b']', b'!']]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

__all__ = [
    "DEFAULT_ADDED_TOKENS",
    "check_utf8",
    "normalize",
    "pre_tokenize",
    "split_added_tokens",
]

DEFAULT_ADDED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
"""The added tokens of BERT's ``tokenizer.json``: matched whole in the text, before normalization."""

_PRIVATE_USE = 0xE000  # NFD placeholders: private-use characters are gone once the text is clean


def _parse_ranges(text: str) -> list[tuple[int, int]]:
    ranges = []
    for item in text.split():
        start, _, end = item.partition("-")
        ranges.append((int(start, 16), int(end or start, 16)))
    return ranges


def _char_class(text: str, but: str = "") -> str:
    """An RE2 character class of the ranges in ``text`` (``"0300-036F 0483 ..."``) minus ``but``."""
    ranges = _parse_ranges(text)
    if but:
        ranges = []
        for cp in sorted(set(_codepoints(text)) - set(_codepoints(but))):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    parts = [f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges]
    return "[" + "".join(parts) + "]"


def _ascii_class(text: str, but: str = "") -> str:
    """An RE2 class of the ASCII characters in the ranges of ``text`` and not in those of ``but``."""
    chars = sorted(set(cp for cp in _codepoints(text) if cp < 0x80) - set(_codepoints(but)))
    return "[" + "".join(f"\\x{{{cp:X}}}" for cp in chars) + "]"


def _codepoints(text: str) -> list[int]:
    return [cp for a, b in _parse_ranges(text) for cp in range(a, b + 1)]


def _lowercase_pairs(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Expands ``start:count:step:delta`` runs (hex) into sorted (upper, lower) code points."""
    keys, values = [], []
    for run in text.split():
        start, count, step, delta = (int(x, 16) for x in run.split(":"))
        for i in range(count):
            keys.append(start + i * step)
            values.append(start + i * step + delta)
    order = np.argsort(keys)
    return np.asarray(keys, np.int32)[order], np.asarray(values, np.int32)[order]


def _map_codepoints(text: tf.Tensor, keys: np.ndarray, values: np.ndarray) -> tf.Tensor:
    """Replaces each code point in ``keys`` (sorted) by the one at the same index of ``values``."""
    chars = tf.strings.unicode_decode(text, "UTF-8")
    flat = chars.flat_values
    sorted_keys = tf.constant(keys, tf.int32)
    index = tf.minimum(tf.searchsorted(sorted_keys, flat), len(keys) - 1)
    hit = tf.equal(tf.gather(sorted_keys, index), flat)
    mapped = tf.where(hit, tf.gather(tf.constant(values, tf.int32), index), flat)
    return tf.strings.unicode_encode(chars.with_flat_values(mapped), "UTF-8")


def check_utf8(text: tf.Tensor, what: str = "text") -> tf.Tensor:
    """Returns ``text`` (a string tensor) once every element is valid UTF-8.

    Args:
        text: a string tensor of any shape.
        what: how the error names the input.

    Raises:
        tf.errors.InvalidArgumentError: (when the check runs) some elements are not UTF-8; the
            message gives the flat positions of the first ten.

    Example:
        >>> check_utf8(tf.constant(["ok"])).numpy()
        array([b'ok'], dtype=object)
    """
    text = tf.convert_to_tensor(text, tf.string)
    flat = tf.reshape(text, [-1])
    suspect = tf.where(tf.logical_not(tf.strings.regex_full_match(flat, _ASCII_TEXT)))[:, 0]
    other = tf.gather(flat, suspect)
    valid = tf.equal(tf.strings.unicode_transcode(other, "UTF-8", "UTF-8", errors="ignore"), other)
    bad = tf.boolean_mask(suspect, tf.logical_not(valid))
    check = tf.debugging.Assert(
        tf.equal(tf.size(bad), 0),
        [f"{what} is not valid UTF-8 at positions (flat, first ten):", bad[:10]], summarize=10)
    with tf.control_dependencies([check]):
        return tf.identity(text)


def _added_tokens_pattern(tokens: Sequence[str]) -> str:
    """An RE2 pattern matching any of ``tokens``, longest first (so the longest wins at a position)."""
    def literal(token: str) -> str:
        return "".join(c if c.isascii() and c.isalnum() else f"\\x{{{ord(c):X}}}" for c in token)

    return "|".join(literal(t) for t in sorted(set(tokens), key=lambda t: (-len(t), t)))


def split_added_tokens(text: tf.Tensor, tokens: Sequence[str]) -> tf.RaggedTensor:
    """Cuts each string at the added tokens written in it, keeping them as pieces of their own.

    Matching is on the raw text, whole tokens, case-sensitive, leftmost first and the longest of
    those starting at one position: ``"a[MASK]b [mask]"`` gives ``["a", "[MASK]", "b [mask]"]``.
    Empty pieces are dropped; the other pieces are kept byte for byte, whitespace included.

    Args:
        text: a rank-1 string tensor of valid UTF-8.
        tokens: the added tokens (none: every string is one piece).

    Returns:
        A ragged string tensor [B, pieces]; a piece equal to a token is that token.

    Example:
        >>> split_added_tokens(tf.constant(["a [MASK]cat"]), DEFAULT_ADDED_TOKENS).to_list()
        [[b'a ', b'[MASK]', b'cat']]
    """
    import tensorflow_text as tf_text

    text = tf.convert_to_tensor(text, tf.string)
    if not tokens:
        return tf.RaggedTensor.from_tensor(text[:, None]).with_row_splits_dtype(tf.int64)
    # tensorflow-text's regex_split stops at a NUL byte: make it U+FFFD, which clean_text deletes
    # as it deletes NUL (added tokens have neither, see WordPieceTokenizer).
    text = tf.strings.regex_replace(text, "\\x00", "\ufffd")
    pattern = _added_tokens_pattern(tokens)
    return tf_text.regex_split(text, pattern, pattern)


def normalize(text: tf.Tensor, lowercase: bool = True, strip_accents: bool | None = None) -> tf.Tensor:
    """``BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents, lowercase)``.

    Args:
        text: a string tensor of valid UTF-8, any shape.
        lowercase: lowercase every character (uncased BERT).
        strip_accents: decompose (NFD) and delete non-spacing marks; None: as ``lowercase``
            (what ``tokenizers`` does with ``"strip_accents": null``).

    Returns:
        The normalized strings, same shape.

    Example:
        >>> normalize(tf.constant(["Ünïcode\\u0007 \\u00a0北京"])).numpy()[0].decode()
        'unicode   北  京 '
    """
    if strip_accents is None:
        strip_accents = lowercase
    text = tf.convert_to_tensor(text, tf.string)
    flat = tf.reshape(text, [-1])
    out = _by_kind(flat, tf.strings.regex_full_match(flat, _ASCII_TEXT),
                   lambda ascii_text: _normalize_ascii(ascii_text, lowercase),
                   lambda other: _normalize_unicode(other, lowercase, strip_accents))
    return tf.ensure_shape(tf.reshape(out, tf.shape(text)), text.shape)


def _by_kind(text: tf.Tensor, simple: tf.Tensor, simple_fn, general_fn) -> tf.Tensor:
    """``simple_fn`` on the elements of ``text`` (rank 1) where ``simple``, ``general_fn`` on the rest."""
    kind = tf.cast(simple, tf.int32)
    positions = tf.dynamic_partition(tf.range(tf.size(text)), kind, 2)
    general, plain = tf.dynamic_partition(text, kind, 2)
    return tf.dynamic_stitch(positions, [general_fn(general), simple_fn(plain)])


def _normalize_ascii(text: tf.Tensor, lowercase: bool) -> tf.Tensor:
    """``normalize`` of ASCII text: no CJK, accents or non-ASCII case (see the tests)."""
    text = tf.strings.regex_replace(text, _ASCII_REMOVED_CLASS, "")
    text = tf.strings.regex_replace(text, _ASCII_WHITESPACE_CLASS, " ")
    return tf.strings.lower(text) if lowercase else text  # ASCII letters only, byte by byte


def _normalize_unicode(text: tf.Tensor, lowercase: bool, strip_accents: bool) -> tf.Tensor:
    import tensorflow_text as tf_text

    text = tf.strings.regex_replace(text, _REMOVED_CLASS, "")
    text = tf.strings.regex_replace(text, _CLEAN_WHITESPACE_CLASS, " ")
    text = tf.strings.regex_replace(text, _CHINESE_CLASS, " \\0 ")
    if strip_accents:
        # Characters tensorflow-text's (newer) NFD decomposes but the reference's does not wait
        # in private-use code points, which clean_text has just removed from the text.
        def protected_nfd(text):
            text = tf_text.normalize_utf8(_map_codepoints(text, *_NFD_PROTECT), "NFD")
            return _map_codepoints(text, *_NFD_RESTORE)

        text = _by_kind(text, tf.logical_not(tf.strings.regex_full_match(text, _HAS_NFD_KEPT)),
                        lambda plain: tf_text.normalize_utf8(plain, "NFD"), protected_nfd)
        text = tf.strings.regex_replace(text, _NONSPACING_CLASS, "")
    if lowercase:
        for source, target in _LOWERCASE_MULTI.items():
            text = tf.strings.regex_replace(text, f"\\x{{{source:X}}}", "".join(map(chr, target)))
        text = _map_codepoints(text, *_LOWERCASE_TABLE)
    return text


def pre_tokenize(text: tf.Tensor) -> tf.RaggedTensor:
    """``BertPreTokenizer``: words split at whitespace (dropped) and punctuation (kept alone).

    Args:
        text: a rank-1 string tensor of valid UTF-8 without NUL (normalized text).

    Returns:
        A ragged string tensor [B, words]; no word is empty.

    Example:
        >>> pre_tokenize(tf.constant(["Hey friend!  How's\\u3000it?"])).to_list()
        [[b'Hey', b'friend', b'!', b'How', b"'", b's', b'it', b'?']]
    """
    import tensorflow_text as tf_text

    return tf_text.regex_split(text, _SPLIT_PATTERN, _PUNCTUATION_CLASS)


# --- generated by tests/text/bert_unicode_tables.py: do not edit ---
# From tokenizers 0.23.3; see the module docstring.
_REMOVED = (
    "0000-0008 000B-000C 000E-001F 007F-009F 00AD 0600-0605 061C 06DD 070F 180E 200B-200F 202A-202E "
    "2060-2064 2066-206F E000-F8FF FEFF FFF9-FFFB FFFD 110BD 1BCA0-1BCA3 1D173-1D17A E0001 E0020-E007F "
    "F0000-FFFFD 100000-10FFFD "
)
_WHITESPACE = (
    "0009-000D 0020 0085 00A0 1680 2000-200A 2028-2029 202F 205F 3000 "
)
_CHINESE = (
    "3400-4DBF 4E00-9FFF F900-FAFF 20000-2A6DF 2A700-2B81F 2B920-2CEAF 2F800-2FA1F "
)
_NONSPACING = (
    "0300-036F 0483-0487 0591-05BD 05BF 05C1-05C2 05C4-05C5 05C7 0610-061A 064B-065F 0670 06D6-06DC "
    "06DF-06E4 06E7-06E8 06EA-06ED 0711 0730-074A 07A6-07B0 07EB-07F3 0816-0819 081B-0823 0825-0827 "
    "0829-082D 0859-085B 08E3-0902 093A 093C 0941-0948 094D 0951-0957 0962-0963 0981 09BC 09C1-09C4 09CD "
    "09E2-09E3 0A01-0A02 0A3C 0A41-0A42 0A47-0A48 0A4B-0A4D 0A51 0A70-0A71 0A75 0A81-0A82 0ABC 0AC1-0AC5 "
    "0AC7-0AC8 0ACD 0AE2-0AE3 0B01 0B3C 0B3F 0B41-0B44 0B4D 0B56 0B62-0B63 0B82 0BC0 0BCD 0C00 0C3E-0C40 "
    "0C46-0C48 0C4A-0C4D 0C55-0C56 0C62-0C63 0C81 0CBC 0CBF 0CC6 0CCC-0CCD 0CE2-0CE3 0D01 0D41-0D44 0D4D "
    "0D62-0D63 0DCA 0DD2-0DD4 0DD6 0E31 0E34-0E3A 0E47-0E4E 0EB1 0EB4-0EB9 0EBB-0EBC 0EC8-0ECD 0F18-0F19 "
    "0F35 0F37 0F39 0F71-0F7E 0F80-0F84 0F86-0F87 0F8D-0F97 0F99-0FBC 0FC6 102D-1030 1032-1037 1039-103A "
    "103D-103E 1058-1059 105E-1060 1071-1074 1082 1085-1086 108D 109D 135D-135F 1712-1714 1732-1734 "
    "1752-1753 1772-1773 17B4-17B5 17B7-17BD 17C6 17C9-17D3 17DD 180B-180D 18A9 1920-1922 1927-1928 1932 "
    "1939-193B 1A17-1A18 1A1B 1A56 1A58-1A5E 1A60 1A62 1A65-1A6C 1A73-1A7C 1A7F 1AB0-1ABD 1B00-1B03 1B34 "
    "1B36-1B3A 1B3C 1B42 1B6B-1B73 1B80-1B81 1BA2-1BA5 1BA8-1BA9 1BAB-1BAD 1BE6 1BE8-1BE9 1BED 1BEF-1BF1 "
    "1C2C-1C33 1C36-1C37 1CD0-1CD2 1CD4-1CE0 1CE2-1CE8 1CED 1CF4 1CF8-1CF9 1DC0-1DF5 1DFC-1DFF 20D0-20DC "
    "20E1 20E5-20F0 2CEF-2CF1 2D7F 2DE0-2DFF 302A-302D 3099-309A A66F A674-A67D A69E-A69F A6F0-A6F1 A802 "
    "A806 A80B A825-A826 A8C4 A8E0-A8F1 A926-A92D A947-A951 A980-A982 A9B3 A9B6-A9B9 A9BC A9E5 AA29-AA2E "
    "AA31-AA32 AA35-AA36 AA43 AA4C AA7C AAB0 AAB2-AAB4 AAB7-AAB8 AABE-AABF AAC1 AAEC-AAED AAF6 ABE5 ABE8 "
    "ABED FB1E FE00-FE0F FE20-FE2F 101FD 102E0 10376-1037A 10A01-10A03 10A05-10A06 10A0C-10A0F "
    "10A38-10A3A 10A3F 10AE5-10AE6 11001 11038-11046 1107F-11081 110B3-110B6 110B9-110BA 11100-11102 "
    "11127-1112B 1112D-11134 11173 11180-11181 111B6-111BE 111CA-111CC 1122F-11231 11234 11236-11237 "
    "112DF 112E3-112EA 11300-11301 1133C 11340 11366-1136C 11370-11374 114B3-114B8 114BA 114BF-114C0 "
    "114C2-114C3 115B2-115B5 115BC-115BD 115BF-115C0 115DC-115DD 11633-1163A 1163D 1163F-11640 116AB "
    "116AD 116B0-116B5 116B7 1171D-1171F 11722-11725 11727-1172B 16AF0-16AF4 16B30-16B36 16F8F-16F92 "
    "1BC9D-1BC9E 1D167-1D169 1D17B-1D182 1D185-1D18B 1D1AA-1D1AD 1D242-1D244 1DA00-1DA36 1DA3B-1DA6C "
    "1DA75 1DA84 1DA9B-1DA9F 1DAA1-1DAAF 1E8D0-1E8D6 E0100-E01EF "
)
_NFD_KEPT = (
    "105C9 105E4 11383 11385 1138E 11391 113C5 113C7-113C8 11938 16121-16128 16D68-16D6A "
)
_PUNCTUATION = (
    "0021-002F 003A-0040 005B-0060 007B-007E 00A1 00A7 00AB 00B6-00B7 00BB 00BF 037E 0387 055A-055F "
    "0589-058A 05BE 05C0 05C3 05C6 05F3-05F4 0609-060A 060C-060D 061B 061E-061F 066A-066D 06D4 0700-070D "
    "07F7-07F9 0830-083E 085E 0964-0965 0970 0AF0 0DF4 0E4F 0E5A-0E5B 0F04-0F12 0F14 0F3A-0F3D 0F85 "
    "0FD0-0FD4 0FD9-0FDA 104A-104F 10FB 1360-1368 1400 166D-166E 169B-169C 16EB-16ED 1735-1736 17D4-17D6 "
    "17D8-17DA 1800-180A 1944-1945 1A1E-1A1F 1AA0-1AA6 1AA8-1AAD 1B5A-1B60 1BFC-1BFF 1C3B-1C3F 1C7E-1C7F "
    "1CC0-1CC7 1CD3 2010-2027 2030-2043 2045-2051 2053-205E 207D-207E 208D-208E 2308-230B 2329-232A "
    "2768-2775 27C5-27C6 27E6-27EF 2983-2998 29D8-29DB 29FC-29FD 2CF9-2CFC 2CFE-2CFF 2D70 2E00-2E2E "
    "2E30-2E42 3001-3003 3008-3011 3014-301F 3030 303D 30A0 30FB A4FE-A4FF A60D-A60F A673 A67E A6F2-A6F7 "
    "A874-A877 A8CE-A8CF A8F8-A8FA A8FC A92E-A92F A95F A9C1-A9CD A9DE-A9DF AA5C-AA5F AADE-AADF AAF0-AAF1 "
    "ABEB FD3E-FD3F FE10-FE19 FE30-FE52 FE54-FE61 FE63 FE68 FE6A-FE6B FF01-FF03 FF05-FF0A FF0C-FF0F "
    "FF1A-FF1B FF1F-FF20 FF3B-FF3D FF3F FF5B FF5D FF5F-FF65 10100-10102 1039F 103D0 1056F 10857 1091F "
    "1093F 10A50-10A58 10A7F 10AF0-10AF6 10B39-10B3F 10B99-10B9C 11047-1104D 110BB-110BC 110BE-110C1 "
    "11140-11143 11174-11175 111C5-111C9 111CD 111DB 111DD-111DF 11238-1123D 112A9 114C6 115C1-115D7 "
    "11641-11643 1173C-1173E 12470-12474 16A6E-16A6F 16AF5 16B37-16B3B 16B44 1BC9F 1DA87-1DA8B "
)
_LOWERCASE = (
    "41:1A:1:+20 C0:17:1:+20 D8:7:1:+20 100:18:2:+1 132:3:2:+1 139:8:2:+1 14A:17:2:+1 178:1:1:-79 "
    "179:3:2:+1 181:1:1:+D2 182:2:2:+1 186:1:1:+CE 187:1:1:+1 189:2:1:+CD 18B:1:1:+1 18E:1:1:+4F "
    "18F:1:1:+CA 190:1:1:+CB 191:1:1:+1 193:1:1:+CD 194:1:1:+CF 196:1:1:+D3 197:1:1:+D1 198:1:1:+1 "
    "19C:1:1:+D3 19D:1:1:+D5 19F:1:1:+D6 1A0:3:2:+1 1A6:1:1:+DA 1A7:1:1:+1 1A9:1:1:+DA 1AC:1:1:+1 "
    "1AE:1:1:+DA 1AF:1:1:+1 1B1:2:1:+D9 1B3:2:2:+1 1B7:1:1:+DB 1B8:1:1:+1 1BC:1:1:+1 1C4:1:1:+2 "
    "1C5:1:1:+1 1C7:1:1:+2 1C8:1:1:+1 1CA:1:1:+2 1CB:9:2:+1 1DE:9:2:+1 1F1:1:1:+2 1F2:2:2:+1 1F6:1:1:-61 "
    "1F7:1:1:-38 1F8:14:2:+1 220:1:1:-82 222:9:2:+1 23A:1:1:+2A2B 23B:1:1:+1 23D:1:1:-A3 23E:1:1:+2A28 "
    "241:1:1:+1 243:1:1:-C3 244:1:1:+45 245:1:1:+47 246:5:2:+1 370:2:2:+1 376:1:1:+1 37F:1:1:+74 "
    "386:1:1:+26 388:3:1:+25 38C:1:1:+40 38E:2:1:+3F 391:11:1:+20 3A3:9:1:+20 3CF:1:1:+8 3D8:C:2:+1 "
    "3F4:1:1:-3C 3F7:1:1:+1 3F9:1:1:-7 3FA:1:1:+1 3FD:3:1:-82 400:10:1:+50 410:20:1:+20 460:11:2:+1 "
    "48A:1B:2:+1 4C0:1:1:+F 4C1:7:2:+1 4D0:30:2:+1 531:26:1:+30 10A0:26:1:+1C60 10C7:1:1:+1C60 "
    "10CD:1:1:+1C60 13A0:50:1:+97D0 13F0:6:1:+8 1C89:1:1:+1 1C90:2B:1:-BC0 1CBD:3:1:-BC0 1E00:4B:2:+1 "
    "1E9E:1:1:-1DBF 1EA0:30:2:+1 1F08:8:1:-8 1F18:6:1:-8 1F28:8:1:-8 1F38:8:1:-8 1F48:6:1:-8 1F59:4:2:-8 "
    "1F68:8:1:-8 1F88:8:1:-8 1F98:8:1:-8 1FA8:8:1:-8 1FB8:2:1:-8 1FBA:2:1:-4A 1FBC:1:1:-9 1FC8:4:1:-56 "
    "1FCC:1:1:-9 1FD8:2:1:-8 1FDA:2:1:-64 1FE8:2:1:-8 1FEA:2:1:-70 1FEC:1:1:-7 1FF8:2:1:-80 1FFA:2:1:-7E "
    "1FFC:1:1:-9 2126:1:1:-1D5D 212A:1:1:-20BF 212B:1:1:-2046 2132:1:1:+1C 2160:10:1:+10 2183:1:1:+1 "
    "24B6:1A:1:+1A 2C00:30:1:+30 2C60:1:1:+1 2C62:1:1:-29F7 2C63:1:1:-EE6 2C64:1:1:-29E7 2C67:3:2:+1 "
    "2C6D:1:1:-2A1C 2C6E:1:1:-29FD 2C6F:1:1:-2A1F 2C70:1:1:-2A1E 2C72:1:1:+1 2C75:1:1:+1 2C7E:2:1:-2A3F "
    "2C80:32:2:+1 2CEB:2:2:+1 2CF2:1:1:+1 A640:17:2:+1 A680:E:2:+1 A722:7:2:+1 A732:1F:2:+1 A779:2:2:+1 "
    "A77D:1:1:-8A04 A77E:5:2:+1 A78B:1:1:+1 A78D:1:1:-A528 A790:2:2:+1 A796:A:2:+1 A7AA:1:1:-A544 "
    "A7AB:1:1:-A54F A7AC:1:1:-A54B A7AD:1:1:-A541 A7AE:1:1:-A544 A7B0:1:1:-A512 A7B1:1:1:-A52A "
    "A7B2:1:1:-A515 A7B3:1:1:+3A0 A7B4:8:2:+1 A7C4:1:1:-30 A7C5:1:1:-A543 A7C6:1:1:-8A38 A7C7:2:2:+1 "
    "A7CB:1:1:-A567 A7CC:8:2:+1 A7DC:1:1:-A641 A7F5:1:1:+1 FF21:1A:1:+20 10400:28:1:+28 104B0:24:1:+28 "
    "10570:B:1:+27 1057C:F:1:+27 1058C:7:1:+27 10594:2:1:+27 10C80:33:1:+40 10D50:16:1:+20 118A0:20:1:+20 "
    "16E40:20:1:+20 16EA0:19:1:+1B 1E900:22:1:+22 "
)
_LOWERCASE_MULTI = {0x0130: (0x0069, 0x0307,)}
# --- end of generated tables ---


_ASCII_TEXT = "[\\x00-\\x7F]*"
_REMOVED_CLASS = _char_class(_REMOVED)
_WHITESPACE_CLASS = _char_class(_WHITESPACE)
_CLEAN_WHITESPACE_CLASS = _char_class(_WHITESPACE, but=_REMOVED + " 0020")  # the space stays
_ASCII_REMOVED_CLASS = _ascii_class(_REMOVED)
_ASCII_WHITESPACE_CLASS = _ascii_class(_WHITESPACE, but=_REMOVED + " 0020")
_CHINESE_CLASS = _char_class(_CHINESE)
_NONSPACING_CLASS = _char_class(_NONSPACING)
_PUNCTUATION_CLASS = _char_class(_PUNCTUATION)
_SPLIT_PATTERN = _WHITESPACE_CLASS + "|" + _PUNCTUATION_CLASS
_HAS_NFD_KEPT = "(?s).*" + _char_class(_NFD_KEPT) + ".*"
_NFD_PROTECT = (np.asarray(_codepoints(_NFD_KEPT), np.int32),
                np.arange(_PRIVATE_USE, _PRIVATE_USE + len(_codepoints(_NFD_KEPT)), dtype=np.int32))
_NFD_RESTORE = (_NFD_PROTECT[1], _NFD_PROTECT[0])
_LOWERCASE_TABLE = _lowercase_pairs(_LOWERCASE)
