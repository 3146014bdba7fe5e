"""The embeddings file of ``malign embed``: ids, L2-normalised vectors and where they came from.

One ``.npz`` (numpy's zip of arrays, read with ``np.load(path, allow_pickle=False)``):

==============  ===================  ==========================================================
key             type                 meaning
==============  ===================  ==========================================================
``ids``         str ``[N]``          image: its path relative to ``--images`` (``/`` separated)
                                     or its record's ``image/id``; text: the caption's line
                                     number in ``--captions`` (1-based, as text)
``embeddings``  float32 ``[N, D]``   L2-normalised rows (cosine similarity = dot product)
``kind``        str (scalar)         ``"image"`` or ``"text"``
``texts``       str ``[N]``          text files only: the captions
``langs``       str ``[N]``          text files only: ``--lang`` per caption ("" when not given)
``meta``        str (scalar)         JSON: ``format``, ``format_version``, ``kind``, ``count``,
                                     ``embedding_dim``, ``model`` (``path``, ``format``:
                                     keras/saved_model, ``fingerprint``, ``embedding_dim``,
                                     ``tokenizer``), ``source``, ``skipped`` (id and reason of
                                     every input left out), ``created``, ``malign_version``
==============  ===================  ==========================================================

:func:`read_embeddings` checks every one of these (shapes, dtypes, counts, unit norms, the
format tag) and names the file and the field that is wrong. :func:`write_embeddings`
writes beside the target, syncs and renames, so a reader never sees half a file.

Example:
    >>> import numpy as np, tempfile
    >>> vectors = normalise(np.array([[3.0, 4.0], [1.0, 0.0]]))
    >>> model = {"path": "/m/model.keras", "format": "keras", "fingerprint": "ab12",
    ...          "embedding_dim": 2, "tokenizer": None}
    >>> out = write_embeddings(tempfile.mkdtemp() + "/e.npz",
    ...                        Embeddings(["a.jpg", "b.jpg"], vectors, "image", model=model))
    >>> loaded = read_embeddings(out)
    >>> loaded.ids, loaded.embeddings[0].tolist(), loaded.meta["count"]
    (['a.jpg', 'b.jpg'], [0.6000000238418579, 0.800000011920929], 2)
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from malign import atomic_files

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "KINDS",
    "NORM_TOLERANCE",
    "Embeddings",
    "normalise",
    "read_embeddings",
    "write_embeddings",
]

FORMAT = "malign-embeddings"
FORMAT_VERSION = 1
KINDS = ("image", "text")
#: How far from 1 a stored row's norm may be (float32 rounding is about 1e-7).
NORM_TOLERANCE = 1e-3
_MODEL_KEYS = ("path", "format", "fingerprint", "embedding_dim")


def normalise(vectors: Any, what: str = "embeddings") -> np.ndarray:
    """Rows scaled to unit L2 norm (computed in float64), as float32.

    Args:
        vectors: ``[N, D]`` real numbers.
        what: the name used in error messages.

    Returns:
        float32 ``[N, D]``.

    Raises:
        ValueError: a shape that is not ``[N, D]``, a NaN or infinite value, or a zero row
            (it has no direction), naming the first bad row.

    Example:
        >>> normalise([[0.0, 2.0]]).tolist()
        [[0.0, 1.0]]
    """
    array = np.asarray(vectors, np.float64)
    if array.ndim != 2 or array.shape[1] < 1:
        raise ValueError(f"{what} must be [count, dim], got shape {array.shape}")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise ValueError(f"{what} row {int(np.flatnonzero(~finite)[0])} has NaN or infinite values")
    norms = np.linalg.norm(array, axis=1)
    if (norms == 0).any():
        raise ValueError(f"{what} row {int(np.flatnonzero(norms == 0)[0])} is all zeros")
    return (array / norms[:, None]).astype(np.float32)


@dataclasses.dataclass
class Embeddings:
    """The contents of an embeddings file.

    Args:
        ids: one id per row (see the module docstring).
        embeddings: float32 ``[N, D]``, L2-normalised.
        kind: "image" or "text".
        texts: the captions of a text file (None for images).
        langs: the language of each caption (None for images; "" for unknown).
        model: the model that embedded them: ``path``, ``format``, ``fingerprint``,
            ``embedding_dim`` and ``tokenizer`` (``{"path", "sha256"}`` or None).
        meta: every other field of ``meta`` (``source``, ``skipped``, ...); ``format``,
            ``count``, ``kind``, ``embedding_dim`` and ``model`` are filled in on writing.

    Example:
        >>> e = Embeddings(["1"], np.ones((1, 2), "float32") / np.sqrt(2), "text", ["a dog"], ["en"])
        >>> e.count, e.dim
        (1, 2)
    """

    ids: Sequence[str]
    embeddings: np.ndarray
    kind: str
    texts: Sequence[str] | None = None
    langs: Sequence[str] | None = None
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def count(self) -> int:
        """Number of rows."""
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        """Embedding width ``D``."""
        return int(self.embeddings.shape[1])

    def source_text(self, index: int) -> str:
        """The caption of row ``index`` (text files), else ""."""
        return "" if self.texts is None else str(self.texts[index])


def _check(emb: Embeddings, where: str) -> None:
    """Raises ValueError naming ``where`` and the field when ``emb`` is not a valid file's contents."""
    if emb.kind not in KINDS:
        raise ValueError(f"{where}: kind must be 'image' or 'text', got {emb.kind!r}")
    vectors = emb.embeddings
    if not isinstance(vectors, np.ndarray) or vectors.dtype != np.float32 or vectors.ndim != 2:
        raise ValueError(f"{where}: embeddings must be a float32 [count, dim] array, got "
                         f"{getattr(vectors, 'dtype', type(vectors).__name__)} "
                         f"{getattr(vectors, 'shape', '')}")
    if vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise ValueError(f"{where}: no embeddings (shape {vectors.shape})")
    if len(emb.ids) != vectors.shape[0]:
        raise ValueError(f"{where}: {len(emb.ids)} ids for {vectors.shape[0]} embeddings")
    if any(not isinstance(i, str) or not i for i in emb.ids):
        raise ValueError(f"{where}: every id must be a non-empty string")
    if not np.isfinite(vectors).all():
        raise ValueError(f"{where}: embeddings contain NaN or infinite values")
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.size:
        raise ValueError(f"{where}: embeddings must be L2-normalised; row {int(bad[0])} "
                         f"({emb.ids[int(bad[0])]}) has norm {norms[bad[0]]:.6g}")
    for name in ("texts", "langs"):
        values = getattr(emb, name)
        if emb.kind == "text" and (values is None or len(values) != vectors.shape[0]):
            raise ValueError(f"{where}: a text file needs one entry of {name} per embedding")
        if emb.kind == "image" and values is not None:
            raise ValueError(f"{where}: an image file has no {name}")
    missing = [k for k in _MODEL_KEYS if k not in emb.model]
    if missing:
        raise ValueError(f"{where}: the model record lacks {', '.join(missing)}")
    if int(emb.model["embedding_dim"]) != vectors.shape[1]:
        raise ValueError(f"{where}: the model record says embedding_dim "
                         f"{emb.model['embedding_dim']} but the embeddings are "
                         f"{vectors.shape[1]} wide")


