"""Multilingual retrieval evaluation: per language, pooled, and averaged.

The protocol of the ALIGN paper's Multi30K table. Each image is embedded once
and each caption once; then, for every language, that language's captions
are ranked against all images (and all images against those captions), so
the gallery is the same for every language. Reported per language:
R@1/5/10 in both directions and mR; then ``all`` (the captions of all the
selected languages pooled into one query set and one caption gallery) and
``mean`` (the per-language metrics averaged, which is how the paper's
"average over languages" is read).

Multi30K has two record layouts, both handled the same way:

* task1: one caption per image per language (en, de, fr, cs); the 2016 test
  set has 1000 images.
* task2: five independent captions per image in en and de; an image counts as
  found by image→text when any of its captions is in the top K.

The report states ``captions_per_image`` per language so the two are told apart.

Example:
    >>> import numpy as np
    >>> img = np.eye(2, dtype="float32")
    >>> txt = np.eye(2, dtype="float32")[[0, 1, 0, 1]]
    >>> report = evaluate_embeddings(img, txt, [0, 1, 0, 1], ["en", "en", "de", "de"])
    >>> sorted(report["languages"]), report["mean"]["mean_recall"]
    (['de', 'en'], 100.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from malign.evaluation.chance import retrieval_chance
from malign.evaluation.metrics import (
    DEFAULT_KS,
    TIE_RULE,
    metric_keys,
    retrieval_metrics,
    validate_text_to_image,
)
from malign.evaluation.retrieval import DEFAULT_MEMORY_BUDGET_BYTES

__all__ = ["MULTI30K_LANGUAGES", "evaluate_embeddings", "evaluate_retrieval", "select_languages"]

MULTI30K_LANGUAGES = ("en", "de", "fr", "cs")


def select_languages(caption_langs: Sequence[str], languages: Sequence[str] | None) -> list[str]:
    """The languages to evaluate: the requested ones, checked, or those present.

    Args:
        caption_langs: language code of every caption.
        languages: requested codes, or None for every language present (in
            order of first appearance).

    Returns:
        The language codes.

    Raises:
        ValueError: when a requested language has no caption.

    Example:
        >>> select_languages(["en", "de", "en"], None)
        ['en', 'de']
    """
    present = list(dict.fromkeys(caption_langs))
    if languages is None:
        if not present:
            raise ValueError("the record set has no captions")
        return present
    languages = [lang.strip() for lang in languages if lang.strip()]
    if not languages:
        raise ValueError("no languages requested")
    missing = [lang for lang in languages if lang not in present]
    if missing:
        raise ValueError(
            f"no captions in language(s) {', '.join(missing)}; the record set has "
            f"{', '.join(present) or 'none'}"
        )
    return list(dict.fromkeys(languages))


def _describe(t2i: np.ndarray, num_images: int) -> dict[str, Any]:
    counts = np.bincount(t2i, minlength=num_images)
    return {
        "num_images": int(num_images),
        "num_captions": int(t2i.size),
        "captions_per_image": float(t2i.size / num_images),
        "min_captions_per_image": int(counts.min()),
        "max_captions_per_image": int(counts.max()),
    }


def evaluate_embeddings(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_to_image: Sequence[int] | np.ndarray,
    caption_langs: Sequence[str],
    languages: Sequence[str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    backend: str = "numpy",
) -> dict[str, Any]:
    """Retrieval metrics per language, pooled (``all``) and averaged (``mean``).

    Args:
        image_emb: ``[num_images, D]``, one row per image.
        text_emb: ``[num_captions, D]``, one row per caption.
        text_to_image: image index of each caption.
        caption_langs: language code of each caption.
        languages: languages to report (default: all present).
        ks: K values of recall at K.
        memory_budget_bytes: working-memory bound of the exact search.
        backend: ``"numpy"`` or ``"tensorflow"``.

    Returns:
        ``{"languages": {lang: metrics + counts}, "all": ..., "mean": ...,
        "metric_keys": [...], "tie_rule": ...}``; metric values in percent.
        ``all`` is present only with more than one language. Every group also
        holds ``"chance"``: the same keys for a random ranking of this split
        (``malign.evaluation.chance.retrieval_chance``; for ``mean``, averaged).

    Raises:
        ValueError: when a language is missing, or some image has no caption
            in a language (its image→text recall would be undefined).

    Example:
        >>> import numpy as np
        >>> r = evaluate_embeddings(np.eye(2), np.eye(2), [0, 1], ["cs", "cs"])
        >>> r["languages"]["cs"]["text_to_image_r1"], r["languages"]["cs"]["num_captions"]
        (100.0, 2)
    """
    image_emb = np.asarray(image_emb)
    text_emb = np.asarray(text_emb)
    langs = np.asarray(list(caption_langs), dtype=object)
    num_images = image_emb.shape[0]
    if langs.size != text_emb.shape[0]:
        raise ValueError(f"{langs.size} caption languages for {text_emb.shape[0]} captions")
    t2i = validate_text_to_image(text_to_image, num_images, text_emb.shape[0])
    chosen = select_languages(list(langs), languages)
    keys = metric_keys(ks)
    search = dict(ks=ks, memory_budget_bytes=memory_budget_bytes, backend=backend)

    def run(mask: np.ndarray, name: str) -> dict[str, Any]:
        sub = t2i[mask]
        try:
            validate_text_to_image(sub, num_images)
        except ValueError as error:
            raise ValueError(f"language {name}: {error}") from None
        result = retrieval_metrics(image_emb, text_emb[mask], sub, **search)
        result.update(_describe(sub, num_images))
        result["chance"] = retrieval_chance(sub, num_images, ks)
        return result

    report: dict[str, Any] = {"languages": {}}
    for lang in chosen:
        report["languages"][lang] = run(langs == lang, lang)
    if len(chosen) > 1:
        report["all"] = run(np.isin(langs, chosen), "+".join(chosen))
    report["mean"] = {key: float(np.mean([report["languages"][lang][key] for lang in chosen])) for key in keys}
    report["mean"]["chance"] = {
        key: float(np.mean([report["languages"][lang]["chance"][key] for lang in chosen])) for key in keys
    }
    report["metric_keys"] = list(keys)
    report["tie_rule"] = TIE_RULE
    return report


def warn_if_resize_differs(model: Any, split: Any) -> None:
    """Warns when a split's images were cropped with another resize than the model's.

    ``read_eval_split(..., eval_resize=model_eval_resize(model))`` avoids it; a split
    read with the default for a model whose config says "square" (a converted
    ``kakaobrain/align-base``) would be scored on other pixels than the model expects.

    Args:
        model: the model being evaluated.
        split: an ``EvalSplit`` (splits without ``eval_resize`` are not checked).

    Example:
        >>> import malign
        >>> from types import SimpleNamespace
        >>> warn_if_resize_differs(malign.AlignModel.from_preset("tiny"),
        ...                        SimpleNamespace(eval_resize="shorter_side"))
    """
    import warnings

    from malign.data.preprocess import model_eval_resize

    used = getattr(split, "eval_resize", None)
    wanted = model_eval_resize(model)
    if used is not None and used != wanted:
        warnings.warn(
            f"the evaluation images were resized with eval_resize={used!r} but the model's "
            f"config says {wanted!r}: read the split with read_eval_split(..., "
            "eval_resize=malign.data.model_eval_resize(model)) to see the pixels the model "
            "expects", stacklevel=3,
        )


def evaluate_retrieval(
    model: Any,
    tokenizer: Any,
    split: Any,
    languages: Sequence[str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    text_batch_size: int = 256,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    backend: str = "numpy",
    verbose: bool = True,
) -> dict[str, Any]:
    """Embeds an evaluation split once per image and caption, then evaluates it.

    Args:
        model: an ``AlignModel``.
        tokenizer: strings → ``{"token_ids", "padding_mask"}`` (the model's vocabulary
            and sequence length).
        split: a ``malign.data.EvalSplit`` (``images`` dataset in record order,
            ``image_ids``, ``captions``, ``caption_langs``, ``text_to_image``), read with
            the model's ``eval_resize`` (a different one is warned about).
        languages: languages to report (default: all in the split).
        ks: K values of recall at K.
        text_batch_size: captions per embedding batch.
        memory_budget_bytes: working-memory bound of the exact search.
        backend: search backend, ``"numpy"`` or ``"tensorflow"``.
        verbose: show progress bars.

    Returns:
        The dict of ``evaluate_embeddings`` plus ``num_images`` and ``num_captions``.

    Example:
        >>> import malign  # doctest: +SKIP
        >>> split = malign.data.read_eval_split("out/m30k-val-*", model.image_size, 64,
        ...     eval_resize=malign.data.model_eval_resize(model))  # doctest: +SKIP
        >>> report = evaluate_retrieval(model, tokenizer, split)  # doctest: +SKIP
    """
    from malign.evaluation.embedding import embed_images, embed_texts

    warn_if_resize_differs(model, split)
    captions = list(split.captions)
    caption_langs = list(split.caption_langs)
    chosen = select_languages(caption_langs, languages)
    keep = np.flatnonzero(np.isin(np.asarray(caption_langs, dtype=object), chosen))
    t2i = np.asarray(split.text_to_image)[keep]
    image_emb = embed_images(model, split.images, num_images=len(split.image_ids), verbose=verbose)
    if image_emb.shape[0] != len(split.image_ids):
        raise ValueError(
            f"the image dataset gave {image_emb.shape[0]} images but the split lists {len(split.image_ids)}"
        )
    text_emb = embed_texts(model, tokenizer, [captions[i] for i in keep], text_batch_size, verbose)
    report = evaluate_embeddings(
        image_emb,
        text_emb,
        t2i,
        [caption_langs[i] for i in keep],
        chosen,
        ks,
        memory_budget_bytes,
        backend,
    )
    report["num_images"] = int(image_emb.shape[0])
    report["num_captions"] = int(text_emb.shape[0])
    return report
