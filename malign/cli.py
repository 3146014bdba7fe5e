"""The ``malign`` command line.

Each command group lives next to the code it drives and exposes
``add_subparser(subparsers)``, which adds its parser and sets ``func`` on the
parsed namespace. This module only collects them, so adding a command never
touches another group's code.

Example:
    $ malign --help
    $ malign train --recipe recipes/demo.py --set training.steps=10
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Each module here defines add_subparser(subparsers). Keep one line per group.
COMMAND_MODULES = (
    "malign.training_cli",
    "malign.text.commands",
    "malign.data.commands",
    "malign.evaluation.commands",
    "malign.export_commands",
    "malign.convert.commands",
)


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser of the ``malign`` command."""
    parser = argparse.ArgumentParser(
        prog="malign",
        description="Multilingual ALIGN dual encoders on TensorFlow and Keras 3.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_subparser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``malign`` command; returns the exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"malign {args.command}: error: {error}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
