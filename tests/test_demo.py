"""The journey test: `malign demo --smoke`, every step a `malign` command in its own process.

data -> vocabulary -> `malign train` (cpu:2) -> `malign tokenizer trim` -> `malign distill`
-> `malign eval` x2 -> `malign export` x2 -> `malign embed` + `malign search` through the
student's SavedModel. A seam between commands (a model only its own process can load, a
file one command writes and the next cannot read) fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MALIGN = Path(sys.executable).with_name("malign")


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [str(MALIGN), "demo", "--recipe", str(REPO / "recipes" / "demo.py"), "--smoke",
         "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return workdir, result.stdout


def test_every_step_ran_as_its_own_command(journey):
    workdir, out = journey
    for step, command in enumerate(
            ("data synthetic", "data synthetic", "data captions", "tokenizer train", "train",
             "tokenizer trim", "distill", "eval", "eval", "export", "export", "embed", "search"),
            start=1):
        assert f"malign demo [{step}/13]" in out
        assert f"$ malign {command} " in out.split(f"malign demo [{step}/13]")[1]
    assert "finished in" in out


def test_the_student_is_small_and_both_models_were_evaluated_and_exported(journey):
    workdir, out = journey
    metrics = {name: json.loads((workdir / name / "eval-heldout" / "metrics.json").read_text())
               for name in ("teacher", "student")}
    teacher, student = (metrics[n]["meta"]["weights"] for n in ("teacher", "student"))
    assert student * 4 <= teacher
    assert f"student / teacher weights: {student / teacher:.3f}" in out
    for name in ("teacher", "student"):
        assert set(metrics[name]["languages"]) >= {"en", "de", "fr", "cs"}
        assert (workdir / "export" / name / "1" / "saved_model.pb").is_file()
        assert f"| {name} | {metrics[name]['meta']['weights']:,} |" in out
    # The two models read different tokenizers (the student's is the trimmed one).
    assert (workdir / "student" / "tokenizer.model").read_bytes() != \
        (workdir / "teacher" / "tokenizer.model").read_bytes()
    # The student learned from a cached teacher.
    assert (workdir / "student" / "teacher_cache" / "manifest.json").is_file()


def test_the_query_went_through_the_saved_model(journey):
    workdir, out = journey
    embeddings = workdir / "heldout-images.npz"
    assert embeddings.is_file()
    search_output = out.split("malign demo [13/13]")[1]
    assert "$ malign search " in search_output and "export/student/1" in search_output
    # Five hits (held-out scene ids) from the student's SavedModel.
    assert search_output.count("synthetic-100003-") >= 5
