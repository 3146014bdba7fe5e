"""Contact sheets: the PNG grid's size and cells, the HTML page's images, links and escaping."""

from __future__ import annotations

import base64
import html.parser
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from malign.search.contact_sheet import (
    LABEL_HEIGHT,
    PADDING,
    png_sheet_size,
    write_html_sheet,
    write_png_sheet,
    write_sheet,
)
from malign.search.embeddings_file import Embeddings, normalise
from malign.search.query import Query, search

IDS = ["img0.jpg", "img2.png", "sub/img1.png", "gone.png"]  # gone.png: not in the folder


def _gallery() -> Embeddings:
    vectors = normalise(np.random.default_rng(0).standard_normal((len(IDS), 8)))
    return Embeddings(IDS, vectors, "image", model={"path": "/m.keras", "embedding_dim": 8})


def _folder_source(root: Path):
    def bytes_of(image_id: str):
        try:
            return (root / image_id).read_bytes()
        except OSError:
            return None

    return bytes_of, lambda image_id: root / image_id


def _results(gallery: Embeddings, k: int):
    # Query 0: the gallery's first image itself; query 1: a text whose vector is row 3's.
    return search(gallery, gallery.embeddings[[0, 3]], k)


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.text, self.stack = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag not in ("meta", "img", "br"):
            self.stack.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack)
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.stack == [], f"unclosed tags {page.stack}"
    return page


def test_png_sheet_has_one_row_per_query_and_a_cell_per_hit(photos, tmp_path):
    gallery = _gallery()
    results = _results(gallery, 3)
    queries = [Query("image", "img0.jpg"), Query("text", "ein <Hund>")]
    out = tmp_path / "sheet.png"
    missing = write_png_sheet(out, queries, results, gallery, _folder_source(photos),
                              [(photos / "img0.jpg").read_bytes(), None], thumb_size=64)
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == png_sheet_size(2, 3, 64) == (8 + 4 * 72, 8 + 2 * (64 + 28 + 8))
        pixels = np.asarray(image.convert("RGB"))
    assert (PADDING, LABEL_HEIGHT) == (8, 28)
    # gone.png is the text query's first hit (row 3 of the gallery): a grey cell, counted.
    assert results[1][0].id == "gone.png"
    assert missing == 1
    row1 = PADDING + 64 + LABEL_HEIGHT + PADDING
    grey = pixels[row1 + 2: row1 + 20, PADDING + 72 + 2: PADDING + 72 + 20]
    assert (grey == 200).all()
    # The query image and its own hit show the same picture (img0.jpg scaled to the cell).
    query_cell = pixels[PADDING:PADDING + 64, PADDING:PADDING + 64]
    hit_cell = pixels[PADDING:PADDING + 64, PADDING + 72:PADDING + 72 + 64]
    assert results[0][0].id == "img0.jpg"
    np.testing.assert_array_equal(query_cell, hit_cell)
    assert query_cell.std() > 10  # a picture, not the white background


def test_png_sheet_of_captions_is_refused(tmp_path):
    captions = Embeddings(["1"], normalise([[1.0, 0.0]]), "text", ["a dog"], ["en"],
                          model={"path": "/m.keras", "embedding_dim": 2})
    results = search(captions, captions.embeddings, 1)
    with pytest.raises(ValueError, match="PNG contact sheet shows image hits"):
        write_png_sheet(tmp_path / "s.png", [Query("text", "dog")], results, captions,
                        (lambda i: None, lambda i: None), [None])
    with pytest.raises(ValueError, match="must be .html, .htm or .png"):
        write_sheet(tmp_path / "s.pdf", [], [], captions, None, [], [])


def test_html_sheet_embeds_thumbnails_and_escapes_text(photos, tmp_path):
    gallery = _gallery()
    results = _results(gallery, 3)
    queries = [Query("image", str(photos / "img0.jpg")), Query("text", "ein <Hund> & \"Katze\"")]
    out = tmp_path / "out" / "sheet.html"
    missing = write_html_sheet(out, queries, results, gallery, _folder_source(photos),
                               [(photos / "img0.jpg").read_bytes(), None],
                               [photos / "img0.jpg", None], thumb_size=48)
    page = _parse(out)
    assert missing == 1  # gone.png
    # The query image, then 3 + 2 hit images (gone.png has a "not available" box instead).
    assert len(page.images) == 1 + 3 + 2
    for attrs in page.images:
        prefix = "data:image/jpeg;base64,"
        assert attrs["src"].startswith(prefix)
        with Image.open(io.BytesIO(base64.b64decode(attrs["src"][len(prefix):]))) as thumb:
            assert max(thumb.size) == 48
    text = " ".join(page.text)
    assert 'text "ein <Hund> & "Katze""' in text  # shown as typed (escaped in the source)
    assert "<Hund>" not in out.read_text(encoding="utf-8")
    for hit in results[0] + results[1]:
        assert f"{hit.score:.4f}" in text and hit.id in text
    assert "not available" in text


def test_html_sheet_links_images_by_relative_path(photos, tmp_path):
    gallery = _gallery()
    results = _results(gallery, 2)
    out = tmp_path / "deep" / "er" / "sheet.html"
    write_html_sheet(out, [Query("text", "a"), Query("text", "b")], results, gallery,
                     _folder_source(photos), [None, None], [None, None], thumbnails="link")
    sources = [attrs["src"] for attrs in _parse(out).images]
    assert len(sources) == 3  # four hits, one of them gone.png
    for src in sources:
        assert not src.startswith(("data:", "/"))
        assert (out.parent / src).resolve().is_file()
    assert {Path(s).name for s in sources} <= {Path(i).name for i in IDS}


def test_html_sheet_of_captions_shows_the_captions(tmp_path):
    captions = Embeddings(["1", "3"], normalise([[1.0, 0.0], [0.0, 1.0]]), "text",
                          ["a dog", "ein <b>Hund</b>"], ["en", "de"],
                          model={"path": "/m.keras", "embedding_dim": 2})
    results = search(captions, normalise([[0.1, 1.0]]), 2)
    out = tmp_path / "captions.html"
    write_html_sheet(out, [Query("text", "Hund")], results, captions,
                     (lambda i: None, lambda i: None), [None], [None])
    page = _parse(out)
    assert page.images == []
    assert "ein <b>Hund</b>" in " ".join(page.text)
