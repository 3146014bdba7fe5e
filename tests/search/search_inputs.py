"""Inputs of the search tests: a tiny model whose captions embed apart, photos, captions.

The model is the ``tiny`` preset with its text tower's weights drawn again at unit scale
(seeded): a freshly built tiny text tower puts every caption within 1e-4 of the same
point, which would make "the caption itself ranks first" a coin toss; these weights put
different captions 0.005 or more apart, far above float rounding, so the right answers
are known without training.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

#: The images of the photo folder that decode, by their ids (paths relative to the folder).
GOOD_PHOTOS = ("img0.jpg", "img2.png", "img4.png", "sub/img1.png", "sub/img3.jpg", "sub/img5.png")
#: Files with an image suffix that cannot be embedded, and the reason's start.
BAD_PHOTOS = {
    "broken.jpg": "not a JPEG, PNG, GIF, BMP or WebP file",
    "corrupt.jpg": "could not be decoded: Invalid JPEG data",
    "half.jpg": "truncated JPEG (no end-of-image marker)",
}
CAPTIONS = ["a red square", "", "ein Hund auf der Wiese", "un chien noir", "一只狗在草地上",
            "two blue circles"]


def distinct_text_model(seed: int = 0):
    """The tiny preset, its text tower's weights redrawn at unit scale (see the module doc)."""
    import keras

    import malign

    keras.utils.set_random_seed(seed)
    model = malign.AlignModel.from_preset("tiny")
    rng = np.random.default_rng(seed)
    for weight in model.text_tower.weights:
        if weight.path.endswith("embeddings") and "layer_norm" not in weight.path:
            weight.assign(rng.standard_normal(weight.shape).astype("float32"))
        elif weight.path.endswith("kernel"):
            scale = 1.0 / np.sqrt(weight.shape[0])
            weight.assign((rng.standard_normal(weight.shape) * scale).astype("float32"))
    return model


def save_model(model, directory: Path) -> Path:
    """``directory/model.keras`` with the test vocabulary beside it as ``tokenizer.model``."""
    import malign

    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / "model.keras")
    shutil.copy(malign.text.test_vocab_path(), directory / "tokenizer.model")
    return directory / "model.keras"


