"""Writing evaluation reports: ``metrics.json``, a Markdown table and PNG charts.

Every table and chart states the chance level next to the measured values (what a
random ranking scores on the same split, ``malign.evaluation.chance``). Zero-shot
reports add top-1 accuracy per class and a confusion matrix per language
(``confusion-<lang>.csv`` and ``.png``), so a model that puts every image in one class
shows as such.

Example:
    >>> import numpy as np, tempfile
    >>> from malign.evaluation.evaluate import evaluate_embeddings
    >>> report = evaluate_embeddings(np.eye(2), np.eye(2)[[0, 1, 1, 0]], [0, 1, 1, 0], ["en", "en", "de", "de"])
    >>> paths = write_retrieval_report(report, tempfile.mkdtemp())
    >>> sorted(p.name for p in paths.values())
    ['metrics.json', 'metrics.md', 'recall.png']
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import textwrap
from pathlib import Path
from typing import Any

from malign import atomic_files

__all__ = [
    "confusion_chart",
    "format_percent",
    "retrieval_chart",
    "retrieval_figure",
    "retrieval_markdown",
    "write_confusion_csv",
    "write_retrieval_report",
    "write_zero_shot_report",
    "zero_shot_chart",
    "zero_shot_figure",
    "zero_shot_markdown",
]

#: Dashed black marks: the chance level drawn over every bar.
_CHANCE_STYLE = dict(colors="black", linestyles=(0, (2, 1.5)), linewidth=1.3)


def format_percent(value: float | None) -> str:
    """A percentage for a table: one decimal, or two significant digits below 1.

    Chance levels of large galleries are small (R@1 over 5,000 captions is 0.02 %), and
    "0.0" would hide them.

    Args:
        value: a percentage, or None (shown as "–").

    Returns:
        The text.

    Example:
        >>> format_percent(33.333), format_percent(0.02), format_percent(0.0), format_percent(None)
        ('33.3', '0.020', '0.0', '–')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value == 0 or abs(value) >= 1:
        return f"{value:.1f}"
    decimals = min(6, 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def _chance_rows(rows: list[tuple[str, dict[str, Any]]], keys: list[str]) -> list[tuple[str, list[str]]]:
    """Chance rows for a table: rows whose chance levels print alike share one line."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, metrics in rows:
        chance = metrics.get("chance")
        if chance:
            groups.setdefault(tuple(format_percent(chance.get(k)) for k in keys), []).append(name.split(" (")[0])
    return [(f"chance ({', '.join(names)})", list(values)) for values, names in groups.items()]


def _ks(report: dict[str, Any]) -> list[int]:
    return [int(key.rsplit("_r", 1)[1]) for key in report["metric_keys"] if key.startswith("image_to_text_r")]


def _rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = list(report["languages"].items())
    if "all" in report:
        rows.append(("all (" + "+".join(report["languages"]) + ")", report["all"]))
    rows.append(("mean over languages", report["mean"]))
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def retrieval_markdown(report: dict[str, Any], title: str | None = None) -> str:
    """A Markdown table of a retrieval report: one row per language, all, mean, then chance.

    Args:
        report: the dict of ``evaluate_embeddings`` / ``evaluate_retrieval``.
        title: a heading line (e.g. the model path).

    Returns:
        Markdown text.

    Example:
        >>> import numpy as np
        >>> from malign.evaluation.evaluate import evaluate_embeddings
        >>> r = evaluate_embeddings(np.eye(2), np.eye(2), [0, 1], ["en", "en"])
        >>> print("\\n".join(retrieval_markdown(r).splitlines()[2:5]))
        | en | 2 | 2 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |
        | mean over languages |  |  | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |
        | chance (en, mean over languages) |  |  | 50.0 | 100.0 | 100.0 | 50.0 | 100.0 | 100.0 | 83.3 |
    """
    ks = _ks(report)
    keys = [f"image_to_text_r{k}" for k in ks] + [f"text_to_image_r{k}" for k in ks] + ["mean_recall"]
    header = ["Language", "Images", "Captions"] + [f"I→T R@{k}" for k in ks] + [f"T→I R@{k}" for k in ks] + ["mR"]
    rows = []
    for name, metrics in _rows(report):
        counts = [str(metrics.get("num_images", "")), str(metrics.get("num_captions", ""))]
        rows.append([name] + counts + [f"{metrics[key]:.1f}" for key in keys])
    rows += [[name, "", ""] + values for name, values in _chance_rows(_rows(report), keys)]
    lines = [f"# {title}", ""] if title else []
    lines += _table(header, rows)
    lines += [
        "",
        "Recall at K in percent; I→T: an image is found when any of its captions is in the top K; "
        "mR: mean of the recalls. Every language ranks against all images. Chance: the expected "
        "value for a random ranking of the same split (T→I: K / images; I→T: 1 - C(N-c, K) / C(N, K) "
        "for an image with c of the N captions, averaged over images). "
        f"Ties: {report['tie_rule']}.",
    ]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _wrap(text: str, width_inches: float, fontsize: float) -> str:
    """Wraps a title to the figure's width (about 0.55 em per character)."""
    chars = max(20, int(width_inches * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.splitlines())


def _save(fig: Any, path: str | os.PathLike) -> Path:
    plt = _pyplot()
    path = Path(path)
    try:
        with atomic_files.replacing(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", pad_inches=0.1,
                        format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


#: Bars narrower than this (in points) get no value label: a rotated 7-point label needs ~8.
_MIN_LABEL_BAR_POINTS = 8.5
_BAR_INCHES = 0.26
_MAX_PANEL_INCHES = 14.0


def _bar_panel(ax: Any, groups: list[tuple[str, dict[str, Any]]], series: list[tuple[str, str]],
               label_values: bool) -> list[Any]:
    """Grouped bars: one group per (name, metrics), one bar per (key, label) of ``series``,
    each with its chance level as a dashed mark. Returns the legend handles."""
    import numpy as np

    x = np.arange(len(groups))
    width = 0.8 / len(series)
    handles = []
    for i, (key, label) in enumerate(series):
        left = x + (i - len(series) / 2) * width
        values = [metrics[key] for _, metrics in groups]
        bars = ax.bar(left, values, width, align="edge", label=label)
        handles.append(bars)
        if label_values:
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2, rotation=90)
        chance = [metrics.get("chance", {}).get(key) for _, metrics in groups]
        keep = [j for j, c in enumerate(chance) if c is not None]
        if keep:
            mark = ax.hlines([chance[j] for j in keep], left[keep], left[keep] + width, **_CHANCE_STYLE)
    if any("chance" in metrics for _, metrics in groups):
        mark.set_label("chance")
        handles.append(mark)
    ax.set_xticks(x, [name for name, _ in groups])
    ax.set_xlim(-0.6, len(groups) - 0.4)
    # Head room for rotated labels above 100 %.
    ax.set_ylim(0, 120 if label_values else 105)
    ax.set_yticks(range(0, 101, 20))
    ax.grid(axis="y", alpha=0.3)
    return handles


def _legend_beside(ax: Any, handles: list[Any]) -> Any:
    """The legend to the right of the axes, outside the bars (constrained layout makes room)."""
    return ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                     borderaxespad=0.0, frameon=False)


def _panel_width(num_groups: int, bars_per_group: int) -> tuple[float, bool]:
    """Axes width in inches for grouped bars, and whether value labels fit on the bars."""
    width = num_groups * (bars_per_group * _BAR_INCHES + 0.3) + 0.4
    width = min(max(width, 2.6), _MAX_PANEL_INCHES)
    bar_points = 72 * (width - 0.4) / num_groups * 0.8 / bars_per_group
    return width, bar_points >= _MIN_LABEL_BAR_POINTS


def retrieval_chart(report: dict[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Saves ``retrieval_figure`` as PNG.

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
    return _save(retrieval_figure(report, title), path)


def retrieval_figure(report: dict[str, Any], title: str | None = None) -> Any:
    """A bar chart of R@K per language (then all, mean), one panel per direction.

    Every bar carries a dashed mark at its chance level; the legend sits beside the
    panels, value labels are rotated (and left out when the bars are too narrow for them).

    Args:
        report: the dict of ``evaluate_embeddings``.
        title: figure title (wrapped to the figure's width).

    Returns:
        The matplotlib figure (close it with ``matplotlib.pyplot.close``).

    Example:
        >>> import numpy as np
        >>> from malign.evaluation.evaluate import evaluate_embeddings
        >>> fig = retrieval_figure(evaluate_embeddings(np.eye(2), np.eye(2), [0, 1], ["en", "en"]))
        >>> [ax.get_title() for ax in fig.axes]
        ['Image → text', 'Text → image']
    """
    plt = _pyplot()
    ks = _ks(report)
    groups = list(report["languages"].items())
    if len(groups) > 1:
        if "all" in report:
            groups.append(("all", report["all"]))
        groups.append(("mean", report["mean"]))
    panel, label_values = _panel_width(len(groups), len(ks))
    fig, axes = plt.subplots(2, 1, figsize=(panel + 1.4, 6.4), sharex=True, layout="constrained")
    for ax, direction, label in zip(axes, ("image_to_text", "text_to_image"), ("Image → text", "Text → image")):
        handles = _bar_panel(ax, groups, [(f"{direction}_r{k}", f"R@{k}") for k in ks], label_values)
        ax.set_title(label, fontsize=10)
        ax.set_ylabel("recall (%)")
        ax.tick_params(axis="x", labelbottom=True)
    _legend_beside(axes[0], handles)
    parts = []
    for name, metrics in groups:
        chance = metrics.get("chance", {}).get("mean_recall")
        part = f"{name} {metrics['mean_recall']:.1f}" + (
            f" (chance {format_percent(chance)})" if chance is not None else "")
        parts.append(part.replace(" ", "\u00a0"))  # wrap between groups, not inside one
    text = (title + "\n" if title else "") + "mR: " + ", ".join(parts)
    fig.suptitle(_wrap(text, panel + 1.4, 10), fontsize=10)
    return fig


def _json_ready(report: dict[str, Any], confusion_files: dict[str, str] | None = None) -> dict[str, Any]:
    """The report for ``metrics.json``: confusion matrices replaced by their file names."""
    if not confusion_files:
        return report
    out = dict(report)
    out["languages"] = {}
    for lang, metrics in report["languages"].items():
        metrics = {k: v for k, v in metrics.items() if k != "confusion"}
        if lang in confusion_files:
            metrics["confusion_file"] = confusion_files[lang]
        out["languages"][lang] = metrics
    return out


def _write_json(data: dict[str, Any], path: Path) -> None:
    atomic_files.write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "metrics.json", "markdown": out / "metrics.md", "chart": out / "recall.png"}
    _write_json(report, paths["json"])
    atomic_files.write_text(paths["markdown"], retrieval_markdown(report, title))
    retrieval_chart(report, paths["chart"], title)
    return paths


# -- zero-shot ---------------------------------------------------------------------------------
def _zero_shot_keys(report: dict[str, Any]) -> list[str]:
    first = next(iter(report["languages"].values()))
    tops = sorted((k for k in first if re.fullmatch(r"top\d+", k)), key=lambda k: int(k[3:]))
    return tops + ["mean_per_class_top1"]


def _class_names(report: dict[str, Any], lang: str) -> list[str]:
    return list(report["languages"][lang].get("per_class", {}))


def _file_safe(lang: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", lang)


def zero_shot_markdown(report: dict[str, Any], title: str | None = None, per_class: bool = True) -> str:
    """Markdown tables of a zero-shot report: accuracy per language with chance, then per class.

    Args:
        report: the dict of ``malign.evaluation.zero_shot.evaluate_zero_shot``.
        title: a heading line.
        per_class: add the table of top-1 accuracy per class (one row per class, one
            column per language).

    Returns:
        Markdown text.

    Example:
        >>> import numpy as np
        >>> from malign.evaluation.zero_shot import describe_classes, zero_shot_accuracy
        >>> m = zero_shot_accuracy(np.eye(2)[[0, 0, 1, 1]], np.eye(2)[[0, 0]], [0, 0, 1, 1], ks=(1,))
        >>> m.update(num_images=4, num_classes=2, num_templates=3)
        >>> r = {"languages": {"en": describe_classes(m, ["dog", "cat"], (1,))}}
        >>> print("\\n".join(zero_shot_markdown(r).splitlines()[2:4]))
        | en | 4 | 2 | 3 | 50.0 | 50.0 | dog (100.0) |
        | chance (en) |  |  |  | 50.0 | 50.0 |  |
    """
    keys = _zero_shot_keys(report)
    header = ["Language", "Images", "Classes", "Prompts"] + [f"Top-{k[3:]}" for k in keys[:-1]]
    header += ["Mean per-class top-1", "Most predicted (% of images)"]
    rows_in = list(report["languages"].items())
    if len(rows_in) > 1 and "mean" in report:
        rows_in.append(("mean", report["mean"]))
    rows = []
    for name, m in rows_in:
        counts = [str(m.get(key, "")) for key in ("num_images", "num_classes", "num_templates")]
        most = m.get("most_predicted")
        most_text = f"{most['class']} ({most['share']:.1f})" if most else ""
        rows.append([name] + counts + [f"{m[key]:.1f}" for key in keys] + [most_text])
    rows += [[name, "", "", ""] + values + [""] for name, values in _chance_rows(rows_in, keys)]
    lines = [f"# {title}", ""] if title else []
    lines += _table(header, rows)
    lines += [
        "",
        "Accuracy in percent. Class embeddings average the L2-normalised embeddings of all prompt "
        "templates (prompt ensembling). Top-K counts a hit when the label is among the K best "
        "classes (all classes when there are fewer). Chance: a random ranking of the classes, "
        "min(K, classes) / classes. Ties: the class listed first ranks higher.",
    ]
    langs = [lang for lang in report["languages"] if report["languages"][lang].get("per_class")]
    if per_class and langs:
        names = {lang: _class_names(report, lang) for lang in langs}
        first = langs[0]
        header = ["#", f"Class ({first})", "Images"] + [f"Top-1 {lang}" for lang in langs]
        rows = []
        for c, name in enumerate(names[first]):
            images = report["languages"][first]["per_class"][name]["images"]
            values = [format_percent(report["languages"][lang]["per_class"][names[lang][c]]["top1"])
                      for lang in langs]
            rows.append([str(c), name, str(images)] + values)
        rows.append(["", "chance", ""] + [format_percent(report["languages"][lang]["chance"]["mean_per_class_top1"])
                                          for lang in langs])
        lines += ["", "## Top-1 accuracy per class", ""] + _table(header, rows)
        lines += [
            "",
            "Per-class accuracy in percent of the images of that class (– : no images). Confusion "
            "matrices (rows: true class, columns: top-1 prediction, image counts): "
            + ", ".join(f"`confusion-{_file_safe(lang)}.csv`" for lang in langs) + ".",
        ]
    return "\n".join(lines) + "\n"


def _per_class_panel(ax: Any, report: dict[str, Any], langs: list[str]) -> None:
    """Top-1 per class: a heatmap (classes x languages) up to 50 classes, else sorted curves."""
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    first = langs[0]
    names = _class_names(report, first)
    chance = report["languages"][first]["chance"]["mean_per_class_top1"]
    columns = [[v["top1"] for v in report["languages"][lang]["per_class"].values()] for lang in langs]
    values = np.array([[np.nan if a is None else a for a in column] for column in columns], dtype=float).T
    if len(names) <= 50:
        # Red below chance, blue above: chance is the colour scale's centre.
        norm = TwoSlopeNorm(vmin=0.0, vcenter=min(max(chance, 0.5), 99.5), vmax=100.0)
        ax.imshow(np.ma.masked_invalid(values), cmap="RdBu", norm=norm, aspect="auto",
                          interpolation="nearest")
        ax.set_yticks(range(len(names)), [n if len(n) <= 28 else n[:27] + "…" for n in names],
                      fontsize=8 if len(names) <= 30 else 6)
        ax.set_xticks(range(len(langs)), langs)
        ax.xaxis.tick_top()
        for (c, j), v in np.ndenumerate(values):
            text = "–" if np.isnan(v) else f"{v:.0f}"
            dark = not np.isnan(v) and abs(norm(v) - 0.5) > 0.3
            ax.text(j, c, text, ha="center", va="center", fontsize=7 if len(names) <= 30 else 5.5,
                    color="white" if dark else "black")
        ax.set_title(f"top-1 accuracy per class (%): red below chance ({format_percent(chance)}), "
                     "blue above", fontsize=9)
    else:
        for j, lang in enumerate(langs):
            column = values[:, j]
            column = np.sort(column[~np.isnan(column)])[::-1]
            ax.plot(np.arange(1, column.size + 1), column, label=lang, linewidth=1.2)
        ax.axhline(chance, color="black", linestyle=_CHANCE_STYLE["linestyles"],
                   linewidth=_CHANCE_STYLE["linewidth"], label=f"chance {format_percent(chance)}")
        ax.set_xlim(1, len(names))
        ax.set_ylim(0, 102)
        ax.set_xlabel(f"classes ({len(names)}), sorted by top-1 accuracy")
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
        ax.set_title("top-1 per class", fontsize=9)


def zero_shot_chart(report: dict[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Saves ``zero_shot_figure`` as PNG.

    Args:
        report: the dict of ``evaluate_zero_shot``.
        path: output ``.png`` file.
        title: figure title.

    Returns:
        The path written.

    Example:
        >>> zero_shot_chart(report, "runs/zs/accuracy.png")  # doctest: +SKIP
    """
    return _save(zero_shot_figure(report, title), path)


def zero_shot_figure(report: dict[str, Any], title: str | None = None) -> Any:
    """Zero-shot accuracy per language and per class, with chance levels.

    The top panel shows top-K and mean per-class top-1 per language (then the mean), each
    bar with a dashed chance mark. The bottom panel shows top-1 per class: a heatmap of
    classes x languages coloured around the chance level (up to 50 classes), or each
    language's per-class accuracies sorted, against the chance line.

    Args:
        report: the dict of ``evaluate_zero_shot``.
        title: figure title (wrapped to the figure's width).

    Returns:
        The matplotlib figure (close it with ``matplotlib.pyplot.close``).

    Example:
        >>> fig = zero_shot_figure(report)  # doctest: +SKIP
    """
    plt = _pyplot()
    keys = _zero_shot_keys(report)
    langs = list(report["languages"])
    groups = list(report["languages"].items())
    if len(groups) > 1 and "mean" in report:
        groups.append(("mean", report["mean"]))
    panel, label_values = _panel_width(len(groups), len(keys))
    has_classes = all(report["languages"][lang].get("per_class") for lang in langs)
    num_classes = len(_class_names(report, langs[0])) if has_classes else 0
    class_height = 0.0
    if has_classes:
        class_height = max(2.2, 0.22 * num_classes + 1.0) if num_classes <= 50 else 3.2
    width = max(panel, 5.0 if has_classes else 0.0) + 1.6
    fig = plt.figure(figsize=(width, 3.0 + class_height), layout="constrained")
    if has_classes:
        top, bottom = fig.subplots(2, 1, height_ratios=[3.0, class_height])
    else:
        top, bottom = fig.subplots(1, 1), None
    labels = {k: f"top-{k[3:]}" for k in keys[:-1]} | {"mean_per_class_top1": "mean per-class top-1"}
    handles = _bar_panel(top, groups, [(k, labels[k]) for k in keys], label_values)
    top.set_ylabel("accuracy (%)")
    _legend_beside(top, handles)
    if bottom is not None:
        _per_class_panel(bottom, report, langs)
    if title:
        fig.suptitle(_wrap(title, width, 10), fontsize=10)
    return fig


def write_confusion_csv(confusion: Any, names: list[str], path: str | os.PathLike) -> Path:
    """Writes a confusion matrix as CSV: a header of predicted classes, one row per true class.

    Args:
        confusion: ``[C, C]`` counts, row = true class, column = predicted class.
        names: the class names.
        path: output file.

    Returns:
        The path written.

    Example:
        >>> import tempfile, os
        >>> p = write_confusion_csv([[2, 0], [1, 0]], ["dog", "cat"], os.path.join(tempfile.mkdtemp(), "c.csv"))
        >>> print(p.read_text().strip())
        true \\ predicted,dog,cat
        dog,2,0
        cat,1,0
    """
    path = Path(path)
    with atomic_files.replacing(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["true \\ predicted"] + list(names))
        for name, row in zip(names, confusion):
            writer.writerow([name] + [int(v) for v in row])
    return path


def confusion_chart(confusion: Any, names: list[str], path: str | os.PathLike, title: str | None = None) -> Path:
    """A confusion matrix as a heatmap (percent of each true class), saved as PNG.

    Class names label the axes up to 50 classes; counts are written in the cells up to 20.

    Args:
        confusion: ``[C, C]`` counts, row = true class, column = predicted class.
        names: the class names.
        path: output file.
        title: figure title.

    Returns:
        The path written.

    Example:
        >>> import tempfile, os
        >>> confusion_chart([[2, 0], [1, 0]], ["dog", "cat"], os.path.join(tempfile.mkdtemp(), "c.png")).suffix
        '.png'
    """
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(confusion, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(100.0 * counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    c = len(names)
    side = min(14.0, max(4.5, 0.32 * c + 2.2))
    fig, ax = plt.subplots(figsize=(side + 1.0, side), layout="constrained")
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=100, interpolation="nearest")
    if c <= 50:
        short = [n if len(n) <= 24 else n[:23] + "…" for n in names]
        size = 8 if c <= 30 else 6
        ax.set_xticks(range(c), short, rotation=60, ha="right", rotation_mode="anchor", fontsize=size)
        ax.set_yticks(range(c), short, fontsize=size)
    if c <= 20:
        for (i, j), v in np.ndenumerate(counts):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 50 else "black")
    ax.set_xlabel("predicted class (top-1)")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, shrink=0.8, label="% of the true class's images")
    chance = 100.0 / c
    text = (title + "\n" if title else "") + (
        f"{counts.sum()} images, {c} classes; random guessing puts {format_percent(chance)} % of each row in each cell"
    )
    ax.set_title(_wrap(text, side + 1.0, 10), fontsize=10)
    return _save(fig, path)


def write_zero_shot_report(
    report: dict[str, Any], out_dir: str | os.PathLike, title: str | None = None
) -> dict[str, Path]:
    """Writes ``metrics.json``, ``metrics.md``, ``accuracy.png`` and the confusion matrices.

    For every language with a confusion matrix: ``confusion-<lang>.csv`` (image counts,
    row = true class, column = predicted class) and ``confusion-<lang>.png``. In
    ``metrics.json`` the matrix is replaced by ``"confusion_file"``.

    Args:
        report: the dict of ``evaluate_zero_shot``.
        out_dir: output directory (created).
        title: heading of the table and the charts.

    Returns:
        ``{"json": path, "markdown": path, "chart": path, "confusion-<lang>": csv path,
        "confusion-<lang>-chart": png path, ...}``.

    Example:
        >>> write_zero_shot_report(report, "runs/zero-shot")  # doctest: +SKIP
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "metrics.json", "markdown": out / "metrics.md", "chart": out / "accuracy.png"}
    files = {}
    for lang, metrics in report["languages"].items():
        if "confusion" not in metrics:
            continue
        stem = f"confusion-{_file_safe(lang)}"
        names = _class_names(report, lang) or [str(i) for i in range(len(metrics["confusion"]))]
        paths[stem] = write_confusion_csv(metrics["confusion"], names, out / f"{stem}.csv")
        paths[f"{stem}-chart"] = confusion_chart(
            metrics["confusion"], names, out / f"{stem}.png",
            f"confusion ({lang})" + (f": {title}" if title else ""),
        )
        files[lang] = f"{stem}.csv"
    _write_json(_json_ready(report, files), paths["json"])
    atomic_files.write_text(paths["markdown"], zero_shot_markdown(report, title))
    zero_shot_chart(report, paths["chart"], title)
    return paths
