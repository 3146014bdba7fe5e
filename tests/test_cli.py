"""The `malign` console script: help and argument errors without TensorFlow, quiet runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from malign.tf_logging import is_tensorflow_log_line

# Runs the launcher as the console script does, then reports whether TensorFlow (or any
# heavy library) was imported and how the command exited.
PROBE = """
import json, sys
import malign_launcher
try:
    code = malign_launcher.main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in ("tensorflow", "keras", "keras_hub", "tensorflow_text", "numpy",
                           "malign.models") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}))
"""


def _probe(*args: str) -> tuple[dict, str]:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                            text=True, timeout=60, env=dict(os.environ))
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout + result.stderr


def _commands() -> list[list[str]]:
    from malign.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = [[name] for name in sub.choices]
    for name, subparser in sub.choices.items():
        for action in subparser._actions:
            if getattr(action, "choices", None) and isinstance(action.choices, dict):
                commands += [[name, child] for child in action.choices]
    return commands


def test_help_of_every_command_imports_no_tensorflow():
    commands = _commands()
    assert ["train"] in commands and ["eval", "zero-shot"] in commands
    for command in [[], *commands]:
        report, output = _probe(*command, "--help")
        assert report == {"code": 0, "heavy": []}, (command, output[-2000:])
        assert "usage: malign" in output


def test_argument_errors_import_no_tensorflow_and_name_the_argument(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    for args, expected in ((["train"], "one of the arguments --recipe --preset is required"),
                           (["export", "--towers"], "--towers"),
                           (["no-such-command"], "invalid choice"),
                           # eval's retrieval arguments and export's --out: prechecks
                           (["eval", "--model", "m.keras"], "--data, --out required"),
                           (["eval", "--model", "m.keras", "--data", "r", "--out", "o",
                             "--batch-size", "0"], "--batch-size must be positive"),
                           (["export", "--model", "m.keras", "--out", str(a_file)],
                            f"--out {a_file} is a file"),
                           (["export", "--model", "m.keras", "--out", str(a_file / "export")],
                            f"lies under {a_file}, which is a file")):
        report, output = _probe(*args)
        assert report == {"code": 2, "heavy": []}, (args, output[-2000:])
        assert expected in output


def test_tensorflow_log_lines_are_recognised():
    assert is_tensorflow_log_line(
        "I0000 00:00:1796051198.627505    5989 port.cc:153] oneDNN custom operations are on.")
    assert is_tensorflow_log_line(
        "E0000 00:00:1796051108.448189    4915 cuda_platform.cc:52] failed call to cuInit: x")
    assert is_tensorflow_log_line(
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR")
    assert not is_tensorflow_log_line("malign train: building the model")
    assert not is_tensorflow_log_line("E0000 is not a log line without a time")


def test_a_bad_set_key_is_refused_before_any_model_is_built():
    """`malign train`'s precheck resolves the recipe and --set overrides in the launcher."""
    report, output = _probe("train", "--preset", "tiny", "--set", "training.step=10")
    assert report["code"] == 2, output[-2000:]
    assert "unknown field 'training.step' (did you mean 'steps'?)" in output
    assert "keras_hub" not in report["heavy"] and "malign.models" not in report["heavy"]
    assert not [line for line in output.splitlines() if is_tensorflow_log_line(line)]
