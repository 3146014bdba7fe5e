"""``malign demo``: the journey of ``recipes/demo.py``, every step as its own command.

Example:
    $ malign demo --recipe recipes/demo.py --workdir runs/demo
"""

from __future__ import annotations

import argparse

__all__ = ["add_subparser"]


def _run(args: argparse.Namespace) -> int:
    from malign.demo.journey import JourneyError, run_journey

    try:
        run_journey(args.recipe, args.workdir, smoke=args.smoke)
    except JourneyError as error:
        print(f"malign demo: {error}")
        return 1
    return 0


def add_subparser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole journey on synthetic data, each step as a command",
        description="Synthetic scenes -> SentencePiece vocabulary -> teacher (cpu:2) -> "
                    "trimmed vocabulary -> distilled student -> held-out evaluation of both "
                    "-> SavedModel export of both -> one text query through the student's "
                    "SavedModel, each a malign command in its own process; ends with a "
                    "table of both models' held-out retrieval.",
    )
    parser.add_argument("--recipe", default="recipes/demo.py",
                        help="a demo recipe (default %(default)s)")
    parser.add_argument("--workdir", default="runs/demo",
                        help="where every step writes (default %(default)s)")
    parser.add_argument("--smoke", action="store_true",
                        help="the recipe's smoke sizes (seconds; for tests)")
    parser.set_defaults(func=_run)
