"""Regenerates the tiny test vocabulary ``tokenizers/test_vocab/malign_test.model``.

1000 pieces (the ``tiny`` model preset's ``vocabulary_size``): 5 special tokens, 256 byte
pieces and 739 learned pieces, trained with :func:`malign.text.train_vocabulary` on

- the multi30k-mini captions in ``../shared/data/multi30k-mini`` (task1 train, en/de/fr/cs),
- captions of 2000 synthetic demo scenes (en/de/fr/cs), so the demo's words are whole pieces,
- the few Russian, Chinese, Japanese and Arabic lines in ``extra_lines.tsv`` beside this
  script (rare characters fall back to bytes),

with ``alpha=1.0`` (no re-balancing: the four main languages have equal line counts already,
and up-sampling the two-line extras would spend pieces on them). Run from the repository
root:

    .venv/bin/python tokenizers/make_test_vocab.py

It exits with status 1 when ``../shared/data/multi30k-mini`` is missing.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MINI = REPO.parent / "shared" / "data" / "multi30k-mini"
OUT_PREFIX = REPO / "tokenizers" / "test_vocab" / "malign_test"
EXTRA = REPO / "tokenizers" / "extra_lines.tsv"
VOCAB_SIZE = 1000
SYNTHETIC_SCENES = 2000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mini", type=Path, default=MINI, help="multi30k-mini directory")
    parser.add_argument("--out", type=Path, default=OUT_PREFIX, help="output prefix")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    raw = args.mini / "data" / "task1" / "raw"
    if not raw.is_dir():
        print(
            f"make_test_vocab: {raw} not found; the test vocabulary is trained on the "
            "multi30k-mini captions in ../shared/data/multi30k-mini (see its README)",
            file=sys.stderr,
        )
        return 1
    sys.path.insert(0, str(REPO))
    from malign.data.synthetic import synthetic_captions
    from malign.text import train_vocabulary

    with tempfile.TemporaryDirectory(prefix="malign-test-vocab-") as tmp:
        inputs = []
        for lang in ("en", "de", "fr", "cs"):
            path = raw / f"train.{lang}.gz"
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                lines = handle.read()
            local = Path(tmp) / f"multi30k.{lang}.txt"
            local.write_text(lines, encoding="utf-8")
            inputs.append(str(local))
        synthetic = Path(tmp) / "synthetic.tsv"
        synthetic.write_text(
            "".join(f"{lang}\t{text}\n" for lang, text in synthetic_captions(SYNTHETIC_SCENES)),
            encoding="utf-8",
        )
        inputs += [str(synthetic), str(EXTRA)]
        path = train_vocabulary(
            inputs,
            VOCAB_SIZE,
            args.out,
            alpha=1.0,
            seed=0,
            num_threads=1,  # deterministic
            verbose=not args.quiet,
        )
    # The stats file names temporary inputs; keep only the stable parts.
    stats = path.with_name(path.stem + ".stats.json")
    import json

    data = json.loads(stats.read_text())
    data["inputs"] = [
        "multi30k-mini task1 train.{en,de,fr,cs}",
        f"synthetic_captions({SYNTHETIC_SCENES}, seed=0)",
        "tokenizers/extra_lines.tsv",
    ]
    stats.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    print(f"test vocabulary: {path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
