"""Contact sheets of search results: an HTML page or a PNG grid, one row per query.

Each row starts with the query (its image, or its text) and shows the hits left to right,
best first, each labelled with its rank, cosine score and id.

- HTML (:func:`write_html_sheet`): images are embedded as base64 JPEG thumbnails (the
  page stands alone), or, with ``thumbnails="link"``, referenced by their path relative
  to the page (images from a folder only; the page then shows the full files). Hits of a
  caption file show the captions. Every text is HTML-escaped.
- PNG (:func:`write_png_sheet`): a grid drawn with Pillow, of images only; its size
  follows from the numbers of queries and hits (:func:`png_sheet_size`).

An image that cannot be read or decoded (moved, deleted, a format Pillow lacks) is shown
as a grey "not available" cell and counted in the returned number.

Example:
    >>> png_sheet_size(rows=2, hits=5, thumb_size=96)
    (632, 272)
"""

from __future__ import annotations

import base64
import html
import io
import os
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

from malign import atomic_files
from malign.search.embeddings_file import Embeddings
from malign.search.query import Hit, Query

__all__ = [
    "LABEL_HEIGHT",
    "PADDING",
    "SHEET_SUFFIXES",
    "ImageSource",
    "load_thumbnail",
    "png_sheet_size",
    "write_html_sheet",
    "write_png_sheet",
    "write_sheet",
]

SHEET_SUFFIXES = (".html", ".htm", ".png")
#: Pixels between cells and around the grid of a PNG sheet.
PADDING = 8
#: Pixels under each thumbnail of a PNG sheet for its two label lines (rank/score, id).
LABEL_HEIGHT = 28
_FONT_SIZE = 11
_BACKGROUND = (255, 255, 255)
_MISSING = (200, 200, 200)
_THUMB_QUALITY = 85

#: Where the images come from: ``bytes_of(id)`` gives an image's bytes (or None), and
#: ``path_of(id)`` its file (or None) for linking.
ImageSource = tuple[Callable[[str], bytes | None], Callable[[str], Path | None]]


def png_sheet_size(rows: int, hits: int, thumb_size: int) -> tuple[int, int]:
    """``(width, height)`` of a PNG sheet: ``rows`` queries, each a query cell plus ``hits``.

    Each cell is ``thumb_size`` wide and ``thumb_size + LABEL_HEIGHT`` high, with
    ``PADDING`` pixels between cells and around the grid.

    Example:
        >>> png_sheet_size(1, 3, 64)
        (296, 108)
    """
    width = PADDING + (hits + 1) * (thumb_size + PADDING)
    height = PADDING + rows * (thumb_size + LABEL_HEIGHT + PADDING)
    return width, height


