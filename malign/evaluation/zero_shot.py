"""Zero-shot image classification with prompt ensembling, in any language.

Each class name is put into every prompt template of a language ("a photo of
a {}."), the prompts are embedded, and the class embedding is the mean of the
L2-normalised prompt embeddings, normalised again (prompt ensembling, as in
CLIP and ALIGN). An image is classified by its inner product with every class
embedding. Accuracy is reported as top-1 and top-5 (top-K counts a hit when
the label is among the K best classes; all classes when there are fewer than
K), as top-1 per class and their mean (for unbalanced sets), with the confusion
matrix of top-1 predictions and the chance level of each number
(``malign.evaluation.chance``): a model that puts every image in one class
shows 100 for that class and 0 for the others. Ties between classes are
broken by class order (the class listed first ranks higher), as everywhere
in ``malign.evaluation``.

Class names come per language, aligned by position (class ``i`` is the same
class in every language); English prompt templates are built in
(``DEFAULT_TEMPLATES``), other languages bring their own.

Files:

* classes: ``.txt`` with one class name per line (in one language), or
  ``.json`` holding a list of names, or ``{"en": [...], "de": [...]}``.
* templates: ``.txt`` with one template per line (one language), or ``.json``
  ``{"de": ["ein Foto von {}.", ...], ...}``; every template holds ``{}``.

Labelled images: a record set of the malign schema in which every image has
a caption equal to its class name (in any of the given languages; compared
case-insensitively after stripping spaces), or a directory with one
sub-directory per class (``root/<class name>/*.jpg``).

Example:
    >>> import numpy as np
    >>> prompts = np.array([[[1.0, 0.0], [0.8, 0.6]], [[0.0, 1.0], [0.0, 1.0]]])  # [C, T, D]
    >>> classes = ensemble_prompts(prompts)
    >>> r = zero_shot_accuracy(np.array([[1.0, 0.1], [0.1, 1.0]]), classes, [0, 1], ks=(1,))
    >>> r["top1"], r["per_class_top1"], r["confusion"]
    (100.0, [100.0, 100.0], [[1, 0], [0, 1]])
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from malign.evaluation.chance import classification_chance
from malign.evaluation.retrieval import top_k_search

__all__ = [
    "DEFAULT_TEMPLATES",
    "build_classifier",
    "confusion_matrix",
    "describe_classes",
    "ensemble_prompts",
    "evaluate_zero_shot",
    "labels_from_captions",
    "load_class_names",
    "load_templates",
    "per_class_accuracy",
    "read_image_folder",
    "zero_shot_accuracy",
]

#: English prompt templates (a subset of CLIP's ImageNet prompts).
DEFAULT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": (
        "a photo of a {}.",
        "a bad photo of a {}.",
        "a photo of many {}.",
        "a sculpture of a {}.",
        "a rendering of a {}.",
        "a cropped photo of the {}.",
        "a close-up photo of a {}.",
        "a bright photo of a {}.",
        "a dark photo of the {}.",
        "a blurry photo of the {}.",
        "a photo of the small {}.",
        "a photo of the large {}.",
        "art of the {}.",
        "a drawing of a {}.",
        "a good photo of the {}.",
        "itap of a {}.",
        "a photo of one {}.",
        "a low resolution photo of the {}.",
    )
}

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def _normalise(name: str) -> str:
    return " ".join(name.split()).casefold()


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_class_names(path: str | os.PathLike, language: str = "en") -> dict[str, list[str]]:
    """Reads class names per language; class ``i`` is the same class in every language.

    Args:
        path: ``.txt`` (one name per line), ``.json`` list of names, or ``.json``
            mapping language → list of names.
        language: the language of a ``.txt`` file or a JSON list.

    Returns:
        ``{language: [names]}``.

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: on empty or duplicate names, or lists of different lengths.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp(), "c.json")
        >>> _ = p.write_text('{"en": ["dog", "cat"], "de": ["Hund", "Katze"]}')
        >>> load_class_names(p)["de"]
        ['Hund', 'Katze']
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classes file not found: {path}")
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, list):
            data = {language: data}
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise ValueError(f"{path}: expected a list of class names or a mapping language -> list")
    else:
        data = {language: _read_lines(path)}
    names = {str(lang): [str(n).strip() for n in values] for lang, values in data.items()}
    lengths = {lang: len(values) for lang, values in names.items()}
    if not names or min(lengths.values()) == 0:
        raise ValueError(f"{path}: no class names")
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{path}: languages list different numbers of classes: {lengths}")
    for lang, values in names.items():
        if any(not v for v in values):
            raise ValueError(f"{path}: an empty class name in language {lang}")
        seen: dict[str, int] = {}
        for i, v in enumerate(values):
            if _normalise(v) in seen:
                raise ValueError(
                    f"{path}: class name {v!r} ({lang}) is listed twice (classes {seen[_normalise(v)]} and {i})"
                )
            seen[_normalise(v)] = i
    return names