def write_embeddings(path: str | os.PathLike, emb: Embeddings) -> Path:
    """Writes an embeddings file in one atomic step (write beside, fsync, rename).

    Args:
        path: the target, ending in ``.npz``.
        emb: what to write; checked first (see :func:`read_embeddings`).

    Returns:
        The path written.

    Raises:
        ValueError: a path without ``.npz`` or contents that would not read back.

    Example:
        >>> write_embeddings("out.txt", None)
        Traceback (most recent call last):
        ...
        ValueError: the embeddings file must end in .npz, got out.txt
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"the embeddings file must end in .npz, got {path}")
    _check(emb, str(path))
    import malign

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": emb.kind,
        "count": emb.count,
        "embedding_dim": emb.dim,
        "model": dict(emb.model),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "malign_version": malign.__version__,
    }
    meta.update({k: v for k, v in emb.meta.items() if k not in meta})
    arrays = {
        "ids": np.asarray(list(emb.ids), dtype=str),
        "embeddings": emb.embeddings,
        "kind": np.asarray(emb.kind),
        "meta": np.asarray(json.dumps(meta, ensure_ascii=False)),
    }
    if emb.kind == "text":
        arrays["texts"] = np.asarray(list(emb.texts), dtype=str).reshape(-1)
        arrays["langs"] = np.asarray(list(emb.langs), dtype=str).reshape(-1)
    with atomic_files.replacing(path) as staging, open(staging, "wb") as file:
        np.savez(file, **arrays)
    emb.meta = {k: v for k, v in meta.items() if k != "model"}
    return path


def read_embeddings(path: str | os.PathLike) -> Embeddings:
    """Reads and checks an embeddings file written by :func:`write_embeddings`.

    Args:
        path: the ``.npz`` file.

    Returns:
        The :class:`Embeddings` (``meta`` holds every field of the stored ``meta`` except
        ``model``, which is ``Embeddings.model``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an embeddings file of malign, or one whose fields disagree; the
            message names the file and the field.

    Example:
        >>> read_embeddings("/nonexistent.npz")
        Traceback (most recent call last):
        ...
        FileNotFoundError: embeddings file not found: /nonexistent.npz
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{path} is not an embeddings file of `malign embed` (not a readable "
                         f".npz: {error})") from error
    missing = [k for k in ("ids", "embeddings", "kind", "meta") if k not in arrays]
    if missing:
        raise ValueError(f"{path} is not an embeddings file of `malign embed`: it has no "
                         f"{', '.join(missing)} (it holds {', '.join(sorted(arrays)) or 'nothing'})")
    try:
        meta = json.loads(str(arrays["meta"][()]))
    except (ValueError, IndexError) as error:
        raise ValueError(f"{path}: meta is not JSON ({error})") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an embeddings file of `malign embed` "
                         f"(meta.format is {meta.get('format') if isinstance(meta, dict) else meta!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {meta.get('format_version')}; this malign "
                         f"reads version {FORMAT_VERSION}: embed again with this version")
    kind = str(arrays["kind"][()])
    if meta.get("kind") != kind:
        raise ValueError(f"{path}: kind is {kind!r} but meta.kind is {meta.get('kind')!r}")
    vectors = arrays["embeddings"]
    if vectors.ndim != 2:
        raise ValueError(f"{path}: embeddings must be [count, dim], got shape {vectors.shape}")
    if meta.get("count") != int(vectors.shape[0]):
        raise ValueError(f"{path}: meta.count is {meta.get('count')} but there are "
                         f"{vectors.shape[0]} embeddings")
    if meta.get("embedding_dim") != int(vectors.shape[1]):
        raise ValueError(f"{path}: meta.embedding_dim is {meta.get('embedding_dim')} but the "
                         f"embeddings are {vectors.shape[1]} wide")
    model = meta.pop("model", None)
    if not isinstance(model, dict):
        raise ValueError(f"{path}: meta.model is missing: which model made these embeddings is "
                         "unknown")
    ids = arrays["ids"]
    if ids.ndim != 1:
        raise ValueError(f"{path}: ids must be a list, got shape {ids.shape}")
    emb = Embeddings(
        ids=[str(i) for i in ids],
        embeddings=vectors,
        kind=kind,
        texts=[str(t) for t in arrays["texts"]] if "texts" in arrays else None,
        langs=[str(t) for t in arrays["langs"]] if "langs" in arrays else None,
        model=model,
        meta=meta,
    )
    _check(emb, str(path))
    return emb
