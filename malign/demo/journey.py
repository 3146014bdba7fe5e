"""The demo journey: every step a user takes, each as its own ``malign`` command and process.

``run_journey(recipe, workdir)`` runs, in order (the recipe's settings and configs decide
sizes; see ``recipes/demo.py``):

====  ===========================================  =========================================
step  command                                      writes
====  ===========================================  =========================================
1     ``malign data synthetic`` (train, held-out)  ``W/data/train-*``, ``W/data/heldout-*``
2     ``malign data captions``                     ``W/data/train-captions.<lang>.txt``
3     ``malign tokenizer train``                   ``W/tokenizer/teacher.model``
4     ``malign train`` (``get_config``, cpu:2)     ``W/teacher/model.keras``
5     ``malign tokenizer trim``                    ``W/tokenizer/student.model``
6     ``malign distill`` (``get_distill_config``)  ``W/student/model.keras``
7     ``malign eval`` of each                      ``W/<model>/eval-heldout/metrics.json``
8     ``malign export`` of each                    ``W/export/<model>/1/``
9     ``malign embed`` (student SavedModel)        ``W/heldout-images.npz``
10    ``malign search`` (one text query)           ``W/query.json``
====  ===========================================  =========================================

and prints a table: R@1 (both directions) and mR per language of the teacher and the
student against chance, their weights and their export paths. No step shares a process
with another, so a model that only loads in the process that wrote it fails here, as it
would for a user. A failing step stops the journey with its command and exit code.

Example:
    >>> run_journey("recipes/demo.py", "runs/demo")  # doctest: +SKIP
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["run_journey", "malign_command", "format_table", "JourneyError"]

LANGUAGES = ("en", "de", "fr", "cs")


class JourneyError(RuntimeError):
    """A step of the journey failed; the message names its command and exit code."""


def malign_command() -> list[str]:
    """The ``malign`` console script of this Python (``python -m malign.cli`` without it)."""
    script = Path(sys.executable).with_name("malign")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "malign.cli"]


def _load_recipe_module(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    spec = importlib.util.spec_from_file_location(f"malign_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("get_settings", "get_config", "get_distill_config"):
        if not hasattr(module, name):
            raise ValueError(f"recipe {path} defines no {name}(smoke=False): a demo recipe "
                             "gives the journey's settings, the teacher and the student")
    return module


class _Runner:
    """Runs the steps, each in its own process, printing its output indented."""

    def __init__(self, total: int):
        self.total = total
        self.index = 0
        self.seconds: dict[str, float] = {}

    def __call__(self, title: str, args: Sequence[str]) -> str:
        self.index += 1
        argv = malign_command() + [str(a) for a in args]
        shown = "malign " + " ".join(shlex.quote(str(a)) for a in args)
        print(f"\nmalign demo [{self.index}/{self.total}] {title}\n  $ {shown}", flush=True)
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        lines = []
        for line in process.stdout:
            lines.append(line)
            print("  | " + line.rstrip("\n"), flush=True)
        code = process.wait()
        took = time.perf_counter() - start
        self.seconds[title] = took
        if code != 0:
            raise JourneyError(f"step {self.index} ({title}) failed with exit code {code}: "
                               f"{shown}")
        print(f"  done in {took:.1f} s", flush=True)
        return "".join(lines)


def _eval_languages(metrics: dict) -> dict[str, dict]:
    return {lang: metrics["languages"][lang] for lang in LANGUAGES
            if lang in metrics.get("languages", {})}


def format_table(rows: dict[str, dict], exports: dict[str, str]) -> str:
    """The closing table: per model, weights, then per language R@1 both ways and mR.

    Args:
        rows: model name -> the ``metrics.json`` of its ``malign eval``.
        exports: model name -> its SavedModel version directory.

    Returns:
        A plain-text table (markdown-compatible).
    """
    langs = [lang for lang in LANGUAGES if all(lang in _eval_languages(m) for m in rows.values())]
    header = ["model", "weights"] + [f"{lang} I2T R@1 / T2I R@1 / mR" for lang in langs]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    chance = None
    for name, metrics in rows.items():
        per_lang = _eval_languages(metrics)
        cells = [name, f"{metrics['meta']['weights']:,}"]
        for lang in langs:
            m = per_lang[lang]
            cells.append(f"{m['image_to_text_r1']:.1f} / {m['text_to_image_r1']:.1f} / "
                         f"{m['mean_recall']:.1f}")
            chance = m.get("chance", chance)
        lines.append("| " + " | ".join(cells) + " |")
    if chance:
        cells = ["chance", ""] + [f"{chance['image_to_text_r1']:.2f} / "
                                  f"{chance['text_to_image_r1']:.2f} / "
                                  f"{chance['mean_recall']:.1f}"] * len(langs)
        lines.append("| " + " | ".join(cells) + " |")
    weights = {name: m["meta"]["weights"] for name, m in rows.items()}
    if "teacher" in weights and "student" in weights:
        lines.append(f"\nstudent / teacher weights: {weights['student'] / weights['teacher']:.3f}")
    for name, path in exports.items():
        lines.append(f"{name} SavedModel: {path}")
    return "\n".join(lines)


def run_journey(recipe: str | os.PathLike, workdir: str | os.PathLike,
                smoke: bool = False) -> dict[str, Any]:
    """Runs the demo journey (see the module docstring); returns what the table shows.

    Args:
        recipe: a demo recipe (``get_settings``, ``get_config``, ``get_distill_config``).
        workdir: the journey's directory ``W``; a step whose output exists is run again
            (each command decides: training resumes, data with the same settings is kept).
        smoke: the recipe's smoke sizes (seconds, for tests).

    Returns:
        ``{"metrics": {model: metrics.json}, "exports": {model: path}, "query": hits,
        "seconds": {step: s}}``.

    Raises:
        JourneyError: a step failed.
    """
    module = _load_recipe_module(recipe)
    settings = module.get_settings(smoke=smoke)
    w = Path(workdir)
    data = w / "data"
    smoke_flag = ["--smoke"] if smoke else []
    run = _Runner(total=13)
    started = time.perf_counter()

    run("write the synthetic training scenes",
        ["data", "synthetic", "--out", data / "train", "--n", settings["TRAIN_SCENES"],
         "--image-size", settings["IMAGE_SIZE"], "--seed", 0, "--quiet"])
    run("write the held-out scenes (new scenes, another seed)",
        ["data", "synthetic", "--out", data / "heldout", "--n", settings["HELDOUT_SCENES"],
         "--image-size", settings["IMAGE_SIZE"], "--seed", 100_003, "--quiet"])
    run("dump the training captions per language", [
        "data", "captions", data / "train", "--out", data / "train-captions"])
    corpus = sorted(glob.glob(str(data / "train-captions.*.txt")))
    run("train the shared SentencePiece vocabulary",
        ["tokenizer", "train", "--input", *corpus, "--vocab-size", settings["VOCABULARY_SIZE"],
         "--out", w / "tokenizer" / "teacher", "--quiet"])
    common = ["--recipe", recipe, *smoke_flag,
              "--set", f"data.train_pattern={data / 'train'}"]
    run("train the teacher (2 replicas: cpu:2)",
        ["train", *common, "--workdir", w / "teacher",
         "--set", f"data.tokenizer={w / 'tokenizer' / 'teacher.model'}",
         "--set", f"model.text.vocabulary_size={settings['VOCABULARY_SIZE']}"])
    run("trim the vocabulary for the student",
        ["tokenizer", "trim", "--model", w / "tokenizer" / "teacher.model", "--corpus", *corpus,
         "--min-count", settings["STUDENT_MIN_COUNT"], "--out", w / "tokenizer" / "student"])
    trimmed = json.loads((w / "tokenizer" / "student.trim.json").read_text())
    run("distil the student from the teacher",
        ["distill", *common, "--workdir", w / "student",
         "--set", f"data.tokenizer={w / 'tokenizer' / 'student.model'}",
         "--set", f"model.text.vocabulary_size={int(trimmed['pieces_after'])}",
         "--set", f"distillation.teacher={w / 'teacher' / 'model.keras'}"])
    metrics, exports = {}, {}
    for name in ("teacher", "student"):
        out = w / name / "eval-heldout"
        run(f"evaluate the {name} on the held-out scenes",
            ["eval", "--model", w / name / "model.keras", "--data", data / "heldout",
             "--out", out, "--quiet"])
        metrics[name] = json.loads((out / "metrics.json").read_text())
    for name in ("teacher", "student"):
        out = w / "export" / name
        run(f"export the {name} as a SavedModel",
            ["export", "--model", w / name / "model.keras", "--out", out])
        versions = sorted((p for p in out.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        exports[name] = str(versions[-1])
    run("embed the held-out images with the student's SavedModel",
        ["embed", "--model", exports["student"], "--data", data / "heldout",
         "--out", w / "heldout-images.npz", "--quiet"])
    query_out = run(f"search the held-out images for {settings['QUERY']!r} (student SavedModel)",
                    ["search", "--embeddings", w / "heldout-images.npz",
                     "--model", exports["student"], "--text", settings["QUERY"], "-k", 5])
    total = time.perf_counter() - started
    table = format_table(metrics, exports)
    print(f"\nmalign demo: finished in {total / 60:.1f} min; held-out scenes "
          f"({settings['HELDOUT_SCENES']}), R@1 and mR in percent:\n\n{table}", flush=True)
    return {"metrics": metrics, "exports": exports, "query": query_out,
            "seconds": dict(run.seconds, total=total)}
