"""Writing evaluation reports: ``metrics.json``, a Markdown table and a PNG chart.

Example:
    >>> import numpy as np, tempfile
    >>> from malign.evaluation.evaluate import evaluate_embeddings
    >>> report = evaluate_embeddings(np.eye(2), np.eye(2)[[0, 1, 1, 0]], [0, 1, 1, 0], ["en", "en", "de", "de"])
    >>> paths = write_retrieval_report(report, tempfile.mkdtemp())
    >>> sorted(p.name for p in paths.values())
    ['metrics.json', 'metrics.md', 'recall.png']
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "retrieval_chart",
    "retrieval_markdown",
    "write_retrieval_report",
    "write_zero_shot_report",
    "zero_shot_chart",
    "zero_shot_markdown",
]


def _ks(report: dict[str, Any]) -> list[int]:
    return [int(key.rsplit("_r", 1)[1]) for key in report["metric_keys"] if key.startswith("image_to_text_r")]


def _rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = list(report["languages"].items())
    if "all" in report:
        rows.append(("all (" + "+".join(report["languages"]) + ")", report["all"]))
    rows.append(("mean over languages", report["mean"]))
    return rows


def retrieval_markdown(report: dict[str, Any], title: str | None = None) -> str:
    """A Markdown table of a retrieval report: one row per language, then all and mean.

    Args:
        report: the dict of ``evaluate_embeddings`` / ``evaluate_retrieval``.
        title: a heading line (e.g. the model path).

    Returns:
        Markdown text.

    Example:
        >>> import numpy as np
        >>> from malign.evaluation.evaluate import evaluate_embeddings
        >>> r = evaluate_embeddings(np.eye(2), np.eye(2), [0, 1], ["en", "en"])
        >>> print(retrieval_markdown(r).splitlines()[2])
        | en | 2 | 2 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |
    """
    ks = _ks(report)
    header = (
        ["Language", "Images", "Captions"]
        + [f"I→T R@{k}" for k in ks]
        + [f"T→I R@{k}" for k in ks]
        + ["mR"]
    )
    lines = []
    if title:
        lines += [f"# {title}", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for name, metrics in _rows(report):
        values = [metrics[f"image_to_text_r{k}"] for k in ks] + [metrics[f"text_to_image_r{k}"] for k in ks]
        values.append(metrics["mean_recall"])
        counts = [str(metrics.get("num_images", "")), str(metrics.get("num_captions", ""))]
        lines.append("| " + " | ".join([name] + counts + [f"{v:.1f}" for v in values]) + " |")
    lines += [
        "",
        "Recall at K in percent; I→T: an image is found when any of its captions is in the top K; "
        "mR: mean of the six recalls. Every language ranks against all images. "
        f"Ties: {report['tie_rule']}.",
    ]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def retrieval_chart(report: dict[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """A bar chart of R@K per language, one panel per direction, saved as PNG.

    Args:
        report: the dict of ``evaluate_embeddings``.
        path: output ``.png`` file.
        title: figure title.

    Returns:
        The path written.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from malign.evaluation.evaluate import evaluate_embeddings
        >>> r = evaluate_embeddings(np.eye(2), np.eye(2), [0, 1], ["en", "en"])
        >>> retrieval_chart(r, os.path.join(tempfile.mkdtemp(), "r.png")).stat().st_size > 0
        True
    """
    import numpy as np

    plt = _pyplot()
    ks = _ks(report)
    names = list(report["languages"])
    groups = [(lang, report["languages"][lang]) for lang in names]
    if len(names) > 1:
        groups.append(("mean", report["mean"]))
    x = np.arange(len(groups))
    width = 0.8 / len(ks)
    fig, axes = plt.subplots(1, 2, figsize=(2 * (1.6 + 0.9 * len(groups)), 4.2), sharey=True)
    for ax, direction, label in zip(axes, ("image_to_text", "text_to_image"), ("Image → text", "Text → image")):
        for i, k in enumerate(ks):
            values = [metrics[f"{direction}_r{k}"] for _, metrics in groups]
            bars = ax.bar(x + (i - (len(ks) - 1) / 2) * width, values, width, label=f"R@{k}")
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
        ax.set_xticks(x, [name for name, _ in groups])
        ax.set_title(label)
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("recall (%)")
    axes[1].legend(loc="upper right", fontsize=8)
    mr = ", ".join(f"{lang} {metrics['mean_recall']:.1f}" for lang, metrics in groups)
    fig.suptitle((title + "\n" if title else "") + f"mR: {mr}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _write_json(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")


def _write_report(report: dict[str, Any], out_dir: str | os.PathLike, title: str | None,
                  markdown: Any, chart: Any, chart_name: str) -> dict[str, Path]:
    """``metrics.json``, ``metrics.md`` (from ``markdown``) and a chart (from ``chart``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "metrics.json", "markdown": out / "metrics.md", "chart": out / chart_name}
    _write_json(report, paths["json"])
    paths["markdown"].write_text(markdown(report, title), encoding="utf-8")
    chart(report, paths["chart"], title)
    return paths