def load_thumbnail(data: bytes | None, size: int):
    """A Pillow RGB image scaled to fit ``size x size`` (upright by its EXIF tag), or None.

    Args:
        data: an encoded image file (None gives None).
        size: the largest side.

    Example:
        >>> load_thumbnail(b"not an image", 64) is None
        True
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            return ImageOps.contain(image, (size, size))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(_FONT_SIZE)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    """``text`` on one line, cut with "…" to ``width`` pixels."""
    text = " ".join(text.split())
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _draw_text(draw, xy: tuple[int, int], text: str, font) -> None:
    try:
        draw.text(xy, text, fill=(0, 0, 0), font=font)
    except UnicodeEncodeError:  # a bitmap font without these characters
        draw.text(xy, text.encode("latin-1", "replace").decode("latin-1"), fill=(0, 0, 0), font=font)


def _wrap(draw, text: str, font, width: int, lines: int) -> list[str]:
    words, out, line = text.split(), [], ""
    for word in words:
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            out.append(line)
            line = word
    out.append(line)
    if len(out) > lines:
        out = out[:lines]
        out[-1] = _fit(draw, out[-1] + " …", font, width)
    return [_fit(draw, part, font, width) for part in out]


def write_png_sheet(path: str | os.PathLike, queries: Sequence[Query], results: Sequence[Sequence[Hit]],
                    gallery: Embeddings, images: ImageSource,
                    query_images: Sequence[bytes | None], thumb_size: int = 128) -> int:
    """Draws the results as a PNG grid (see :func:`png_sheet_size`).

    Args:
        path: the ``.png`` to write.
        queries: the queries.
        results: their hits (:func:`malign.search.query.search`).
        gallery: the embeddings searched; must hold images.
        images: where the hit images come from.
        query_images: each query's image bytes (None for a text query).
        thumb_size: the side of a thumbnail.

    Returns:
        The number of images that were not available (drawn as grey cells).

    Raises:
        ValueError: a gallery of captions (a PNG sheet shows images; use HTML or --json).

    Example:
        >>> write_png_sheet("hits.png", queries, results, gallery, source, [None])  # doctest: +SKIP
        0
    """
    from PIL import Image, ImageDraw

    if gallery.kind != "image":
        raise ValueError("a PNG contact sheet shows image hits, but these embeddings are "
                         "captions: write an HTML sheet (--sheet out.html) or use --json")
    hits_per_row = max((len(h) for h in results), default=0)
    width, height = png_sheet_size(len(queries), hits_per_row, thumb_size)
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font()
    bytes_of, _ = images
    missing = 0
    line_height = LABEL_HEIGHT // 2

    def cell(col: int, row: int, image, lines: list[str], placeholder: str | None) -> None:
        x = PADDING + col * (thumb_size + PADDING)
        y = PADDING + row * (thumb_size + LABEL_HEIGHT + PADDING)
        if image is not None:
            sheet.paste(image, (x + (thumb_size - image.width) // 2,
                                y + (thumb_size - image.height) // 2))
        elif placeholder is not None:
            draw.rectangle([x, y, x + thumb_size - 1, y + thumb_size - 1], fill=_MISSING)
            _draw_text(draw, (x + 4, y + thumb_size // 2 - 6), placeholder, font)
        for n, line in enumerate(lines):
            _draw_text(draw, (x, y + thumb_size + 2 + n * line_height),
                       _fit(draw, line, font, thumb_size), font)

    for row, (query, hits, query_image) in enumerate(zip(queries, results, query_images)):
        if query.kind == "text" or (query_image is None and query.text):
            text = query.value if query.kind == "text" else query.text
            x = PADDING
            y = PADDING + row * (thumb_size + LABEL_HEIGHT + PADDING)
            draw.rectangle([x, y, x + thumb_size - 1, y + thumb_size - 1], outline=(0, 0, 0))
            max_lines = max(1, (thumb_size - 8) // line_height)
            for n, line in enumerate(_wrap(draw, f'"{text}"', font, thumb_size - 8, max_lines)):
                _draw_text(draw, (x + 4, y + 4 + n * line_height), line, font)
            cell(0, row, None, ["query", ""], None)
        else:
            image = load_thumbnail(query_image, thumb_size)
            missing += image is None
            cell(0, row, image, ["query", query.value], "not available")
        for hit in hits:
            image = load_thumbnail(bytes_of(hit.id), thumb_size)
            missing += image is None
            cell(hit.rank, row, image, [f"#{hit.rank}: {hit.score:.4f}", hit.id], "not available")
    with atomic_files.replacing(path) as tmp:
        sheet.save(tmp, format="PNG")
    return missing


def _data_uri(data: bytes | None, size: int) -> str | None:
    image = load_thumbnail(data, size)
    if image is None:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=_THUMB_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _link(target: Path | None, page_dir: Path) -> str | None:
    if target is None or not target.is_file():
        return None
    return urllib.parse.quote(Path(os.path.relpath(target.resolve(), page_dir)).as_posix())


_STYLE = """
body { font-family: sans-serif; margin: 1em; }
section { margin-bottom: 1.5em; }
.row { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
figure { margin: 0; width: SIZEpx; font-size: 12px; }
figure img { max-width: SIZEpx; max-height: SIZEpx; display: block; }
figure.query { border-right: 2px solid #888; padding-right: 8px; }
.missing, .caption { width: SIZEpx; height: SIZEpx; background: #ddd; display: flex;
  align-items: center; justify-content: center; text-align: center; overflow: hidden; }
.caption { background: #f4f4f4; height: auto; min-height: 3em; padding: 4px; }
.score { font-weight: bold; }
figcaption { overflow-wrap: anywhere; }
"""


def write_html_sheet(path: str | os.PathLike, queries: Sequence[Query], results: Sequence[Sequence[Hit]],
                     gallery: Embeddings, images: ImageSource,
                     query_images: Sequence[bytes | None], query_paths: Sequence[Path | None],
                     thumb_size: int = 160, thumbnails: str = "embed", title: str = "") -> int:
    """Writes the results as an HTML page.

    Args:
        path: the ``.html`` to write.
        queries: the queries.
        results: their hits.
        gallery: the embeddings searched.
        images: where the hit images come from (unused for captions).
        query_images: each query's image bytes (None for a text query).
        query_paths: each query's image file (for links; None for a text query).
        thumb_size: the largest side of a shown image, in CSS pixels.
        thumbnails: "embed" (base64 JPEG thumbnails) or "link" (relative paths).
        title: the page's heading.

    Returns:
        The number of images that were not available.

    Raises:
        ValueError: an unknown ``thumbnails`` mode.

    Example:
        >>> write_html_sheet("hits.html", queries, results, gallery, source, [None], [None])
        ... # doctest: +SKIP
        0
    """
    if thumbnails not in ("embed", "link"):
        raise ValueError(f"thumbnails must be 'embed' or 'link', got {thumbnails!r}")
    page_dir = Path(path).resolve().parent
    bytes_of, path_of = images
    esc = html.escape
    missing = 0

    def image_tag(data: Callable[[], bytes | None], file: Path | None, alt: str) -> str:
        nonlocal missing
        src = _link(file, page_dir) if thumbnails == "link" else _data_uri(data(), thumb_size)
        if src is None:
            missing += 1
            return '<div class="missing">not available</div>'
        return f'<img src="{esc(src)}" alt="{esc(alt)}" loading="lazy">'

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{esc(title or 'malign search')}</title>",
        f"<style>{_STYLE.replace('SIZE', str(int(thumb_size)))}</style>",
        "</head>",
        "<body>",
        f"<h1>{esc(title or 'malign search')}</h1>",
        f"<p>{gallery.count} {gallery.kind}s embedded by {esc(str(gallery.model.get('path')))}; "
        "scores are cosine similarities.</p>",
    ]
    for query, hits, query_image, query_path in zip(queries, results, query_images, query_paths):
        parts.append('<section class="query">')
        parts.append(f"<h2>{esc(query.label)}</h2>")
        parts.append('<div class="row">')
        if query.kind == "image" or query_image is not None or query_path is not None:
            tag = image_tag(lambda data=query_image: data, query_path, query.value)
            parts.append(f'<figure class="query">{tag}<figcaption>query<br>{esc(query.value)}'
                         "</figcaption></figure>")
        elif query.kind == "embedding" and query.text:
            parts.append(f'<figure class="query"><div class="caption">{esc(query.text)}</div>'
                         f"<figcaption>query<br>{esc(query.value)}</figcaption></figure>")
        for hit in hits:
            label = (f'<span class="rank">#{hit.rank}</span> '
                     f'<span class="score">{hit.score:.4f}</span><br>'
                     f'<span class="id">{esc(hit.id)}</span>')
            if gallery.kind == "text":
                lang = gallery.langs[hit.index] if gallery.langs else ""
                body = (f'<div class="caption" lang="{esc(lang)}">'
                        f"{esc(gallery.source_text(hit.index))}</div>")
            else:
                body = image_tag(lambda i=hit.id: bytes_of(i), path_of(hit.id), hit.id)
            parts.append(f'<figure class="hit">{body}<figcaption>{label}</figcaption></figure>')
        parts.append("</div>")
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    atomic_files.write_text(path, "\n".join(parts))
    return missing


def write_sheet(path: str | os.PathLike, queries: Sequence[Query], results: Sequence[Sequence[Hit]],
                gallery: Embeddings, images: ImageSource, query_images: Sequence[bytes | None],
                query_paths: Sequence[Path | None], thumb_size: int = 128,
                thumbnails: str = "embed", title: str = "") -> int:
    """Writes an HTML or PNG sheet, by the suffix of ``path``; returns the images not available.

    Raises:
        ValueError: a suffix other than .html, .htm or .png.

    Example:
        >>> write_sheet("hits.pdf", [], [], None, None, [], [])
        Traceback (most recent call last):
        ...
        ValueError: a contact sheet must be .html, .htm or .png, got hits.pdf
    """
    suffix = Path(path).suffix.lower()
    if suffix not in SHEET_SUFFIXES:
        raise ValueError(f"a contact sheet must be {', '.join(SHEET_SUFFIXES[:-1])} or "
                         f"{SHEET_SUFFIXES[-1]}, got {path}")
    if suffix == ".png":
        return write_png_sheet(path, queries, results, gallery, images, query_images, thumb_size)
    return write_html_sheet(path, queries, results, gallery, images, query_images, query_paths,
                            thumb_size, thumbnails, title)
