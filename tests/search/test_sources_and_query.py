"""Image folders, caption files, image screening, exact top-k and the same-model rule."""

from __future__ import annotations

import numpy as np
import pytest
from search_inputs import BAD_PHOTOS, GOOD_PHOTOS

from malign.evaluation.retrieval import brute_force_top_k
from malign.search.embeddings_file import Embeddings, normalise
from malign.search.fingerprint import (
    check_same_model,
    model_fingerprint,
    resolve_model_path,
)
from malign.search.query import Query, results_json, results_table, search
from malign.search.sources import list_image_folder, read_captions, screen_image


def test_folder_listing_walks_sub_folders_and_names_other_files(photos):
    listing = list_image_folder(photos)
    assert listing.images == sorted([*GOOD_PHOTOS, *BAD_PHOTOS])
    assert listing.others == ["notes.txt"]
    assert listing.root == photos.resolve()


def test_an_empty_folder_or_one_without_images_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no images in .*empty .*; it is empty"):
        list_image_folder(tmp_path / "empty")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=r"it holds 1 other files: a.txt"):
        list_image_folder(tmp_path / "texts")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        list_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="is a file"):
        list_image_folder(tmp_path / "texts" / "a.txt")


def test_captions_by_line_with_empty_lines_counted(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes("\ufeffa dog\r\n\n  ein Hund  \n   \n一只狗".encode())
    assert read_captions(path) == ([(1, "a dog"), (3, "ein Hund"), (5, "一只狗")], [2, 4])
    path.write_bytes(b"fine\n\xff\xfe bad\n")
    with pytest.raises(ValueError, match="line 2 is not UTF-8"):
        read_captions(path)
    path.write_text("\n \n")
    with pytest.raises(ValueError, match="no captions in"):
        read_captions(path)


def test_screening_names_what_is_wrong_before_decoding(photos):
    assert screen_image((photos / "img0.jpg").read_bytes(), None) is None
    for name, reason in BAD_PHOTOS.items():
        if not reason.startswith("could not be decoded"):  # the decoder's own finding
            assert screen_image((photos / name).read_bytes(), None) == reason
    assert screen_image((photos / "corrupt.jpg").read_bytes(), None) is None
    assert screen_image(b"", None) == "empty file"
    png = (photos / "img2.png").read_bytes()
    assert screen_image(png, 46 * 50) is None  # 50 x 46 pixels: at the limit is fine
    assert screen_image(png, 46 * 50 - 1) == ("50x46 = 2300 pixels, over the limit of 2299 "
                                              "pixels (--max-image-pixels)")
    assert screen_image(png[: png.index(b"IEND")], None) == "truncated PNG (no IEND chunk)"


def _gallery(n: int = 200, dim: int = 16, seed: int = 0) -> Embeddings:
    vectors = normalise(np.random.default_rng(seed).standard_normal((n, dim)))
    return Embeddings([f"img{i:03d}.jpg" for i in range(n)], vectors, "image",
                      model={"path": "m", "format": "keras", "fingerprint": "x",
                             "embedding_dim": dim})


def test_search_is_the_exact_top_k_whatever_the_budget():
    gallery = _gallery()
    queries = normalise(np.random.default_rng(1).standard_normal((5, 16)))
    scores, indices = brute_force_top_k(queries, gallery.embeddings, 7)
    for budget in (None, 200_000):
        hits = search(gallery, queries, 7, memory_budget_bytes=budget)
        assert [[h.index for h in row] for row in hits] == indices.tolist()
        assert [[h.score for h in row] for row in hits] == scores.tolist()
        assert [h.id for h in hits[0]] == [gallery.ids[i] for i in indices[0]]
        assert [h.rank for h in hits[0]] == list(range(1, 8))
    # A gallery row as the query finds itself first, at score 1.
    hit = search(gallery, gallery.embeddings[42:43], 1)[0][0]
    assert (hit.id, round(hit.score, 6)) == ("img042.jpg", 1.0)
    # More than the gallery holds: all of it, best first.
    assert len(search(_gallery(3), queries[:, :16], 10)[0]) == 3


def test_search_refuses_queries_of_another_width():
    with pytest.raises(ValueError, match="8-dimensional but the embeddings searched are 16"):
        search(_gallery(), normalise(np.ones((1, 8))), 3)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        search(_gallery(), normalise(np.ones((1, 16))), 0)


def test_table_and_json_show_ids_scores_and_captions():
    vectors = normalise([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    captions = Embeddings(["1", "2", "4"], vectors, "text", ["a dog", "ein Hund", "un chien"],
                          ["en", "de", "fr"], model={"path": "m", "embedding_dim": 2})
    hits = search(captions, normalise([[0.0, 1.0]]), 2)
    table = results_table([Query("text", "Hund")], hits, captions)
    assert table.splitlines() == [
        'query 1: text "Hund"',
        "  rank   score  line  lang  caption",
        "     1  1.0000  4     fr    un chien",
        "     2  0.8000  2     de    ein Hund",
    ]
    out = results_json([Query("text", "Hund")], hits, captions, k=2)
    assert out["k"] == 2 and out["embeddings"]["kind"] == "text"
    assert out["queries"][0]["hits"][1] == {"rank": 2, "index": 1, "id": "2",
                                            "score": pytest.approx(0.8), "text": "ein Hund",
                                            "lang": "de"}


def test_a_query_of_another_model_is_refused_with_both_models_named():
    made = {"path": "/a/model.keras", "format": "keras", "fingerprint": "1" * 64,
            "embedding_dim": 32, "tokenizer": {"path": "/a/tokenizer.model", "sha256": "t1"}}
    check_same_model(made, dict(made), "photos.npz", texts=True)
    with pytest.raises(ValueError, match=r"the query is 64-dimensional but photos.npz holds "
                                         r"32-dimensional embeddings made by another model"):
        check_same_model(made, dict(made, embedding_dim=64, fingerprint="2" * 64), "photos.npz")
    other = dict(made, path="/b/model.keras", fingerprint="2" * 64)
    with pytest.raises(ValueError, match=r"another model than photos.npz: photos.npz by "
                                         r"/a/model.keras .*fingerprint 111111111111.*the query by "
                                         r"/b/model.keras .*--model /a/model.keras"):
        check_same_model(made, other, "photos.npz")
    with pytest.raises(ValueError, match=r"the file at that path has changed since"):
        check_same_model(made, dict(made, fingerprint="3" * 64), "photos.npz")
    retokenized = dict(made, tokenizer={"path": "/c/vocab.model", "sha256": "t2"})
    check_same_model(made, retokenized, "photos.npz", texts=False)  # images only: no tokenizer
    with pytest.raises(ValueError, match=r"tokenized with /c/vocab.model, another vocabulary; "
                                         r"pass --tokenizer /a/tokenizer.model"):
        check_same_model(made, retokenized, "photos.npz", texts=True)


def test_model_paths_resolve_and_fingerprint_by_content(tmp_path):
    keras_file = tmp_path / "m.keras"
    keras_file.write_bytes(b"weights")
    assert resolve_model_path(str(keras_file)) == keras_file.resolve()
    before = model_fingerprint(keras_file)
    keras_file.write_bytes(b"other weights")
    assert model_fingerprint(keras_file) != before
    export = tmp_path / "export"
    for version in ("1", "2"):
        (export / version / "variables").mkdir(parents=True)
        (export / version / "saved_model.pb").write_bytes(b"graph" + version.encode())
    (export / "3").mkdir()  # incomplete: no saved_model.pb
    assert resolve_model_path(export) == (export / "2").resolve()
    version = export / "2"
    fingerprint = model_fingerprint(version)
    (version / "assets.extra").mkdir()
    (version / "assets.extra" / "model.json").write_text("{}")  # the card does not count
    assert model_fingerprint(version) == fingerprint
    (version / "variables" / "variables.index").write_bytes(b"w")
    assert model_fingerprint(version) != fingerprint
    (tmp_path / "m.h5").write_text("x")
    with pytest.raises(ValueError, match="not a .keras model"):
        resolve_model_path(tmp_path / "m.h5")
    with pytest.raises(ValueError, match="without saved_model.pb"):
        resolve_model_path(export / "3")
    with pytest.raises(ValueError, match="untrained preset"):
        resolve_model_path("preset:tiny")
    with pytest.raises(FileNotFoundError, match="model not found"):
        resolve_model_path(tmp_path / "none.keras")
