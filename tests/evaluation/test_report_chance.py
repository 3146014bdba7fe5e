"""Chance levels, per-class zero-shot accuracy, confusion matrices and the report files.

Hand-built splits and embeddings with exact expected numbers; no model is built.
"""

from __future__ import annotations

import csv
import itertools
import json
from fractions import Fraction
from math import comb

import matplotlib
import numpy as np
import pytest

from malign.evaluation.chance import (
    classification_chance,
    image_to_text_chance,
    retrieval_chance,
    text_to_image_chance,
)
from malign.evaluation.evaluate import evaluate_embeddings
from malign.evaluation.report import (
    format_percent,
    retrieval_figure,
    write_retrieval_report,
    write_zero_shot_report,
    zero_shot_figure,
    zero_shot_markdown,
)
from malign.evaluation.zero_shot import describe_classes, zero_shot_accuracy

matplotlib.use("Agg")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- chance levels ----------------------------------------------------------------------------
def _brute_force_image_to_text(counts: list[int], k: int) -> Fraction:
    """Every ordering of the N captions, equally likely: the share in which each image has
    a caption among the first K, averaged over the images."""
    owner = [i for i, c in enumerate(counts) for _ in range(c)]
    hits = [0] * len(counts)
    orders = 0
    for order in itertools.permutations(range(len(owner))):
        orders += 1
        top = {owner[j] for j in order[:k]}
        for i in top:
            hits[i] += 1
    return sum(Fraction(h, orders) for h in hits) / len(counts)


@pytest.mark.parametrize("counts, k", [([1, 2, 3], 2), ([2, 2, 1], 1), ([1, 1, 4], 3), ([3, 3], 4)])
def test_image_to_text_chance_equals_enumerating_every_ranking(counts, k):
    want = _brute_force_image_to_text(counts, k)
    assert image_to_text_chance(counts, k) == pytest.approx(float(want), rel=1e-12)


def test_image_to_text_chance_exact_values():
    # N = 6 captions; images with 1, 2, 3 of them; K = 2:
    # 1 - C(5,2)/C(6,2) = 1/3, 1 - C(4,2)/C(6,2) = 3/5, 1 - C(3,2)/C(6,2) = 4/5; mean 26/45.
    assert image_to_text_chance([1, 2, 3], 2) == float(Fraction(26, 45))
    # Multi30K task2 test: 1000 images x 5 captions; R@1 = 5/5000, R@10 = 1 - C(4995,10)/C(5000,10).
    assert image_to_text_chance([5] * 1000, 1) == 0.001
    r10 = 1 - Fraction(comb(4995, 10), comb(5000, 10))
    assert image_to_text_chance([5] * 1000, 10) == float(r10)
    # K at least N - c + 1: every image is found.
    assert image_to_text_chance([2, 2], 3) == 1.0
    with pytest.raises(ValueError, match="image 1 has no caption"):
        image_to_text_chance([1, 0, 2], 1)
    with pytest.raises(ValueError, match="K must be a positive integer"):
        image_to_text_chance([1], 0)


def test_text_to_image_and_classification_chance():
    assert text_to_image_chance(1000, 1) == 0.001
    assert text_to_image_chance(1000, 10) == 0.01
    assert text_to_image_chance(4, 10) == 1.0
    assert classification_chance(3, (1, 5)) == {"top1": 100 / 3, "top5": 100.0, "mean_per_class_top1": 100 / 3}
    assert classification_chance(30, (1, 5)) == {"top1": 100 / 30, "top5": 100 * 5 / 30,
                                                 "mean_per_class_top1": 100 / 30}
    with pytest.raises(ValueError, match="gallery"):
        text_to_image_chance(0, 1)


def test_retrieval_chance_of_a_split():
    # 3 images with 2, 1, 3 captions (N = 6). R@1 image->text is 1/num_images whatever the counts.
    got = retrieval_chance([0, 0, 1, 2, 2, 2], 3, ks=(1, 2))
    i2t_r2 = (Fraction(1) - Fraction(comb(4, 2), comb(6, 2)) + 1 - Fraction(comb(5, 2), comb(6, 2))
              + 1 - Fraction(comb(3, 2), comb(6, 2))) / 3
    want = {
        "image_to_text_r1": 100 / 3,
        "image_to_text_r2": 100 * float(i2t_r2),
        "text_to_image_r1": 100 / 3,
        "text_to_image_r2": 200 / 3,
    }
    want["mean_recall"] = float(np.mean(list(want.values())))
    assert list(got) == list(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12)


def _two_language_split():
    """4 images; en: one caption per image; de: two per image."""
    images = np.eye(4, dtype=np.float32)
    t2i = [0, 1, 2, 3] + [0, 0, 1, 1, 2, 2, 3, 3]
    langs = ["en"] * 4 + ["de"] * 8
    return images, images[t2i], t2i, langs