def load_templates(
    languages: Sequence[str], path: str | os.PathLike | None = None
) -> dict[str, list[str]]:
    """Prompt templates for each language: from ``path``, else the built-in English set.

    Args:
        languages: the languages that need templates.
        path: ``.txt`` (one template per line, only with a single language) or
            ``.json`` mapping language → list of templates.

    Returns:
        ``{language: [templates]}``.

    Raises:
        ValueError: when a language has no templates, or a template lacks ``{}``.

    Example:
        >>> len(load_templates(["en"])["en"])
        18
    """
    given: dict[str, list[str]] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"templates file not found: {path}")
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
                raise ValueError(f"{path}: expected a mapping language -> list of templates")
            given = {str(k): [str(t) for t in v] for k, v in data.items()}
        else:
            if len(languages) != 1:
                raise ValueError(
                    f"{path}: a .txt templates file serves one language, but {len(languages)} are "
                    "evaluated; use a .json mapping language -> templates"
                )
            given = {languages[0]: _read_lines(path)}
    out = {}
    for lang in languages:
        templates = given.get(lang) or list(DEFAULT_TEMPLATES.get(lang, ()))
        if not templates:
            raise ValueError(
                f"no prompt templates for language {lang!r}: built-in templates exist for "
                f"{', '.join(DEFAULT_TEMPLATES)}; pass a templates file (e.g. "
                f'{{"{lang}": ["... {{}} ..."]}})'
            )
        bad = [t for t in templates if t.count("{}") != 1]
        if bad:
            raise ValueError(f"template(s) {bad[:3]} ({lang}) must contain '{{}}' exactly once")
        out[lang] = templates
    return out


