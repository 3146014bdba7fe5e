"""The ``malign`` console script: answers ``--help`` and bad arguments without TensorFlow.

``import malign`` imports TensorFlow (about 5 s) because it registers the Keras classes
that ``.keras`` files need. The command line does not need them to print help or to
reject an argument, so this launcher builds the parser from malign's command modules
(which import nothing heavy at module level) with malign's packages stubbed, so that no
package ``__init__`` runs. When the arguments parse, the stubs are dropped, the real
``malign`` is imported (TensorFlow's start-up log lines filtered unless ``--verbose``)
and ``malign.cli.main`` runs the command. ``python -m malign.cli`` runs the same
commands without this shortcut.

It is a top-level module because any module inside the ``malign`` package would run
``malign/__init__.py`` first.

Example:
    $ malign --help          # instant
    $ malign -v train ...    # with TensorFlow's own log lines
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

PACKAGE = "malign"


def _owned(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _stub_packages() -> None:
    """Puts a bare module (``__path__`` only, no ``__init__`` run) for every malign package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the {PACKAGE} package is not installed")
    for location in spec.submodule_search_locations:
        root = Path(location)
        for init in sorted(root.rglob("__init__.py")):
            name = ".".join((PACKAGE, *init.parent.relative_to(root).parts))
            module = types.ModuleType(name)
            module.__path__ = [str(init.parent)]
            module.__package__ = name
            sys.modules[name] = module


def _drop_malign_modules() -> None:
    for name in [n for n in sys.modules if _owned(n)]:
        del sys.modules[name]


def _parse_light(argv: list[str]):
    """Parses ``argv`` with TensorFlow-free stubs; argparse exits on --help and errors.

    A command may set ``precheck`` (a TensorFlow-free function of the parsed arguments,
    e.g. ``malign train`` resolving its recipe and ``--set`` overrides): it runs here, and
    its ``ValueError`` / ``FileNotFoundError`` ends the command with exit code 2 at once.
    Returns ``(args, tf_logging module, error message or None)``.
    """
    _stub_packages()
    try:
        cli = importlib.import_module(f"{PACKAGE}.cli")
        args = cli.build_parser().parse_args(argv)
        tf_logging = importlib.import_module(f"{PACKAGE}.tf_logging")
        tf_logging.set_verbose(args.show_logs)
        error = None
        precheck = getattr(args, "precheck", None)
        if precheck is not None:
            try:
                # Quiet: validating a model config may load TensorFlow (EfficientNet widths).
                with tf_logging.quiet_tensorflow():
                    precheck(args)
            except (ValueError, FileNotFoundError) as failure:
                error = f"malign {args.command}: error: {failure}"
        return args, tf_logging, error
    finally:
        _drop_malign_modules()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if PACKAGE not in sys.modules:
        args, tf_logging, error = _parse_light(argv)
        if error is not None:
            print(error, file=sys.stderr)
            return 2
        with tf_logging.quiet_tensorflow():
            importlib.import_module(PACKAGE)
    from malign.cli import main as run

    return run(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