def test_evaluate_embeddings_reports_chance_per_language_all_and_mean():
    images, texts, t2i, langs = _two_language_split()
    report = evaluate_embeddings(images, texts, t2i, langs, ks=(1, 2))
    en, de, pooled = report["languages"]["en"]["chance"], report["languages"]["de"]["chance"], report["all"]["chance"]
    assert en["image_to_text_r1"] == en["text_to_image_r1"] == 25.0
    assert en["image_to_text_r2"] == pytest.approx(50.0)                        # 1 of 4 captions, K = 2
    assert de["image_to_text_r2"] == pytest.approx(100 * (1 - 15 / 28))         # 1 - C(6,2)/C(8,2)
    assert pooled["image_to_text_r2"] == pytest.approx(100 * (1 - 36 / 66))     # 1 - C(9,2)/C(12,2)
    assert pooled["text_to_image_r2"] == en["text_to_image_r2"] == 50.0
    for key in report["metric_keys"]:
        assert report["mean"]["chance"][key] == pytest.approx((en[key] + de[key]) / 2)


# -- zero-shot: one class for everything -------------------------------------------------------
CLASSES = np.eye(3, dtype=np.float32)                      # dog, cat, bird
LABELS = np.array([0, 0, 1, 1, 1, 2])


def _collapsed_result(ks=(1, 2, 5)):
    """Every image is nearest to class 0, then class 1: the model puts everything in one class."""
    images = np.tile(np.array([1.0, 0.2, 0.1], np.float32), (LABELS.size, 1))
    return zero_shot_accuracy(images, CLASSES, LABELS, ks=ks)


def test_per_class_accuracy_and_confusion_when_everything_is_one_class():
    r = _collapsed_result()
    assert r["per_class_top1"] == [100.0, 0.0, 0.0]
    assert r["confusion"] == [[2, 0, 0], [3, 0, 0], [1, 0, 0]]
    assert r["top1"] == pytest.approx(100 * 2 / 6)
    assert r["top2"] == pytest.approx(100 * 5 / 6)         # class 1 is always second
    assert r["top5"] == 100.0                               # 3 classes
    assert r["mean_per_class_top1"] == pytest.approx(100 / 3)
    described = describe_classes(r, ["dog", "cat", "bird"], (1, 2, 5))
    assert described["most_predicted"] == {"class": "dog", "share": 100.0}
    assert described["per_class"] == {"dog": {"images": 2, "top1": 100.0}, "cat": {"images": 3, "top1": 0.0},
                                      "bird": {"images": 1, "top1": 0.0}}
    assert described["chance"] == {"top1": 100 / 3, "top2": 200 / 3, "top5": 100.0,
                                   "mean_per_class_top1": 100 / 3}


def test_a_class_without_images_is_none_not_zero():
    images = np.eye(3, dtype=np.float32)[[0, 1, 1]]
    r = zero_shot_accuracy(images, CLASSES, [0, 1, 1], ks=(1,))
    assert r["per_class_top1"] == [100.0, 100.0, None]
    assert r["mean_per_class_top1"] == 100.0               # over the classes that have images
    assert r["confusion"] == [[1, 0, 0], [0, 2, 0], [0, 0, 0]]


def _zero_shot_report():
    ks = (1, 5)
    report = {"languages": {}}
    for lang, names in (("en", ["dog", "cat", "bird"]), ("de", ["Hund", "Katze", "Vogel"])):
        r = _collapsed_result(ks)
        r.update(num_images=6, num_classes=3, num_templates=2)
        report["languages"][lang] = describe_classes(r, names, ks)
    keys = ["top1", "top5", "mean_per_class_top1"]
    report["mean"] = {k: report["languages"]["en"][k] for k in keys}
    report["mean"]["chance"] = dict(report["languages"]["en"]["chance"])
    return report