def ensemble_prompts(prompt_emb: np.ndarray) -> np.ndarray:
    """Class embeddings from prompt embeddings: normalise, average over templates, normalise.

    Args:
        prompt_emb: ``[num_classes, num_templates, D]``.

    Returns:
        ``[num_classes, D]`` float32, L2-normalised.

    Example:
        >>> print(ensemble_prompts(np.array([[[2.0, 0.0], [0.0, 1.0]]])).round(4))
        [[0.7071 0.7071]]
    """
    e = np.asarray(prompt_emb, np.float64)
    if e.ndim != 3:
        raise ValueError(f"prompt embeddings must be [classes, templates, D], got shape {e.shape}")
    e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    mean = e.mean(axis=1)
    return (mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def build_classifier(
    model: Any,
    tokenizer: Any,
    class_names: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
    verbose: bool = True,
) -> np.ndarray:
    """Embeds every class name in every template and ensembles them.

    Args:
        model: an ``AlignModel``.
        tokenizer: strings → ``{"token_ids", "padding_mask"}``.
        class_names: the names, in one language.
        templates: prompt templates with one ``{}`` each.
        batch_size: prompts per embedding batch.
        verbose: show a progress bar.

    Returns:
        ``[len(class_names), D]`` float32 class embeddings.

    Example:
        >>> import malign
        >>> model = malign.AlignModel.from_preset("tiny")
        >>> tok = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), 16)
        >>> build_classifier(model, tok, ["dog", "cat"], ["a photo of a {}."], verbose=False).shape
        (2, 32)
    """
    from malign.evaluation.embedding import embed_texts

    prompts = [t.replace("{}", name) for name in class_names for t in templates]
    emb = embed_texts(model, tokenizer, prompts, batch_size, verbose)
    return ensemble_prompts(emb.reshape(len(class_names), len(templates), -1))


def confusion_matrix(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray,
                     num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Args:
        labels: ``[N]`` true class of every image.
        predictions: ``[N]`` predicted (top-1) class of every image.
        num_classes: ``C``.

    Returns:
        ``[C, C]`` int64; row = true class, column = predicted class.

    Example:
        >>> confusion_matrix([0, 1, 1], [0, 0, 1], 2).tolist()
        [[1, 0], [1, 1]]
    """
    labels = np.asarray(labels, np.int64)
    predictions = np.asarray(predictions, np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.size} labels but {predictions.size} predictions")
    out = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(out, (labels, predictions), 1)
    return out


def per_class_accuracy(confusion: np.ndarray) -> list[float | None]:
    """Top-1 accuracy (percent) of every class from a confusion matrix.

    Args:
        confusion: ``[C, C]`` counts, row = true class.

    Returns:
        One value per class; None for a class without images.

    Example:
        >>> per_class_accuracy(np.array([[2, 0, 0], [3, 0, 0], [0, 0, 0]]))
        [100.0, 0.0, None]
    """
    confusion = np.asarray(confusion)
    totals = confusion.sum(axis=1)
    return [float(100.0 * confusion[c, c] / totals[c]) if totals[c] else None for c in range(len(totals))]


def zero_shot_accuracy(
    image_emb: np.ndarray, class_emb: np.ndarray, labels: Sequence[int] | np.ndarray, ks: Sequence[int] = (1, 5)
) -> dict[str, Any]:
    """Top-K accuracy (percent), per-class and mean per-class top-1 accuracy, confusion counts.

    Args:
        image_emb: ``[N, D]`` image embeddings.
        class_emb: ``[C, D]`` class embeddings.
        labels: ``[N]`` class index of every image.
        ks: K values (K larger than C counts as C).

    Returns:
        ``{"top1": ..., "top5": ..., "mean_per_class_top1": ..., "per_class_top1": [C values,
        None for a class without images], "confusion": [[C x C counts]]}`` (top-K keys follow
        ``ks``; the mean per-class accuracy averages the classes that have images; the
        confusion matrix's rows are true classes, its columns top-1 predictions).

    Example:
        >>> r = zero_shot_accuracy(np.eye(3), np.eye(3)[[0, 0, 0]], [0, 1, 1], ks=(1, 2))
        >>> r["top1"], r["per_class_top1"], r["confusion"]   # everything predicted as class 0
        (33.33333333333333, [100.0, 0.0, None], [[1, 0, 0], [2, 0, 0], [0, 0, 0]])
    """
    image_emb = np.asarray(image_emb)
    class_emb = np.asarray(class_emb)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size != image_emb.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {image_emb.shape[0]} integers, got shape {labels.shape} {labels.dtype}")
    if labels.size == 0:
        raise ValueError("no images")
    num_classes = class_emb.shape[0]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be class indices in [0, {num_classes})")
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive, got {ks}")
    k = min(max(ks), num_classes)
    _, top = top_k_search(image_emb, class_emb, k)
    hit = top == labels[:, None]
    rank = np.where(hit.any(axis=1), np.argmax(hit, axis=1), k)
    out: dict[str, Any] = {f"top{kk}": float(np.mean(rank < kk) * 100.0) for kk in ks}
    confusion = confusion_matrix(labels, top[:, 0], num_classes)
    per_class = per_class_accuracy(confusion)
    out["mean_per_class_top1"] = float(np.mean([a for a in per_class if a is not None]))
    out["per_class_top1"] = per_class
    out["confusion"] = confusion.tolist()
    return out


def labels_from_captions(
    captions: Sequence[str],
    text_to_image: Sequence[int] | np.ndarray,
    num_images: int,
    class_names: Mapping[str, Sequence[str]],
    image_ids: Sequence[str] | None = None,
) -> np.ndarray:
    """The class of each image: the class whose name equals one of its captions.

    Args:
        captions: all captions of the record set.
        text_to_image: image index of each caption.
        num_images: number of images.
        class_names: ``{language: [names]}`` aligned by class.
        image_ids: ids for error messages.

    Returns:
        ``[num_images]`` int64 labels.

    Raises:
        ValueError: when an image names no class, or several.

    Example:
        >>> labels_from_captions(["Hund", "cat"], [0, 1], 2, {"en": ["dog", "cat"], "de": ["Hund", "Katze"]}).tolist()
        [0, 1]
    """
    lookup: dict[str, int] = {}
    for lang, names in class_names.items():
        for i, name in enumerate(names):
            key = _normalise(name)
            if lookup.setdefault(key, i) != i:
                raise ValueError(f"class name {name!r} ({lang}) also names class {lookup[key]}")
    found: list[set[int]] = [set() for _ in range(num_images)]
    for caption, image in zip(captions, np.asarray(text_to_image)):
        c = lookup.get(_normalise(caption))
        if c is not None:
            found[int(image)].add(c)
    labels = np.empty(num_images, np.int64)
    for i, classes in enumerate(found):
        name = image_ids[i] if image_ids is not None else str(i)
        if len(classes) != 1:
            problem = "names no class" if not classes else f"names several classes {sorted(classes)}"
            raise ValueError(
                f"image {name} {problem}; in a zero-shot record set each image needs one caption "
                "equal to its class name"
            )
        labels[i] = classes.pop()
    return labels


def read_image_folder(
    root: str | os.PathLike,
    class_names: Mapping[str, Sequence[str]],
    image_size: int,
    batch_size: int = 64,
    eval_resize: str = "shorter_side",
):
    """Lists ``root/<class>/*`` images and labels them by directory name.

    Directories are matched to class names of any language (case-insensitive);
    a directory matching no class is an error.

    Args:
        root: the directory.
        class_names: ``{language: [names]}``.
        image_size: side of the centre crop (the model's ``image_size``).
        batch_size: images per batch.
        eval_resize: the resize before the centre crop, the model's
            (``malign.data.model_eval_resize(model)``): "shorter_side" or "square".

    Returns:
        ``(dataset of float32 [b, S, S, 3] batches, labels [N] int64, paths)``.

    Example:
        >>> ds, labels, paths = read_image_folder("imagenet/val", {"en": names}, 289)  # doctest: +SKIP
    """
    import tensorflow as tf

    from malign.data.preprocess import decode_and_crop

    root = Path(root)
    lookup = {_normalise(n): i for names in class_names.values() for i, n in enumerate(names)}
    paths: list[str] = []
    labels: list[int] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        key = _normalise(sub.name.replace("_", " "))
        label = lookup.get(_normalise(sub.name), lookup.get(key))
        if label is None:
            raise ValueError(f"directory {sub} matches no class name")
        files = sorted(str(f) for f in sub.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"no images under {root}/<class>/ (looked for {', '.join(_IMAGE_SUFFIXES)})")
    ds = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda p: decode_and_crop(tf.io.read_file(p), image_size, training=False,
                                  eval_resize=eval_resize),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), np.asarray(labels, np.int64), paths


def evaluate_zero_shot(
    model: Any,
    tokenizer: Any,
    images: Any,
    labels: Sequence[int] | np.ndarray,
    class_names: Mapping[str, Sequence[str]],
    templates: Mapping[str, Sequence[str]],
    ks: Sequence[int] = (1, 5),
    text_batch_size: int = 256,
    verbose: bool = True,
) -> dict[str, Any]:
    """Zero-shot accuracy per language (class names and templates of that language).

    Images are embedded once; each language builds its own classifier.

    Args:
        model: an ``AlignModel``.
        tokenizer: strings → ``{"token_ids", "padding_mask"}``.
        images: dataset of image batches or an ``[N, S, S, 3]`` array (see ``embed_images``).
        labels: class index of every image.
        class_names: ``{language: [names]}`` aligned by class.
        templates: ``{language: [templates]}`` for every language of ``class_names``.
        ks: K values of top-K accuracy.
        text_batch_size: prompts per embedding batch.
        verbose: show progress bars.

    Returns:
        ``{"languages": {lang: {"top1", "top5", "mean_per_class_top1", "num_images",
        "num_classes", "num_templates", "chance", "per_class",
        "most_predicted", "confusion"}}, "mean": {top-K, mean per-class, "chance"}}``
        (see ``zero_shot_accuracy`` and ``describe_classes``).

    Example:
        >>> import malign
        >>> model = malign.AlignModel.from_preset("tiny")
        >>> tok = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), 16)
        >>> imgs = np.random.default_rng(0).random((4, 32, 32, 3), dtype="float32")
        >>> r = evaluate_zero_shot(model, tok, imgs, [0, 1, 0, 1], {"en": ["dog", "cat"]},
        ...                        {"en": ["a photo of a {}."]}, verbose=False)
        >>> r["languages"]["en"]["top5"]   # two classes: top-5 always hits
        100.0
    """
    from malign.evaluation.embedding import embed_images

    labels = np.asarray(labels)
    num_images = None if isinstance(images, np.ndarray) else labels.size
    image_emb = embed_images(model, images, num_images=num_images, verbose=verbose)
    if image_emb.shape[0] != labels.size:
        raise ValueError(f"{image_emb.shape[0]} images but {labels.size} labels")
    report: dict[str, Any] = {"languages": {}}
    for lang, names in class_names.items():
        if lang not in templates:
            raise ValueError(f"no templates for language {lang!r}")
        classifier = build_classifier(model, tokenizer, names, templates[lang], text_batch_size, verbose)
        result = zero_shot_accuracy(image_emb, classifier, labels, ks)
        result.update(num_images=int(labels.size), num_classes=len(names), num_templates=len(templates[lang]))
        report["languages"][lang] = describe_classes(result, names, ks)
    keys = [f"top{k}" for k in ks] + ["mean_per_class_top1"]
    languages = report["languages"].values()
    report["mean"] = {key: float(np.mean([m[key] for m in languages])) for key in keys}
    report["mean"]["chance"] = {key: float(np.mean([m["chance"][key] for m in languages])) for key in keys}
    return report


def describe_classes(result: dict[str, Any], names: Sequence[str], ks: Sequence[int]) -> dict[str, Any]:
    """Adds chance levels, per-class accuracy by name and the most predicted class to a result.

    Args:
        result: a ``zero_shot_accuracy`` result (with ``per_class_top1`` and ``confusion``).
        names: the class names, in the order of the classifier.
        ks: the K values of ``result``.

    Returns:
        ``result`` with ``"chance"`` (``classification_chance``), ``"per_class"``
        (``{name: {"images": n, "top1": percent or None}}``, replacing the list
        ``"per_class_top1"``) and ``"most_predicted"``
        (``{"class": name, "share": percent of all images predicted as it}``), which tells
        a model that puts every image in one class from one that tells classes apart.

    Example:
        >>> r = zero_shot_accuracy(np.eye(2), np.eye(2)[[0, 0]], [0, 1], ks=(1,))
        >>> describe_classes(r, ["dog", "cat"], (1,))["most_predicted"]
        {'class': 'dog', 'share': 100.0}
    """
    confusion = np.asarray(result["confusion"])
    if confusion.shape != (len(names), len(names)):
        raise ValueError(f"{len(names)} class names for a {confusion.shape} confusion matrix")
    images = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    top = int(np.argmax(predicted))
    result["chance"] = classification_chance(len(names), ks)
    result["per_class"] = {
        name: {"images": int(n), "top1": acc} for name, n, acc in zip(names, images, result.pop("per_class_top1"))
    }
    result["most_predicted"] = {"class": names[top], "share": float(100.0 * predicted[top] / predicted.sum())}
    return result
