"""The ``malign`` command line.

Each command group lives next to the code it drives and exposes
``add_subparser(subparsers)``, which adds its parser and sets ``func`` on the
parsed namespace. This module only collects them, so adding a command never
touches another group's code. Command modules import nothing heavy at module level
(TensorFlow, Keras, malign's models): the ``malign`` console script
(``malign_launcher``) builds this parser without TensorFlow, so ``--help`` and
argument errors are instant; a test checks it.

Example:
    $ malign --help
    $ malign train --recipe recipes/demo.py --set training.steps=10
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module here defines add_subparser(subparsers). Keep one line per group.
COMMAND_MODULES = (
    "malign.training.commands",
    "malign.text.commands",
    "malign.data.commands",
    "malign.evaluation.commands",
    "malign.export.commands",
    "malign.convert.commands",
    "malign.search.commands",
    "malign.demo.commands",
)


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser of the ``malign`` command."""
    parser = argparse.ArgumentParser(
        prog="malign",
        description="Multilingual ALIGN dual encoders on TensorFlow and Keras 3.",
    )
    parser.add_argument("-v", "--verbose", dest="show_logs", action="store_true",
                        help="show TensorFlow's and SentencePiece's own log lines "
                             "(also MALIGN_VERBOSE=1)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_subparser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``malign`` command; returns the exit code."""
    from malign import tf_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.show_logs:
        tf_logging.set_verbose(True)
    from malign.workdir_lock import WorkdirBusyError

    try:
        result = args.func(args)
    except (ValueError, WorkdirBusyError, OSError) as error:
        # OSError: a missing input, or a full/read-only disk (malign.atomic_files names the
        # path and says that nothing was left half-written).
        print(f"malign {args.command}: error: {error}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
