"""`malign embed` and `malign search` as a user runs them, with a .keras model and its export.

The journey: `malign embed` (its own process) embeds a folder with the .keras model, the
same folder is embedded with the exported SavedModel, and `malign search` (its own
process) answers an image query and a text query with contact sheets. Known answers: an
image searched with its own file comes first at score 1, a caption searched with its own
text comes first at score 1, and the .keras model and its SavedModel give the same ids,
the same skipped files and the same top k (scores within 1e-4).
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from search_inputs import BAD_PHOTOS, CAPTIONS, GOOD_PHOTOS, distinct_text_model, save_model

from malign.cli import main
from malign.search.contact_sheet import png_sheet_size
from malign.search.embeddings_file import Embeddings, normalise, read_embeddings, write_embeddings
from malign.tf_logging import VERBOSE_ENV, is_tensorflow_log_line

BIN = Path(sys.executable).parent
# The command line as a user runs it: no TF_CPP_MIN_LOG_LEVEL of the test suite's.
CLI_ENV = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", VERBOSE_ENV)}
TOLERANCE = 1e-4
# Keras' own .keras saving and loading trip numpy 2's copy-keyword warning; not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _malign(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "malign"), *args], capture_output=True, text=True,
                            env=CLI_ENV, cwd=cwd, timeout=600)
    assert result.returncode == 0, f"malign {' '.join(args)}:\n{result.stderr[-3000:]}"
    noise = [line for line in result.stderr.splitlines() if is_tensorflow_log_line(line)]
    assert not noise, f"malign {args[0]} printed TensorFlow's log lines: {noise[:3]}"
    return result


def _run(capsys, *args: str) -> tuple[int, str, str]:
    """`malign ARGS` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _search_json(capsys, *args: str) -> dict:
    code, out, err = _run(capsys, "search", *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("search-journey")


@pytest.fixture(scope="module")
def keras_photos(keras_model, photos, work) -> tuple[Path, str]:
    """`malign embed` of the photo folder with the .keras model, in its own process.

    Batches of 4: corrupt.jpg, which only the decoder finds bad, shares its batch with
    good images, which must still be embedded.
    """
    out = work / "photos-keras.npz"
    result = _malign("embed", "--model", str(keras_model), "--images", str(photos),
                     "--out", str(out), "--batch-size", "4", "--quiet", cwd=work)
    return out, result.stdout


@pytest.fixture(scope="module")
def saved_photos(saved_model, photos, work) -> Path:
    """The same folder embedded with the exported SavedModel (its base directory given)."""
    out = work / "photos-saved.npz"
    assert main(["embed", "--model", str(saved_model.parent), "--images", str(photos),
                 "--out", str(out), "--batch-size", "3", "--quiet"]) == 0
    return out


def test_embed_writes_ids_unit_vectors_and_the_model_and_names_every_skipped_image(
        keras_photos, keras_model):
    path, stdout = keras_photos
    emb = read_embeddings(path)
    assert emb.kind == "image"
    assert emb.ids == sorted(GOOD_PHOTOS)
    assert emb.embeddings.shape == (6, 32) and emb.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb.embeddings, axis=1), 1.0, atol=1e-6)
    assert emb.model["path"] == str(keras_model.resolve())
    assert emb.model["format"] == "keras" and emb.model["embedding_dim"] == 32
    assert emb.model["fingerprint"] == hashlib.sha256(keras_model.read_bytes()).hexdigest()
    assert emb.model["tokenizer"]["path"] == str(keras_model.parent.resolve() / "tokenizer.model")
    assert emb.meta["count"] == 6
    assert emb.meta["source"] == {"images": str(Path(emb.meta["source"]["images"]))}
    skipped = {entry["id"]: entry["reason"] for entry in emb.meta["skipped"]}
    assert sorted(skipped) == sorted(BAD_PHOTOS)
    for name, reason in BAD_PHOTOS.items():
        assert skipped[name].startswith(reason), (name, skipped[name])
        assert f"  {name}: {reason}" in stdout
    assert "embedded 6 images (32 dims)" in stdout
    assert "skipped 3 images that could not be embedded:" in stdout
    assert "ignored 1 file that is not an image by the suffix: notes.txt" in stdout
    assert emb.meta["other_files"] == ["notes.txt"]


def test_the_savedmodel_embeds_as_the_keras_model_does(keras_photos, saved_photos, saved_model):
    keras_emb, saved_emb = read_embeddings(keras_photos[0]), read_embeddings(saved_photos)
    assert saved_emb.model["format"] == "saved_model"
    assert saved_emb.model["path"] == str(saved_model.resolve())
    assert saved_emb.model["fingerprint"] != keras_emb.model["fingerprint"]
    assert saved_emb.ids == keras_emb.ids
    assert [s["id"] for s in saved_emb.meta["skipped"]] == [s["id"] for s in keras_emb.meta["skipped"]]
    assert float(np.abs(saved_emb.embeddings - keras_emb.embeddings).max()) <= TOLERANCE


