"""``malign train`` and ``malign distill``: run a recipe (or a preset) with ``--set`` overrides.

A recipe is a Python file defining ``get_config(smoke=False) -> ExperimentConfig``;
``malign distill`` uses its ``get_distill_config(smoke=False)`` when it defines one (a
recipe that trains a teacher and then distils a student, such as ``recipes/demo.py``),
else ``get_config``.

Example:
    $ malign train --recipe recipes/demo.py --workdir runs/demo
    $ malign train --preset tiny --set training.steps=4 --set training.strategy=cpu:2 \
        --workdir runs/smoke
    $ malign distill --recipe recipes/distill_student.py \
        --set distillation.teacher=runs/teacher/model.keras --workdir runs/student
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

from malign.config import ConfigError, ExperimentConfig

__all__ = ["add_subparser", "load_recipe", "parse_overrides"]


def load_recipe(path: str | Path, smoke: bool = False,
                function: str = "get_config") -> ExperimentConfig:
    """Imports a recipe file and returns its ``get_config(smoke=...)``.

    Args:
        path: a Python file defining ``get_config(smoke: bool = False) -> ExperimentConfig``.
        smoke: ask the recipe for its CPU-sized version.
        function: the recipe function to call; ``"get_distill_config"`` falls back to
            ``get_config`` when the recipe has no such function.

    Example:
        >>> load_recipe("recipes/demo.py", smoke=True).name  # doctest: +SKIP
        'demo'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    spec = importlib.util.spec_from_file_location(f"malign_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, function):
        function = "get_config"
    if not hasattr(module, function):
        raise ValueError(f"recipe {path} defines no get_config(smoke=False)")
    config = getattr(module, function)(smoke=smoke)
    if not isinstance(config, ExperimentConfig):
        raise ValueError(f"recipe {path}: {function} must return an ExperimentConfig, "
                         f"got {type(config).__name__}")
    config.validate()
    return config


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["training.steps=10", "data.languages=en,de"]`` -> dict; values parsed as JSON.

    Example:
        >>> parse_overrides(["training.steps=10", "training.strategy=cpu:2"])
        {'training.steps': 10, 'training.strategy': 'cpu:2'}
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except ValueError:  # not JSON (a bare word, a path), or an int beyond Python's limit
            value = raw
        out[key.strip()] = value
    return out


def _experiment_from_args(args: argparse.Namespace) -> ExperimentConfig:
    if args.recipe:
        function = "get_distill_config" if args.command == "distill" else "get_config"
        experiment = load_recipe(args.recipe, smoke=args.smoke, function=function)
    else:
        from malign.presets import get_preset

        experiment = ExperimentConfig(name=args.preset, preset=args.preset,
                                      model=get_preset(args.preset))
    overrides = parse_overrides(args.set or [])
    if overrides:
        experiment = experiment.with_overrides(overrides)
    experiment.validate()
    return experiment


def _run(args: argparse.Namespace) -> int:
    experiment = _experiment_from_args(args)
    workdir = Path(args.workdir or f"runs/{experiment.name}")
    from malign import training
    from malign.training import distillation

    job = distillation.DistillationJob() if args.command == "distill" else \
        training.fit.TrainingJob()
    if args.print_config:
        # The same checks as a run (config, derived fields against the work directory,
        # strategy, data, tokenizer, init_from; the teacher), without writing anything.
        print(job.check(training.prepare_run(experiment, workdir)).experiment.to_json())
        return 0
    try:
        training.fit.fit_experiment(experiment, workdir, job, verbose=args.verbose)
    except training.restore_points.Preempted:
        return 0  # SIGTERM: a restore point is saved and the message printed; not a failure
    print(f"{job.label}: done; model in {workdir / 'model.keras'}")
    return 0


def add_subparser(subparsers) -> None:
    _add_command(subparsers, "train", help="train a dual encoder from a recipe or preset",
                 description="Train with Keras fit under a tf.distribute strategy. A killed "
                             "run resumes from its last checkpoint when re-run with the same "
                             "--workdir.")
    _add_command(subparsers, "distill",
                 help="distil a frozen teacher into a student dual encoder",
                 description="Train the recipe's model (the student) to match a frozen "
                             "teacher (distillation.teacher, a .keras model) with the "
                             "weighted contrastive, similarity-KL and embedding-alignment "
                             "losses of the distillation config; the same checkpoints, "
                             "resume, TensorBoard and evaluation as malign train. The "
                             "student alone is saved (model.keras, checkpoints).")


def _add_command(subparsers, name: str, help: str, description: str) -> None:
    parser = subparsers.add_parser(name, help=help, description=description)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--recipe", help="recipes/<name>.py defining get_config(smoke=False)")
    source.add_argument("--preset", help="train a named preset on random data (smoke runs)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config field, e.g. training.steps=100 (repeatable)")
    parser.add_argument("--workdir", help="output directory (default runs/<name>)")
    parser.add_argument("--smoke", action="store_true", help="the recipe's CPU-sized version")
    parser.add_argument("--print-config", action="store_true",
                        help="check the run as training would (config, work directory, "
                             "strategy, data, tokenizer) and print its resolved config, "
                             "derived values included; writes nothing")
    parser.add_argument("--verbose", default=0, choices=(0, 1, 2),
                        type=lambda v: 1 if v == "auto" else int(v),
                        help="0: malign's progress lines (default); 1: Keras' progress bar "
                             "instead of the step lines; 2: also Keras' line per checkpoint "
                             "interval")
    # precheck: run by the console script before TensorFlow loads (malign_launcher), so a
    # mistyped --set key or a bad recipe is answered at once.
    parser.set_defaults(func=_run, precheck=_experiment_from_args)
