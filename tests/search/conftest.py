"""Fixtures of the search tests: a tiny model as .keras and as a SavedModel, photos, captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from search_inputs import BAD_PHOTOS, CAPTIONS, GOOD_PHOTOS, distinct_text_model, save_model


@pytest.fixture(scope="session")
def keras_model(tmp_path_factory) -> Path:
    """A tiny model as run/model.keras, with run/tokenizer.model."""
    return save_model(distinct_text_model(0), tmp_path_factory.mktemp("search-model") / "run")


@pytest.fixture(scope="session")
def saved_model(keras_model, tmp_path_factory) -> Path:
    """The same model exported by `malign export` (its version directory)."""
    from malign.cli import main

    out = tmp_path_factory.mktemp("search-export") / "export"
    # No --verify: the tests compare the SavedModel with the .keras model themselves.
    assert main(["export", "--model", str(keras_model), "--out", str(out), "--no-verify"]) == 0
    return out / "1"


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """Six distinct images (JPEG and PNG, two folder levels), three bad ones and a text file."""
    root = tmp_path_factory.mktemp("search-photos") / "photos"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = np.full((40 + 3 * i, 50, 3), rng.integers(0, 255, 3), np.uint8)
        pixels[5:20, 5 + 4 * i:25 + 4 * i] = rng.integers(0, 255, 3)
        name = f"{'sub/' if i % 2 else ''}img{i}.{'png' if i % 3 else 'jpg'}"
        Image.fromarray(pixels).save(root / name)
    (root / "broken.jpg").write_bytes(b"<html>not an image</html>")
    # A JPEG signature and end marker around nothing: passes the checks, fails the decoder.
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200) + b"\xff\xd9")
    whole = (root / "img0.jpg").read_bytes()
    (root / "half.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "notes.txt").write_text("not a photo")
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*")
                  if p.suffix != ".txt") == sorted([*GOOD_PHOTOS, *BAD_PHOTOS])
    return root


@pytest.fixture(scope="session")
def captions_file(tmp_path_factory) -> Path:
    """CAPTIONS, one per line (line 2 empty)."""
    path = tmp_path_factory.mktemp("search-captions") / "captions.txt"
    path.write_text("\n".join(CAPTIONS) + "\n", encoding="utf-8")
    return path
