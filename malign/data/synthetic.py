"""Synthetic demo data: drawn scenes with captions in English, German, French and Czech.

Each image shows one or two groups of identical shapes (1-3 each) on a plain background; the
captions in the four languages are generated from the same scene description, with correct
number, gender and case agreement, for example:

- en: "Two red circles and a blue square on a white background"
- de: "Zwei rote Kreise und ein blaues Quadrat auf weißem Hintergrund"
- fr: "Deux cercles rouges et un carré bleu sur fond blanc"
- cs: "Dva červené kruhy a modrý čtverec na bílém pozadí"

The attributes (6 colours, 4 shapes, counts 1-3, 3 backgrounds) are few and visually
distinct, so a small dual encoder learns to align images and captions in minutes on a CPU.
All shapes are symmetric under a left-right flip and drawn away from the borders, so the
training crop and flip never change what the caption says.

Example:
    >>> scene = random_scene(np.random.default_rng(0))
    >>> sorted(scene.captions())
    ['cs', 'de', 'en', 'fr']
    >>> draw_scene(scene, 64, np.random.default_rng(0)).shape
    (64, 64, 3)
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Iterator

import numpy as np

from malign.data.schema import ImageTextExample
from malign.data.writer import WriteStats, write_examples

LANGUAGES = ("en", "de", "fr", "cs")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 185),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "star")
BACKGROUNDS = {"white": (240, 240, 240), "black": (25, 25, 25), "gray": (125, 125, 125)}
MAX_COUNT = 3

# -- the four languages ------------------------------------------------------------------------
_EN_NUMBERS = {1: "a", 2: "two", 3: "three"}
_EN_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars"}

# German: gender and plural of each noun; colour stems take strong endings.
_DE_NOUNS = {
    "circle": ("m", "Kreis", "Kreise"),
    "square": ("n", "Quadrat", "Quadrate"),
    "triangle": ("n", "Dreieck", "Dreiecke"),
    "star": ("m", "Stern", "Sterne"),
}
_DE_COLORS = {
    "red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb",
    "purple": "violett", "orange": "orangefarben",
}
_DE_NUMBERS = {2: "zwei", 3: "drei"}
_DE_BACKGROUNDS = {"white": "weißem", "black": "schwarzem", "gray": "grauem"}

# French: gender and plural; adjective forms (m sg, f sg, m pl, f pl).
_FR_NOUNS = {
    "circle": ("m", "cercle", "cercles"),
    "square": ("m", "carré", "carrés"),
    "triangle": ("m", "triangle", "triangles"),
    "star": ("f", "étoile", "étoiles"),
}
_FR_COLORS = {
    "red": ("rouge", "rouge", "rouges", "rouges"),
    "green": ("vert", "verte", "verts", "vertes"),
    "blue": ("bleu", "bleue", "bleus", "bleues"),
    "yellow": ("jaune", "jaune", "jaunes", "jaunes"),
    "purple": ("violet", "violette", "violets", "violettes"),
    "orange": ("orange", "orange", "orange", "orange"),
}
_FR_NUMBERS = {2: "deux", 3: "trois"}
_FR_BACKGROUNDS = {"white": "blanc", "black": "noir", "gray": "gris"}

# Czech: gender and nominative plural; adjective stems (hard declension: -ý / -á / -é).
_CS_NOUNS = {
    "circle": ("m", "kruh", "kruhy"),
    "square": ("m", "čtverec", "čtverce"),
    "triangle": ("m", "trojúhelník", "trojúhelníky"),
    "star": ("f", "hvězda", "hvězdy"),
}
_CS_COLORS = {
    "red": "červen", "green": "zelen", "blue": "modr", "yellow": "žlut",
    "purple": "fialov", "orange": "oranžov",
}
_CS_BACKGROUNDS = {"white": "bílém", "black": "černém", "gray": "šedém"}


@dataclasses.dataclass(frozen=True)
class Group:
    """``count`` shapes of one colour and kind.

    Args:
        count: 1 to 3.
        color: a key of :data:`COLORS`.
        shape: one of :data:`SHAPES`.
    """

    count: int
    color: str
    shape: str

    def en(self) -> str:
        noun = self.shape if self.count == 1 else _EN_PLURAL[self.shape]
        return f"{_EN_NUMBERS[self.count]} {self.color} {noun}"

    def de(self) -> str:
        gender, singular, plural = _DE_NOUNS[self.shape]
        stem = _DE_COLORS[self.color]
        if self.count == 1:
            return f"ein {stem}{'er' if gender == 'm' else 'es'} {singular}"
        return f"{_DE_NUMBERS[self.count]} {stem}e {plural}"

    def fr(self) -> str:
        gender, singular, plural = _FR_NOUNS[self.shape]
        forms = _FR_COLORS[self.color]
        if self.count == 1:
            article = "un" if gender == "m" else "une"
            return f"{article} {singular} {forms[0 if gender == 'm' else 1]}"
        return f"{_FR_NUMBERS[self.count]} {plural} {forms[2 if gender == 'm' else 3]}"

    def cs(self) -> str:
        gender, singular, plural = _CS_NOUNS[self.shape]
        stem = _CS_COLORS[self.color]
        if self.count == 1:
            return f"{stem}{'ý' if gender == 'm' else 'á'} {singular}"
        number = "tři" if self.count == 3 else ("dva" if gender == "m" else "dvě")
        return f"{number} {stem}é {plural}"


@dataclasses.dataclass(frozen=True)
class Scene:
    """A background and one or two groups of shapes.

    Args:
        background: a key of :data:`BACKGROUNDS`.
        groups: one or two :class:`Group` s differing in colour or shape.
    """

    background: str
    groups: tuple[Group, ...]

    def caption(self, lang: str) -> str:
        """The caption in ``lang`` (one of :data:`LANGUAGES`).

        Example:
            >>> Scene("white", (Group(2, "red", "star"),)).caption("fr")
            'Deux étoiles rouges sur fond blanc'
        """
        parts = [getattr(g, lang)() for g in self.groups]
        if lang == "en":
            text = " and ".join(parts) + f" on a {self.background} background"
        elif lang == "de":
            text = " und ".join(parts) + f" auf {_DE_BACKGROUNDS[self.background]} Hintergrund"
        elif lang == "fr":
            text = " et ".join(parts) + f" sur fond {_FR_BACKGROUNDS[self.background]}"
        elif lang == "cs":
            text = " a ".join(parts) + f" na {_CS_BACKGROUNDS[self.background]} pozadí"
        else:
            raise ValueError(f"no synthetic captions in {lang!r}; languages: {LANGUAGES}")
        return text[0].upper() + text[1:]

    def captions(self) -> dict[str, str]:
        """Captions in every language of :data:`LANGUAGES`."""
        return {lang: self.caption(lang) for lang in LANGUAGES}


def random_scene(rng: np.random.Generator) -> Scene:
    """Draws a scene description: a background and one or two distinct groups.

    Args:
        rng: a numpy random generator.

    Example:
        >>> random_scene(np.random.default_rng(1)).background in BACKGROUNDS
        True
    """
    background = str(rng.choice(list(BACKGROUNDS)))
    colors = [c for c in COLORS]
    groups: list[Group] = []
    for _ in range(int(rng.integers(1, 3))):
        while True:
            group = Group(int(rng.integers(1, MAX_COUNT + 1)), str(rng.choice(colors)),
                          str(rng.choice(SHAPES)))
            if all((group.color, group.shape) != (g.color, g.shape) for g in groups):
                break
        groups.append(group)
    return Scene(background, tuple(groups))


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple]:
    if shape == "square":
        corners = [(r * math.cos(a), r * math.sin(a)) for a in
                   (math.pi / 4 + k * math.pi / 2 for k in range(4))]
    elif shape == "triangle":
        corners = [(r * math.cos(a), r * math.sin(a)) for a in
                   (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif shape == "star":
        corners = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            radius = r if k % 2 == 0 else r * 0.45
            corners.append((radius * math.cos(a), radius * math.sin(a)))
    else:
        raise ValueError(shape)
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in corners]


def draw_scene(scene: Scene, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Renders a scene as a uint8 RGB array ``[image_size, image_size, 3]``.

    Shapes have random size, position (non-overlapping, away from the borders that the
    evaluation crop removes), small tilt and colour jitter; the background has mild noise.

    Args:
        scene: the description.
        image_size: the side of the square image.
        rng: a numpy random generator.

    Example:
        >>> img = draw_scene(Scene("black", (Group(1, "red", "circle"),)), 32,
        ...                  np.random.default_rng(0))
        >>> img.dtype, img.shape
        (dtype('uint8'), (32, 32, 3))
    """
    from PIL import Image, ImageDraw

    scale = 4  # draw large, downsample: antialiased edges
    side = image_size * scale
    background = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    objects = [(g.color, g.shape) for g in scene.groups for _ in range(g.count)]
    margin = 0.12 * side
    for attempt in range(200):
        shrink = 0.97 ** attempt
        radii = rng.uniform(0.075, 0.11, size=len(objects)) * side * shrink
        centers: list[tuple[float, float]] = []
        for r in radii:
            for _ in range(100):
                c = rng.uniform(margin + r, side - margin - r, size=2)
                if all(math.dist(c, d) > r + q + 0.03 * side for d, q in zip(centers, radii)):
                    centers.append((float(c[0]), float(c[1])))
                    break
            else:
                break
        if len(centers) == len(objects):
            break
    else:  # pragma: no cover - six small shapes always fit
        raise RuntimeError("could not place the shapes")
    image = Image.new("RGB", (side, side), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(image)
    for (color, shape), (cx, cy), r in zip(objects, centers, radii):
        rgb = np.clip(np.array(COLORS[color]) + rng.integers(-18, 19, size=3), 0, 255)
        fill = tuple(int(v) for v in rgb)
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            angle = float(rng.uniform(-0.2, 0.2))
            draw.polygon(_polygon(shape, cx, cy, r, angle), fill=fill)
    image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.normal(0.0, 4.0, size=pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _encode(pixels: np.ndarray, image_format: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    if image_format == "png":
        Image.fromarray(pixels).save(out, format="PNG")
    elif image_format == "jpeg":
        Image.fromarray(pixels).save(out, format="JPEG", quality=92)
    else:
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    return out.getvalue()


def synthetic_examples(
    n: int, image_size: int = 64, seed: int = 0, image_format: str = "png"
) -> Iterator[ImageTextExample]:
    """Yields ``n`` synthetic records (image + four captions), reproducibly from ``seed``.

    Args:
        n: the number of images.
        image_size: their side in pixels.
        seed: the random seed; different seeds give different scenes (held-out sets).
        image_format: ``"png"`` or ``"jpeg"``.

    Example:
        >>> ex = next(synthetic_examples(1, image_size=32))
        >>> ex.langs
        ['en', 'de', 'fr', 'cs']
    """
    rng = np.random.default_rng(seed)
    for i in range(n):
        scene = random_scene(rng)
        pixels = draw_scene(scene, image_size, rng)
        captions = scene.captions()
        yield ImageTextExample(
            image_id=f"synthetic-{seed}-{i:07d}",
            image_bytes=_encode(pixels, image_format),
            image_format=image_format,
            captions=[captions[lang] for lang in LANGUAGES],
            langs=list(LANGUAGES),
        )


def synthetic_captions(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``(lang, caption)`` pairs of ``n`` random scenes, without drawing (for vocabularies).

    Args:
        n: the number of scenes.
        seed: the random seed.

    Example:
        >>> synthetic_captions(1, seed=3)[0][0]
        'en'
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene = random_scene(rng)
        out.extend((lang, scene.caption(lang)) for lang in LANGUAGES)
    return out


def write_synthetic(
    out_prefix: str | os.PathLike,
    n: int,
    image_size: int = 64,
    seed: int = 0,
    shards: int = 1,
    image_format: str = "png",
    verbose: bool = True,
) -> WriteStats:
    """Writes ``n`` synthetic records as TFRecord shards in the malign schema.

    Args:
        out_prefix: where the shards go (``{out_prefix}-00000-of-00001.tfrecord``).
        n: the number of images.
        image_size: their side in pixels.
        seed: the random seed; use different seeds for training and held-out sets.
        shards: the number of shard files.
        image_format: ``"png"`` or ``"jpeg"``.
        verbose: print progress and a summary.

    Returns:
        The write's stats.

    Example:
        >>> write_synthetic("/tmp/malign-demo/train", 2000, seed=0)  # doctest: +SKIP
        >>> write_synthetic("/tmp/malign-demo/val", 200, seed=1)  # doctest: +SKIP
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    examples = synthetic_examples(n, image_size, seed, image_format)
    return write_examples(examples, out_prefix, shards=shards, total=n, verbose=verbose)