def write_retrieval_report(
    report: dict[str, Any], out_dir: str | os.PathLike, title: str | None = None
) -> dict[str, Path]:
    """Writes ``metrics.json``, ``metrics.md`` and ``recall.png`` into ``out_dir``.

    Args:
        report: the dict of ``evaluate_retrieval`` (extra keys, e.g. ``"meta"``,
            go into the JSON as they are).
        out_dir: output directory (created).
        title: heading of the table and the chart.

    Returns:
        ``{"json": path, "markdown": path, "chart": path}``.

    Example:
        >>> write_retrieval_report(report, "runs/eval")  # doctest: +SKIP
    """
    return _write_report(report, out_dir, title, retrieval_markdown, retrieval_chart, "recall.png")


def zero_shot_markdown(report: dict[str, Any], title: str | None = None) -> str:
    """A Markdown table of a zero-shot report: one row per language, then the mean.

    Args:
        report: the dict of ``malign.evaluation.zero_shot.evaluate_zero_shot``.
        title: a heading line.

    Returns:
        Markdown text.

    Example:
        >>> r = {"languages": {"en": {"top1": 50.0, "top5": 100.0, "mean_per_class_top1": 50.0,
        ...      "num_images": 4, "num_classes": 2, "num_templates": 3}},
        ...      "mean": {"top1": 50.0, "top5": 100.0, "mean_per_class_top1": 50.0}}
        >>> print(zero_shot_markdown(r).splitlines()[2])
        | en | 4 | 2 | 3 | 50.0 | 100.0 | 50.0 |
    """
    header = ["Language", "Images", "Classes", "Prompts", "Top-1", "Top-5", "Mean per-class top-1"]
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    rows = list(report["languages"].items())
    if len(rows) > 1:
        rows.append(("mean", report["mean"]))
    for name, m in rows:
        counts = [str(m.get(key, "")) for key in ("num_images", "num_classes", "num_templates")]
        values = [f"{m[key]:.1f}" for key in ("top1", "top5", "mean_per_class_top1")]
        lines.append("| " + " | ".join([name] + counts + values) + " |")
    lines += [
        "",
        "Accuracy in percent. Class embeddings average the L2-normalised embeddings of all prompt "
        "templates (prompt ensembling). Top-5 counts a hit when the label is among the 5 best "
        "classes (all classes when there are fewer). Ties: the class listed first ranks higher.",
    ]
    return "\n".join(lines) + "\n"


def zero_shot_chart(report: dict[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """A bar chart of zero-shot top-1 and top-5 accuracy per language, saved as PNG.

    Args:
        report: the dict of ``evaluate_zero_shot``.
        path: output ``.png`` file.
        title: figure title.

    Returns:
        The path written.

    Example:
        >>> zero_shot_chart(report, "runs/zs/accuracy.png")  # doctest: +SKIP
    """
    import numpy as np

    plt = _pyplot()
    names = list(report["languages"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.5 + 1.2 * len(names)), 3.6))
    for i, key in enumerate(("top1", "top5")):
        bars = ax.bar(x + (i - 0.5) * 0.38, [report["languages"][n][key] for n in names], 0.38,
                      label=key.replace("top", "top-"))
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_zero_shot_report(
    report: dict[str, Any], out_dir: str | os.PathLike, title: str | None = None
) -> dict[str, Path]:
    """Writes ``metrics.json``, ``metrics.md`` and ``accuracy.png`` into ``out_dir``.

    Args:
        report: the dict of ``evaluate_zero_shot``.
        out_dir: output directory (created).
        title: heading of the table and the chart.

    Returns:
        ``{"json": path, "markdown": path, "chart": path}``.

    Example:
        >>> write_zero_shot_report(report, "runs/zero-shot")  # doctest: +SKIP
    """
    return _write_report(report, out_dir, title, zero_shot_markdown, zero_shot_chart, "accuracy.png")