def test_write_zero_shot_report_files(tmp_path):
    report = _zero_shot_report()
    paths = write_zero_shot_report(report, tmp_path, "zero-shot: hand-built")
    assert {p.name for p in paths.values()} == {
        "metrics.json", "metrics.md", "accuracy.png", "confusion-en.csv", "confusion-en.png",
        "confusion-de.csv", "confusion-de.png",
    }
    for name in ("accuracy.png", "confusion-en.png", "confusion-de.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    saved = json.loads((tmp_path / "metrics.json").read_text())
    en = saved["languages"]["en"]
    assert en["chance"] == {"top1": 100 / 3, "top5": 100.0, "mean_per_class_top1": 100 / 3}
    assert en["per_class"]["cat"] == {"images": 3, "top1": 0.0}
    assert en["confusion_file"] == "confusion-en.csv" and "confusion" not in en
    assert saved["mean"]["chance"]["top1"] == 100 / 3
    assert "confusion" in report["languages"]["en"]       # the caller's report is left as it was
    with open(tmp_path / "confusion-de.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["true \\ predicted", "Hund", "Katze", "Vogel"], ["Hund", "2", "0", "0"],
                    ["Katze", "3", "0", "0"], ["Vogel", "1", "0", "0"]]
    table = (tmp_path / "metrics.md").read_text()
    assert "| en | 6 | 3 | 2 | 33.3 | 100.0 | 33.3 | dog (100.0) |" in table
    assert "| chance (en, de, mean) |  |  |  | 33.3 | 100.0 | 33.3 |  |" in table
    assert "| # | Class (en) | Images | Top-1 en | Top-1 de |" in table
    assert "| 1 | cat | 3 | 0.0 | 0.0 |" in table
    assert "|  | chance |  | 33.3 | 33.3 |" in table
    assert "`confusion-en.csv`, `confusion-de.csv`" in table
    assert "Top-1 accuracy per class" not in zero_shot_markdown(report, per_class=False)


def test_write_retrieval_report_states_chance(tmp_path):
    images, texts, t2i, langs = _two_language_split()
    report = evaluate_embeddings(images, texts, t2i, langs, ks=(1, 2))
    paths = write_retrieval_report(report, tmp_path, "hand-built")
    saved = json.loads(paths["json"].read_text())
    assert saved["languages"]["de"]["chance"]["image_to_text_r2"] == pytest.approx(100 * 13 / 28)
    assert saved["mean"]["chance"]["text_to_image_r1"] == 25.0
    table = paths["markdown"].read_text()
    # en and mean share a line only where all values print alike; de and all differ.
    assert "| chance (en) |  |  | 25.0 | 50.0 | 25.0 | 50.0 | 37.5 |" in table
    assert f"| chance (de) |  |  | 25.0 | {100 * 13 / 28:.1f} | 25.0 | 50.0 |" in table
    assert paths["chart"].read_bytes()[:8] == PNG_MAGIC


def test_format_percent_keeps_small_chance_levels_visible():
    assert [format_percent(v) for v in (100.0, 2.5, 0.5, 0.02, 0.001, 0.0, None)] == [
        "100.0", "2.5", "0.50", "0.020", "0.0010", "0.0", "–"]


# -- layout -----------------------------------------------------------------------------------
def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _check_layout(fig, bar_axes):
    """The legend is outside every bar panel, value labels do not overlap, the title is in
    the figure."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in bar_axes:
            assert not _overlap(box, ax.get_window_extent(renderer)), "the legend covers the bars"
    labelled = 0
    for ax in bar_axes:
        labels = [t for t in ax.texts if t.get_text()]
        labelled += len(labels)
        boxes = [t.get_window_extent(renderer) for t in labels]
        for a, b in itertools.combinations(boxes, 2):
            assert not _overlap(a, b), "value labels collide"
    if fig._suptitle is not None:
        title = fig._suptitle.get_window_extent(renderer)
        whole = fig.bbox
        assert whole.x0 <= title.x0 and title.x1 <= whole.x1, "the title is cut"
    plt.close(fig)
    return labelled


@pytest.mark.parametrize("num_languages, ks", [(1, (1, 5, 10)), (4, (1, 5, 10)), (12, tuple(range(1, 11)))])
def test_retrieval_chart_layout(num_languages, ks):
    rng = np.random.default_rng(num_languages)
    images = rng.standard_normal((30, 8)).astype(np.float32)
    langs = [f"l{i}" for i in range(num_languages)]
    texts = np.concatenate([images + rng.standard_normal(images.shape) for _ in langs]).astype(np.float32)
    t2i = np.tile(np.arange(30), num_languages)
    report = evaluate_embeddings(images, texts, t2i, [lang for lang in langs for _ in range(30)], ks=ks)
    fig = retrieval_figure(report, "a/long/run/directory/name/model.keras on records/some-test-split " * 3)
    labelled = _check_layout(fig, fig.axes[:2])
    groups = num_languages + (2 if num_languages > 1 else 0)
    # Labels are drawn when the bars are wide enough for them, left out otherwise.
    assert labelled in (0, 2 * groups * len(ks))
    assert labelled == (0 if num_languages == 12 else 2 * groups * len(ks))


def test_zero_shot_chart_layout():
    report = _zero_shot_report()
    fig = zero_shot_figure(report, "zero-shot: " + "a/long/path/" * 12)
    _check_layout(fig, fig.axes[:1])
