"""The embeddings file: round trip, every check of the reader, atomic writing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from malign.search.embeddings_file import (
    FORMAT,
    Embeddings,
    normalise,
    read_embeddings,
    write_embeddings,
)

MODEL = {"path": "/models/m.keras", "format": "keras", "fingerprint": "f" * 64,
         "embedding_dim": 4, "tokenizer": {"path": "/models/tokenizer.model", "sha256": "a" * 64}}


def _vectors(n: int = 3, dim: int = 4, seed: int = 0) -> np.ndarray:
    return normalise(np.random.default_rng(seed).standard_normal((n, dim)))


def test_text_file_round_trip_keeps_every_field(tmp_path):
    emb = Embeddings(["1", "3", "4"], _vectors(), "text", ["a dog", "ein Hund", "一只狗"],
                     ["en", "de", "zh"], model=MODEL, meta={"source": {"captions": "/c.txt"}})
    path = write_embeddings(tmp_path / "sub" / "c.npz", emb)
    back = read_embeddings(path)
    assert back.ids == ["1", "3", "4"] and back.kind == "text"
    assert back.texts == ["a dog", "ein Hund", "一只狗"] and back.langs == ["en", "de", "zh"]
    np.testing.assert_array_equal(back.embeddings, emb.embeddings)
    assert back.embeddings.dtype == np.float32
    assert back.model == MODEL
    assert back.meta["source"] == {"captions": "/c.txt"}
    assert back.meta["count"] == 3 and back.meta["embedding_dim"] == 4
    assert back.meta["format"] == FORMAT
    # Plain numpy reads it without pickles: the documented keys.
    with np.load(path, allow_pickle=False) as raw:
        assert set(raw.files) == {"ids", "embeddings", "kind", "meta", "texts", "langs"}
        assert str(raw["kind"][()]) == "text"
        assert json.loads(str(raw["meta"][()]))["model"]["fingerprint"] == "f" * 64


def test_normalise_gives_unit_rows_and_names_bad_rows():
    out = normalise([[3.0, 4.0], [0.0, -2.0]])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-7)
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="row 1 is all zeros"):
        normalise([[1.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="row 0 has NaN"):
        normalise([[np.nan, 1.0]])
    with pytest.raises(ValueError, match=r"must be \[count, dim\]"):
        normalise([1.0, 2.0])


@pytest.mark.parametrize("change, message", [
    (dict(embeddings=np.ones((3, 4), np.float32)), "must be L2-normalised; row 0 .* norm 2"),
    (dict(embeddings=_vectors().astype(np.float64)), "must be a float32"),
    (dict(ids=["a", "b"]), "2 ids for 3 embeddings"),
    (dict(ids=["a", "", "c"]), "non-empty string"),
    (dict(kind="video"), "kind must be 'image' or 'text'"),
    (dict(texts=["x"] * 3, langs=[""] * 3), "an image file has no texts"),
    (dict(model={k: v for k, v in MODEL.items() if k != "fingerprint"}), "lacks fingerprint"),
    (dict(model=dict(MODEL, embedding_dim=8)), "says embedding_dim 8 but the embeddings are 4"),
    (dict(embeddings=np.zeros((0, 4), np.float32), ids=[]), "no embeddings"),
])
def test_writer_refuses_contents_that_would_not_read_back(tmp_path, change, message):
    fields = dict(ids=["a", "b", "c"], embeddings=_vectors(), kind="image", model=MODEL)
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        write_embeddings(tmp_path / "e.npz", Embeddings(**fields))
    assert list(tmp_path.iterdir()) == []


def test_text_files_need_a_caption_and_language_per_row(tmp_path):
    with pytest.raises(ValueError, match="one entry of texts per embedding"):
        write_embeddings(tmp_path / "e.npz", Embeddings(["1", "2", "3"], _vectors(), "text",
                                                        ["a", "b"], ["", "", ""], model=MODEL))


def test_writer_needs_npz_and_replaces_atomically(tmp_path):
    emb = Embeddings(["a", "b", "c"], _vectors(), "image", model=MODEL)
    with pytest.raises(ValueError, match="must end in .npz"):
        write_embeddings(tmp_path / "e.npy", emb)
    path = write_embeddings(tmp_path / "e.npz", emb)
    first = path.stat().st_ino
    write_embeddings(path, Embeddings(["x", "y"], _vectors(2, seed=1), "image", model=MODEL))
    assert read_embeddings(path).ids == ["x", "y"]
    assert path.stat().st_ino != first  # a new file renamed over the old one
    assert sorted(os.listdir(tmp_path)) == ["e.npz"]  # no staging file left behind


def _write_raw(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_reader_names_the_file_and_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="embeddings file not found"):
        read_embeddings(tmp_path / "none.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match=r"text.npz is not an embeddings file .*not a readable"):
        read_embeddings(tmp_path / "text.npz")
    other = _write_raw(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match=r"other.npz is not an embeddings file .*no ids, embeddings"):
        read_embeddings(other)

    good = write_embeddings(tmp_path / "good.npz",
                            Embeddings(["a", "b", "c"], _vectors(), "image", model=MODEL))
    with np.load(good) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta"][()]))

    def broken(name: str, **change) -> os.PathLike:
        return _write_raw(tmp_path / name, **{**arrays, **change})

    with pytest.raises(ValueError, match="meta.count is 3 but there are 2 embeddings"):
        read_embeddings(broken("count.npz", embeddings=arrays["embeddings"][:2],
                               ids=arrays["ids"][:2]))
    with pytest.raises(ValueError, match="meta.format is 'something-else'"):
        read_embeddings(broken("fmt.npz", meta=np.asarray(json.dumps({**meta, "format": "something-else"}))))
    with pytest.raises(ValueError, match="format version 99"):
        read_embeddings(broken("ver.npz", meta=np.asarray(json.dumps({**meta, "format_version": 99}))))
    with pytest.raises(ValueError, match="kind is 'text' but meta.kind is 'image'"):
        read_embeddings(broken("kind.npz", kind=np.asarray("text")))
    no_model = {k: v for k, v in meta.items() if k != "model"}
    with pytest.raises(ValueError, match="meta.model is missing"):
        read_embeddings(broken("model.npz", meta=np.asarray(json.dumps(no_model))))
    with pytest.raises(ValueError, match="must be L2-normalised"):
        read_embeddings(broken("norm.npz", embeddings=arrays["embeddings"] * 2))
