"""A damaged or malformed checkpoint file ends ``malign convert`` with a message naming it.

Each case copies the tiny transformers fixture, spoils one file (random bytes, truncated,
empty, valid JSON of the wrong layout, a safetensors header that lies), and runs the
command: exit code 2, the file named, no traceback, nothing written. Every case fails
before the model is built.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from malign import cli

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "align_tiny"
REPO = Path(__file__).resolve().parents[2]


def _random(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _safetensors_header(path: Path, edit) -> None:
    """Rewrites the JSON header of a safetensors file with ``edit(header)``, bytes unchanged."""
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])


def _first_tensor(header: dict) -> dict:
    return header[next(k for k in sorted(header) if k != "__metadata__")]


def _offsets_beyond_the_file(path: Path) -> None:
    _safetensors_header(path, lambda h: _first_tensor(h).update(data_offsets=[0, 10**9]))


def _shape_larger_than_its_bytes(path: Path) -> None:
    _safetensors_header(path, lambda h: _first_tensor(h).update(shape=[10**6]))


def _unknown_dtype(path: Path) -> None:
    _safetensors_header(path, lambda h: _first_tensor(h).update(dtype="F99"))


def _integer_dtype_of_the_same_size(path: Path) -> None:
    _safetensors_header(path, lambda h: h["temperature"].update(dtype="I32"))


def _nan_weights(path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(path))
    weights["text_projection.weight"][0, 0] = float("nan")
    save_file(weights, str(path))


def _header_length_too_large(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 10**12) + data[8:])


def _json(value):
    def write(path: Path) -> None:
        path.write_text(json.dumps(value), encoding="utf-8")
    return write


def _edit_json(edit):
    def write(path: Path) -> None:
        data = json.loads(path.read_text(encoding="utf-8"))
        edit(data)
        path.write_text(json.dumps(data), encoding="utf-8")
    return write


def _lines(text: str):
    def write(path: Path) -> None:
        path.write_text(text, encoding="utf-8")
    return write


def _extra_tokens(path: Path) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(f"extra{i}\n" for i in range(50)))


CASES = {
    "model.safetensors": [_random, _truncated, _empty, _offsets_beyond_the_file,
                          _shape_larger_than_its_bytes, _unknown_dtype,
                          _header_length_too_large, _lines("hello"),
                          _integer_dtype_of_the_same_size, _nan_weights],
    "config.json": [_random, _truncated, _empty, _json([1, 2]),
                    _edit_json(lambda d: d.update(vision_config=[1])),
                    _edit_json(lambda d: d.update(projection_dim=None)),
                    _edit_json(lambda d: d["text_config"].update(vocab_size="many")),
                    _edit_json(lambda d: d["vision_config"].update(kernel_sizes=5)),
                    _edit_json(lambda d: d["vision_config"].update(width_coefficient="x")),
                    _edit_json(lambda d: d["text_config"].update(num_hidden_layers=None))],
    "vocab.txt": [_random, _empty, _lines("a\nb\nc\n"), _extra_tokens],
    "tokenizer.json": [_random, _truncated, _empty, _json([]),
                       _edit_json(lambda d: d.update(normalizer="BertNormalizer")),
                       _edit_json(lambda d: d.update(added_tokens=[1, 2]))],
    "tokenizer_config.json": [_truncated, _json("text")],
    "processor_config.json": [_truncated, _edit_json(
        lambda d: d["image_processor"].update(crop_size="big"))],
}
PARAMS = [(name, spoil) for name, spoils in CASES.items() for spoil in spoils]


def _copy(tmp_path: Path) -> Path:
    src = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, src)
    return src


@pytest.mark.parametrize("name, spoil", PARAMS,
                         ids=[f"{n}-{getattr(s, '__name__', 'x')}-{i}"
                              for i, (n, s) in enumerate(PARAMS)])
def test_a_damaged_file_is_named(tmp_path, capsys, name, spoil):
    src = _copy(tmp_path)
    spoil(src / name)
    out = tmp_path / "out" / "model.keras"
    code = cli.main(["convert", "transformers-align", "--src", str(src), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(src / name) in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_damaged_shard_index_is_named(tmp_path, capsys):
    src = _copy(tmp_path)
    (src / "model.safetensors").rename(src / "part-1.safetensors")
    index = src / "model.safetensors.index.json"
    for content in ("{\"weight_map\": {", "{\"weight_map\": [1]}"):
        index.write_text(content, encoding="utf-8")
        code = cli.main(["convert", "transformers-align", "--src", str(src),
                         "--out", str(tmp_path / "out" / "model.keras")])
        err = capsys.readouterr().err
        assert code == 2 and str(index) in err, err


def test_the_command_ends_without_a_traceback(tmp_path):
    src = _copy(tmp_path)
    _random(src / "model.safetensors")
    out = tmp_path / "out" / "model.keras"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-m", "malign.cli", "convert", "transformers-align", "--src", str(src),
         "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert str(src / "model.safetensors") in result.stderr
    assert "not a readable safetensors file" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not out.parent.exists()