def _parse_html(path: Path) -> list[dict]:
    images = []

    class Page(html.parser.HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "img":
                images.append(dict(attrs))

    Page().feed(path.read_text(encoding="utf-8"))
    return images


def test_search_in_its_own_process_finds_the_query_image_first_and_draws_sheets(
        keras_photos, photos, work):
    path, _ = keras_photos
    result = _malign("search", "--embeddings", str(path), "--image", str(photos / "sub/img3.jpg"),
                     "--text", "ein Hund", "-k", "3", "--json", "--sheet", "hits.html",
                     "--sheet", "hits.png", cwd=work)
    out = json.loads(result.stdout)
    first = out["queries"][0]
    assert first["query"] == {"kind": "image", "value": str(photos / "sub/img3.jpg")}
    assert first["hits"][0]["id"] == "sub/img3.jpg"
    assert first["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert all(h["score"] < 0.999 for h in first["hits"][1:])
    assert [h["rank"] for h in first["hits"]] == [1, 2, 3]
    scores = [h["score"] for h in out["queries"][1]["hits"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    assert out["sheets"] == ["hits.html", "hits.png"]
    with Image.open(work / "hits.png") as sheet:
        assert sheet.size == png_sheet_size(2, 3, 128)
    images = _parse_html(work / "hits.html")
    assert len(images) == 1 + 3 + 3  # the query image and the hits of both queries
    assert all(i["src"].startswith("data:image/jpeg;base64,") for i in images)


def _hits(out: dict) -> list[list[tuple[str, float]]]:
    return [[(h["id"], h["score"]) for h in q["hits"]] for q in out["queries"]]


def _same_results(a: dict, b: dict) -> None:
    for hits_a, hits_b in zip(_hits(a), _hits(b)):
        assert [i for i, _ in hits_a] == [i for i, _ in hits_b]
        np.testing.assert_allclose([s for _, s in hits_a], [s for _, s in hits_b], atol=TOLERANCE)


def test_search_via_the_savedmodel_and_via_keras_agree(keras_photos, saved_photos, photos, capsys):
    queries = ["--image", str(photos / "img4.png"), "--text", "a red square",
               "--text", "ein Hund auf der Wiese", "--text", "一只狗", "-k", "6"]
    by_keras = _search_json(capsys, "--embeddings", keras_photos[0], *queries)
    by_saved = _search_json(capsys, "--embeddings", saved_photos, *queries)
    # The table, the default output.
    code, table, err = _run(capsys, "search", "--embeddings", saved_photos, *queries[:2], "-k", "2")
    assert code == 0, err
    assert table.splitlines()[:3] == [f"query 1: image {photos / 'img4.png'}",
                                      "  rank   score  id", "     1  1.0000  img4.png"]
    assert by_saved["query_model"]["format"] == "saved_model"
    assert len(by_keras["queries"]) == 4 and all(len(h) == 6 for h in _hits(by_keras))
    _same_results(by_keras, by_saved)
    assert _hits(by_keras)[0][0][0] == "img4.png"


def test_captions_embed_by_line_and_find_themselves(keras_model, saved_model, captions_file,
                                                    work, capsys):
    keras_out, saved_out = work / "captions-keras.npz", work / "captions-saved.npz"
    code, stdout, _ = _run(capsys, "embed", "--model", keras_model, "--captions", captions_file,
                           "--lang", "mixed", "--out", keras_out, "--quiet")
    assert code == 0
    assert "embedded 5 captions (32 dims)" in stdout and "skipped 1 empty line: 2" in stdout
    assert _run(capsys, "embed", "--model", saved_model, "--captions", captions_file,
                "--out", saved_out, "--quiet")[0] == 0
    keras_emb, saved_emb = read_embeddings(keras_out), read_embeddings(saved_out)
    lines = [(str(n), text) for n, text in enumerate(CAPTIONS, start=1) if text]
    assert list(zip(keras_emb.ids, keras_emb.texts)) == lines
    assert keras_emb.langs == ["mixed"] * 5 and saved_emb.langs == [""] * 5
    assert keras_emb.meta["empty_lines"] == [2]
    assert float(np.abs(saved_emb.embeddings - keras_emb.embeddings).max()) <= TOLERANCE
    texts = [arg for _, text in lines for arg in ("--text", text)]
    results = {}
    for path in (keras_out, saved_out):
        results[path] = out = _search_json(capsys, "--embeddings", path, *texts, "-k", "2")
        for (line, text), query in zip(lines, out["queries"]):
            best = query["hits"][0]
            assert (best["id"], best["text"]) == (line, text)
            assert best["score"] == pytest.approx(1.0, abs=1e-5)
            assert query["hits"][1]["score"] < 0.999
    _same_results(results[keras_out], results[saved_out])
    # Captions as queries against the photos: rows of another file of the same model.
    code, out, err = _run(capsys, "search", "--embeddings", keras_out, "--queries", keras_out,
                          "-k", "1")
    assert code == 0 and out.count("1.0000") == 5, out + err


def test_a_query_of_another_model_is_refused(keras_photos, saved_photos, saved_model, work,
                                             capsys):
    keras_file = keras_photos[0]
    # The export of the same weights is another file: refused, naming both models.
    code, _, err = _run(capsys, "search", "--embeddings", saved_photos, "--text", "a dog",
                        "--model", read_embeddings(keras_file).model["path"])
    assert code == 2
    assert "the query would be embedded by another model than" in err
    assert f"--model {saved_model.resolve()}" in err
    # Other weights of the same architecture.
    other = save_model(distinct_text_model(1), work / "other")
    code, _, err = _run(capsys, "search", "--embeddings", keras_file, "--text", "a dog",
                        "--model", other)
    assert code == 2 and "embeddings of different models are not comparable" in err
    # Another width: a query file of 16-dimensional embeddings.
    narrow = write_embeddings(work / "narrow.npz", Embeddings(
        ["q"], normalise(np.ones((1, 16))), "image",
        model={"path": str(other), "format": "keras", "fingerprint": "0" * 64,
               "embedding_dim": 16, "tokenizer": None}))
    code, _, err = _run(capsys, "search", "--embeddings", keras_file, "--queries", narrow)
    assert code == 2
    assert "the query is 16-dimensional but" in err and "holds 32-dimensional embeddings" in err
    # The recorded model is gone: say so, and how to go on.
    moved = work / "moved.npz"
    emb = read_embeddings(keras_file)
    write_embeddings(moved, Embeddings(emb.ids, emb.embeddings, "image",
                                       model=dict(emb.model, path=str(work / "gone.keras")),
                                       meta=emb.meta))
    code, _, err = _run(capsys, "search", "--embeddings", moved, "--text", "a dog")
    assert code == 2 and "is not there any more; pass --model" in err


def test_empty_folder_unusable_images_and_bad_arguments_are_errors(keras_model, photos, work,
                                                                  capsys):
    empty = work / "empty"
    empty.mkdir()
    code, _, err = _run(capsys, "embed", "--model", keras_model, "--images", empty,
                        "--out", work / "e.npz")
    assert code == 2 and "no images in" in err and "it is empty" in err
    bad = work / "bad"
    bad.mkdir()
    for name in BAD_PHOTOS:
        (bad / name).write_bytes((photos / name).read_bytes())
    code, _, err = _run(capsys, "embed", "--model", keras_model, "--images", bad,
                        "--out", work / "b.npz", "--quiet")
    assert code == 2 and "none of the 3 images could be embedded" in err
    assert not (work / "b.npz").exists()
    code, _, err = _run(capsys, "embed", "--model", keras_model, "--images", photos,
                        "--out", work / "x.npz", "--lang", "de")
    assert code == 2 and "--lang is the language of --captions" in err
    (work / "exists.npz").write_bytes(b"")
    code, _, err = _run(capsys, "embed", "--model", keras_model, "--images", photos,
                        "--out", work / "exists.npz")
    assert code == 2 and "exists; pass --overwrite" in err
    code, _, err = _run(capsys, "search", "--embeddings", work / "none.npz", "--text", "x")
    assert code == 2 and "embeddings file not found" in err
    code, _, err = _run(capsys, "search", "--embeddings", work / "exists.npz")
    assert code == 2 and "give at least one query" in err


def test_record_images_embed_by_record_id_and_fill_the_sheet(saved_model, work, capsys):
    records = work / "records" / "scenes"
    assert main(["data", "synthetic", "--out", str(records), "--n", "5"]) == 0
    out = work / "scenes.npz"
    code, stdout, err = _run(capsys, "embed", "--model", saved_model, "--data", records,
                             "--out", out, "--quiet")
    assert code == 0, err
    emb = read_embeddings(out)
    assert emb.count == 5 and len(set(emb.ids)) == 5
    assert emb.meta["source"]["data"] == str(records)
    hit = _search_json(capsys, "--embeddings", out, "--queries", out, "-k", "5",
                       "--sheet", str(work / "scenes.html"))
    for row_id, query in zip(emb.ids, hit["queries"]):
        assert query["hits"][0]["id"] == row_id
    images = _parse_html(work / "scenes.html")
    assert len(images) == 5 * 5 + 5  # every hit and every query shows its record's image
    code, _, err = _run(capsys, "search", "--embeddings", out, "--queries", out, "-k", "50")
    assert code == 0 and "holds 5 images, fewer than -k 50: all are shown" in err
