"""`malign embed` / `malign search` refuse bad arguments before TensorFlow loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# The console script's launcher, reporting whether a heavy library was imported.
PROBE = """
import json, sys
import malign_launcher
try:
    code = malign_launcher.main(sys.argv[1:])
except SystemExit as exit:  # argparse's errors
    code = exit.code
heavy = sorted(m for m in ("tensorflow", "keras", "numpy") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}))
"""


def _probe(*args: str, cwd) -> tuple[dict, str]:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ), cwd=cwd)
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_bad_arguments_are_refused_at_once(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"x")
    (tmp_path / "photos").mkdir()
    (tmp_path / "e.npz").write_bytes(b"x")
    (tmp_path / "export" / "1").mkdir(parents=True)
    (tmp_path / "export" / "1" / "saved_model.pb").write_bytes(b"x")
    (tmp_path / "vocab.model").write_bytes(b"x")
    cases = [
        (("embed", "--model", "missing.keras", "--images", "photos", "--out", "o.npz"),
         "model not found: missing.keras"),
        (("embed", "--model", "model.keras", "--images", "nowhere", "--out", "o.npz"),
         "image folder not found: nowhere"),
        (("embed", "--model", "model.keras", "--captions", "none.txt", "--out", "o.npz"),
         "captions file not found: none.txt"),
        (("embed", "--model", "model.keras", "--images", "photos", "--out", "o.txt"),
         "--out must be a .npz file"),
        (("embed", "--model", "model.keras", "--images", "photos", "--out", "e.npz"),
         "--out e.npz exists; pass --overwrite"),
        (("embed", "--model", "export", "--tokenizer", "vocab.model", "--images", "photos",
          "--out", "o.npz"), "--tokenizer is for .keras models"),
        (("embed", "--model", "photos", "--images", "photos", "--out", "o.npz"),
         "is a directory without saved_model.pb"),
        (("search", "--embeddings", "e.npz"), "give at least one query"),
        (("search", "--embeddings", "none.npz", "--text", "a dog"), "embeddings file not found"),
        (("search", "--embeddings", "e.npz", "--image", "dog.jpg"), "--image not found: dog.jpg"),
        (("search", "--embeddings", "e.npz", "--text", "a", "--sheet", "s.pdf"),
         "--sheet s.pdf: a contact sheet is .html or .png"),
    ]
    for args, message in cases:
        report, stderr = _probe(*args, cwd=tmp_path)
        assert report == {"code": 2, "heavy": []}, (args, stderr[-2000:])
        assert message in stderr, (args, stderr)
    # argparse's own checks
    for args, message in ((("search", "--embeddings", "e.npz", "--text", "a", "-k", "0"),
                           "expected a positive integer, got '0'"),
                          (("embed", "--model", "m", "--images", "a", "--captions", "b",
                            "--out", "o.npz"), "not allowed with argument")):
        report, stderr = _probe(*args, cwd=tmp_path)
        assert report == {"code": 2, "heavy": []} and message in stderr, (args, stderr)
