"""Reading transformers checkpoint files into numpy, without torch where possible.

``model.safetensors`` (also sharded, with ``model.safetensors.index.json``) is read
with the ``safetensors`` package's numpy API. ``pytorch_model.bin`` (a torch pickle)
needs torch; without it the error says so and how to get a safetensors file.

Example:
    >>> weights = read_transformers_weights("tests/fixtures/align_tiny")  # doctest: +SKIP
    >>> weights["temperature"].shape  # doctest: +SKIP
    ()
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = [
    "ConversionError",
    "IGNORED_BUFFER_SUFFIXES",
    "checkpoint_directory",
    "find_weights_files",
    "read_transformers_weights",
]

#: Checkpoint entries that are buffers, not learned weights, and are dropped on reading:
#: batch-norm step counters and BERT's constant ``position_ids``/``token_type_ids``
#: (``arange`` and zeros; saved by older transformers versions).
IGNORED_BUFFER_SUFFIXES = ("num_batches_tracked", "embeddings.position_ids",
                           "embeddings.token_type_ids")


class ConversionError(ValueError):
    """A checkpoint that cannot be converted exactly; the message names the weight or field."""


def checkpoint_directory(path: str | os.PathLike) -> Path:
    """The checkpoint directory of ``path``: itself, or the folder of a file inside it.

    Example:
        >>> checkpoint_directory("align-base/config.json").name  # doctest: +SKIP
        'align-base'
    """
    directory = Path(path)
    return directory.parent if directory.is_file() else directory


def find_weights_files(path: str | os.PathLike) -> list[Path]:
    """The weight files of a checkpoint directory (or the file itself).

    Looks for, in this order: ``model.safetensors``, the shards listed in
    ``model.safetensors.index.json``, ``pytorch_model.bin``, the shards of
    ``pytorch_model.bin.index.json``.

    Args:
        path: a checkpoint directory, or one ``.safetensors``/``.bin`` file.

    Raises:
        ConversionError: when there is no weight file, naming what was looked for.

    Example:
        >>> [p.name for p in find_weights_files("tests/fixtures/align_tiny")]  # doctest: +SKIP
        ['model.safetensors']
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConversionError(f"checkpoint not found: {path}")
    single = ("model.safetensors", "pytorch_model.bin")
    for name in single:
        index = path / f"{name}.index.json"
        if (path / name).is_file():
            return [path / name]
        if index.is_file():
            from malign.convert.inputs import read_json_object

            weight_map = read_json_object(index, "the shard index").get("weight_map", {})
            if not isinstance(weight_map, dict) or not all(
                    isinstance(shard, str) and shard for shard in weight_map.values()):
                raise ConversionError(f"{index}: weight_map must map tensor names to shard "
                                      "file names")
            shards = sorted({path / shard for shard in weight_map.values()})
            missing = [str(s) for s in shards if not s.is_file()]
            if missing:
                raise ConversionError(f"{index} lists shards that are missing: {missing}")
            if not shards:
                raise ConversionError(f"{index} has an empty weight_map")
            return shards
    raise ConversionError(
        f"no weights in {path}: expected model.safetensors, pytorch_model.bin or a sharded "
        "*.index.json (download the whole checkpoint directory, e.g. with "
        "`huggingface-cli download kakaobrain/align-base --local-dir DIR`)"
    )


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file.

    Raises:
        ConversionError: naming the file, when it cannot be read, is empty, truncated or
            otherwise damaged (a header that does not parse, or whose shapes, dtypes and
            offsets do not fit the bytes that follow), or holds bfloat16 (numpy has none).
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        size = file.stat().st_size
    except OSError as error:
        raise ConversionError(f"{file}: cannot be read ({error.strerror or error})") from None
    if size < 8:
        raise ConversionError(f"{file}: {size} bytes, shorter than a safetensors header; the "
                              "file is empty or truncated: download it again")
    try:
        return load_file(str(file))
    except SafetensorError as error:
        raise ConversionError(
            f"{file}: not a readable safetensors file ({error}); it is truncated or damaged: "
            "download it again"
        ) from None
    except OSError as error:
        raise ConversionError(f"{file}: cannot be read ({error.strerror or error})") from None
    except (TypeError, ValueError) as error:  # e.g. bfloat16, which numpy lacks
        raise ConversionError(
            f"cannot read {file} with numpy ({error}); a bfloat16 checkpoint needs torch to "
            "read, or re-save it in float32"
        ) from error


def _read_torch_pickle(file: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ConversionError(
            f"{file} is a PyTorch pickle and reading it needs torch, which is not installed. "
            "Install torch (`pip install torch`), or use the checkpoint's model.safetensors "
            "(kakaobrain/align-base ships one), which malign reads without torch."
        ) from None
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise ConversionError(f"{file}: not a readable PyTorch checkpoint "
                              f"({type(error).__name__}: {error}); it is truncated or "
                              "damaged: download it again") from None
    if not isinstance(state, dict):
        raise ConversionError(f"{file}: holds a {type(state).__name__}, not a state dict of "
                              "tensors")
    out = {}
    for key, value in state.items():
        if not hasattr(value, "detach"):
            raise ConversionError(f"{file}: entry {key!r} is not a tensor ({type(value).__name__})")
        value = value.detach()
        if value.is_floating_point() and value.dtype != torch.float64:
            value = value.float()
        out[key] = value.numpy()
    return out


def read_transformers_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads every tensor of a transformers checkpoint into numpy arrays by name.

    Floating-point tensors come back as float32. Entries named in
    ``IGNORED_BUFFER_SUFFIXES`` are dropped (they hold no learned values).

    Args:
        path: a checkpoint directory, or one weight file.

    Returns:
        ``{name: array}`` with the checkpoint's own names (e.g.
        ``vision_model.embeddings.convolution.weight``).

    Raises:
        ConversionError: naming the file: no weight file, an unreadable or damaged one, the
            same name twice, a weight that is not floating-point or holds NaN or infinity.

    Example:
        >>> weights = read_transformers_weights("tests/fixtures/align_tiny")  # doctest: +SKIP
        >>> weights["text_projection.weight"].shape  # doctest: +SKIP
        (32, 32)
    """
    weights: dict[str, np.ndarray] = {}
    for file in find_weights_files(path):
        if file.suffix == ".safetensors":
            part = _read_safetensors(file)
        elif file.suffix in (".bin", ".pt", ".pth"):
            part = _read_torch_pickle(file)
        else:
            raise ConversionError(f"unknown weight file type: {file} (expected .safetensors or .bin)")
        for key, value in part.items():
            if key in weights:
                raise ConversionError(f"weight {key!r} appears in more than one file of {path}")
            if key.endswith(IGNORED_BUFFER_SUFFIXES):
                continue
            value = np.asarray(value)
            if not np.issubdtype(value.dtype, np.floating):
                raise ConversionError(
                    f"{file}: tensor {key!r} is {value.dtype}, not floating-point weights; the "
                    "file's header is wrong (damaged) or this is not an ALIGN checkpoint")
            value = value.astype(np.float32, copy=False)
            bad = value.size - int(np.isfinite(value).sum())
            if bad:
                raise ConversionError(
                    f"{file}: tensor {key!r} holds {bad} NaN or infinite value(s); the file "
                    "is damaged (download it again) or the model it was saved from diverged")
            weights[key] = value
    return weights
