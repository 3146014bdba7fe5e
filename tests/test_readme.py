"""Every code block of README.md runs, in README order, as a user walks it.

The README's fenced ``bash`` and ``python`` blocks, its ``json`` request bodies, and the
full commands written inline (a ```malign ... --option``` or ```saved_model_cli ...```
code span) are read from README.md at collection time and become one test item each, in
README order. They run in one temporary working directory, so what one command writes is
what the next one reads: ``malign train`` writes ``runs/demo/teacher/model.keras``, ``malign eval``
and ``malign export`` read it, the Python serving snippet loads what ``malign export``
wrote, and so on.

- A command runs in its own process: ``malign`` is the console script next to this
  Python (``Path(sys.executable).parent / "malign"``), ``python`` is this Python,
  ``saved_model_cli`` the venv's. No shell: a README command that needs one (a pipe)
  must be in SKIPPED.
- A Python block runs in a fresh ``python -c`` process, with the files earlier blocks
  wrote.
- A ``json`` block (a TF Serving REST body) must be JSON, name a signature of the
  SavedModel that ``malign export`` wrote, give that signature's inputs (images wrapped as
  ``{"b64": ...}``), and be answered by the SavedModel as TF Serving would decode it.

How each block runs is looked up in the tables below, keyed by the README text: COMMANDS
(by the command, continuation lines joined and a trailing ``# comment`` dropped), PYTHON
(by one line the block contains) and SKIPPED. A README command or Python block in no table
fails the test with the key to add, so a new README command cannot go untested; a table
key the README no longer has fails ``test_tables_match_the_readme``.

Placeholders of the README (``multi30k``, ``dog.jpg``, ``rows.jsonl``...) are files this
test writes into the working directory first (FILES); the Multi30K subset is
../shared/data/multi30k-mini (the journey skips where it is absent). Long training runs
are shortened (each entry says how); commands that are already small run as written.
Blocks marked ``slow`` (further training runs) need ``--runslow``; no fast block depends
on a slow one.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from malign.tf_logging import VERBOSE_ENV

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
ALIGN_FIXTURE = REPO / "tests" / "fixtures" / "align_tiny"
# The README's align-base numbers (289 px crop, 64 tokens) are the tiny fixture's here.
_PROCESSOR = json.loads((ALIGN_FIXTURE / "processor_config.json").read_text())["image_processor"]
FIXTURE_CROP = _PROCESSOR["crop_size"]["height"]
FIXTURE_SEQUENCE_LENGTH = 16  # the fixture's max_position_embeddings is 40: 64 tokens do not fit
N_PHOTOS = 8  # images of rows.jsonl (plus one row whose image is missing)
TIMEOUT = 900


# --------------------------------------------------------------------------- tables


@dataclasses.dataclass(frozen=True)
class Run:
    """How a README command or Python block runs here.

    Args:
        why: what differs from the README text and why ("as written" when nothing does).
        replace: (README text, what runs here) pairs, applied to the block's text.
        add: arguments appended to a command (to shorten a long run).
        creates: paths (globs) the block must create: absent before it, present after.
        output: a regular expression the block's stdout + stderr must match.
        prelude: Python run before a Python block (names the README's fragment assumes).
        check: Python run after a Python block (asserts on what it computed).
        slow: needs --runslow (a further training run).
        xfail: the block is known to fail until a fix on another branch is merged;
            strict, so the entry must be removed once the block passes.
    """

    why: str = "as written"
    replace: tuple[tuple[str, str], ...] = ()
    add: str = ""
    creates: tuple[str, ...] = ()
    output: str = ""
    prelude: str = ""
    check: str = ""
    slow: bool = False
    xfail: str = ""


@dataclasses.dataclass(frozen=True)
class Skip:
    """A README block that cannot run here, and why."""

    reason: str


DEMO_SHORT = ("--smoke --set training.steps=4 --set training.steps_per_checkpoint=2 "
              "--set training.warmup_steps=1 --set training.global_batch_size=16")

COMMANDS: dict[str, Run | Skip] = {
    # Quick start
    "make demo": Skip("the full demo journey (about 10 min on 2 cores); tests/test_demo.py "
                      "runs the same journey with --smoke, and its teacher's command, "
                      "`malign train --recipe recipes/demo.py --workdir runs/demo/teacher`, runs "
                      "below, shortened"),
    "malign demo --recipe recipes/demo.py --workdir runs/demo": Skip(
        "= make demo; tests/test_demo.py runs it with --smoke"),
    "malign demo --smoke": Skip("tests/test_demo.py runs it (the journey test)"),
    "make test": Skip("the test suite itself, of which this test is part"),
    # Training
    "malign train --recipe recipes/demo.py --workdir runs/demo/teacher": Run(
        why="shortened: --smoke (200 scenes) and 4 steps of 16 instead of 1000 of 64",
        add=DEMO_SHORT,
        creates=("runs/demo/teacher/config.json", "runs/demo/teacher/model.keras",
                 "runs/demo/teacher/tokenizer.model", "runs/demo/teacher/checkpoints/step_*.keras",
                 "runs/demo/teacher/restore/step_*", "runs/demo/teacher/logs/train",
                 "runs/demo/teacher/eval/metrics.json", "runs/demo/teacher/eval/metrics.md",
                 "runs/demo/teacher/eval/recall.png"),
        output=r"held-out retrieval: en mR"),
    "malign train --recipe recipes/demo.py --smoke --set training.strategy=cpu:4 "
    "--workdir runs/x": Run(
        slow=True, creates=("runs/x/model.keras", "runs/x/eval/metrics.json")),
    "malign train --preset tiny --set training.steps=20 --workdir runs/smoke": Run(
        creates=("runs/smoke/model.keras",)),
    "malign train --recipe recipes/demo.py --print-config": Run(
        why="--workdir runs/print-config: --print-config checks the work directory as training "
            "does, and runs/demo holds the shortened demo run above (another config)",
        add="--workdir runs/print-config", output=r'"steps": 300\b'),
    # Distillation
    "malign distill --recipe recipes/demo.py --workdir runs/demo/student --set "
    "distillation.teacher=runs/demo/teacher/model.keras": Run(
        why="shortened as the demo teacher above: --smoke and 4 steps of 16",
        add=DEMO_SHORT,
        creates=("runs/demo/student/model.keras", "runs/demo/student/teacher_cache/manifest.json",
                 "runs/demo/student/checkpoints/step_*.keras", "runs/demo/student/eval/metrics.json"),
        output=r"malign distill: done"),
    # Data and tokenizer
    "malign tokenizer train --input train.en.gz train.de.gz zh=zh.txt --vocab-size 64000 "
    "--out vocab/m64k": Run(
        why="--vocab-size 600: the test corpus (600 Multi30K captions, 40 Chinese lines) is "
            "too small for 64000 pieces",
        replace=(("--vocab-size 64000", "--vocab-size 600"),),
        creates=("vocab/m64k.model", "vocab/m64k.vocab", "vocab/m64k.stats.json")),
    "malign data build --input rows.jsonl --images DIR --out records/mine --shards 16": Run(
        why="DIR is photos/, written by the test",
        replace=(("--images DIR", "--images photos"),),
        creates=("records/mine-00000-of-00016.tfrecord", "records/mine-00015-of-00016.tfrecord"),
        output=r"\b1 missing image"),
    "malign data multi30k --root multi30k --images flickr30k-images --split train "
    "--out records/m30k-train --shards 16": Run(
        creates=("records/m30k-train-00000-of-00016.tfrecord",
                 "records/m30k-train-00015-of-00016.tfrecord")),
    "malign data prepare-multi30k --root multi30k --images flickr30k-images "
    "--out records/multi30k --image-size 64 --vocab-size 4000": Run(
        creates=("records/multi30k/train-*.tfrecord", "records/multi30k/val-*.tfrecord",
                 "records/multi30k/train.done", "records/multi30k/tokenizer.model"),
        output=r"val: records/multi30k/val-\*-of-\*\.tfrecord"),
    "malign train --recipe recipes/multi30k_finetune.py --workdir runs/multi30k": Run(
        why="shortened: 4 steps of 16 instead of the recipe's full run",
        add="--set training.steps=4 --set training.steps_per_checkpoint=2 "
            "--set training.warmup_steps=1 --set training.global_batch_size=16",
        creates=("runs/multi30k/model.keras", "runs/multi30k/eval/metrics.json"),
        output=r"held-out retrieval: en mR [\d.]+, de mR [\d.]+, fr mR [\d.]+, cs mR"),
    "malign eval --model runs/multi30k/model.keras --data records/multi30k/val "
    "--languages en,de,fr,cs --out runs/multi30k/eval-val": Run(
        creates=("runs/multi30k/eval-val/metrics.json",)),
    "malign data synthetic --out records/demo --n 4000": Run(
        why="--n 100 instead of 4000 scenes", replace=(("--n 4000", "--n 100"),),
        creates=("records/demo-*.tfrecord",)),
    "malign data inspect records/mine": Run(
        output=rf"\b{N_PHOTOS} images, {2 * N_PHOTOS} captions"),
    "malign data inspect --strict": Run(
        why="the README names the option in prose; run on the records made above",
        replace=(("--strict", "records/mine --strict"),),
        output=rf"\b{N_PHOTOS} images, {2 * N_PHOTOS} captions"),
    # Evaluation
    "malign data multi30k --root multi30k --images flickr30k-images --split test_2016_flickr "
    "--out records/m30k-test": Run(
        why="--split val: the shared subset has the train and val splits only",
        replace=(("--split test_2016_flickr", "--split val"),),
        creates=("records/m30k-test-*.tfrecord",)),
    "malign data multi30k --captions task2 --root multi30k --images flickr30k-images "
    "--split test_2016 --out records/m30k-task2-test": Run(
        why="--split val: the shared subset has the train and val splits only",
        replace=(("--split test_2016 ", "--split val "),),
        creates=("records/m30k-task2-test-*.tfrecord",)),
    "malign eval --model runs/demo/teacher/model.keras --data records/m30k-test --languages "
    "en,de,fr,cs --out runs/demo/eval-m30k": Run(
        creates=("runs/demo/eval-m30k/metrics.json", "runs/demo/eval-m30k/metrics.md",
                 "runs/demo/eval-m30k/recall.png")),
    "malign eval zero-shot --model runs/demo/teacher/model.keras --data images-by-class/ --classes "
    "classes.json --templates templates.json --out runs/demo/zero-shot": Run(
        creates=("runs/demo/zero-shot/metrics.json", "runs/demo/zero-shot/accuracy.png")),
    # Serving
    "malign export --model runs/demo/teacher/model.keras --out export/malign": Run(
        creates=("export/malign/1/saved_model.pb", "export/malign/1/assets.extra/model.json")),
    "malign export --model runs/demo/student/model.keras --towers text --out export/student-text": Run(
        creates=("export/student-text/1/saved_model.pb",)),
    'docker run -t --rm -p 8501:8501 -p 8500:8500 --mount type=bind,source="$PWD/export/malign",'
    "target=/models/malign -e MODEL_NAME=malign tensorflow/serving": Skip(
        "needs Docker and the tensorflow/serving image; the REST bodies it would answer are "
        "checked against the export by the json blocks"),
    'echo "{\\"signature_name\\": \\"embed_image\\", \\"instances\\": [{\\"b64\\": '
    '\\"$(base64 -w0 dog.jpg)\\"}]}" | curl -s -d @- '
    "http://localhost:8501/v1/models/malign:predict": Skip(
        "needs a running TF Serving server; the same body is the second json block"),
    "saved_model_cli show --dir export/malign/1 --all": Run(
        output=r"signature_def\['embed_text'\]"),
    'python -c "import sys, tensorflow_text; from tensorflow.python.tools.saved_model_cli '
    'import main; sys.exit(main())" run --dir export/malign/1 --tag_set serve --signature_def '
    "embed_text --input_exprs 'text=[\"a dog\",\"ein Hund\"]'": Run(
        output=r"Result for output key embeddings"),
    # Embed and search
    "malign embed --model runs/demo/teacher/model.keras --images photos --out photos.npz": Run(
        creates=("photos.npz",), output=rf"embedded {N_PHOTOS} images \(64 dims\)"),
    "malign embed --model export/malign/1 --data records/m30k-test --out m30k-test.npz": Run(
        creates=("m30k-test.npz",), output=r"embedded \d+ images .*\(saved_model\)"),
    "malign embed --model export/malign/1 --captions captions.de.txt --lang de "
    "--out captions.de.npz": Run(
        creates=("captions.de.npz",), output=r"embedded 20 captions"),
    'malign search --embeddings photos.npz --text "ein Hund auf der Wiese" --image dog.jpg -k 5 '
    "--sheet hits.html --sheet hits.png": Run(
        creates=("hits.html", "hits.png"),
        output=r'query 1: text "ein Hund auf der Wiese"\n  rank   score  id\n     1  '),
    "malign search --embeddings m30k-test.npz --queries captions.de.npz -k 3 --json": Run(
        output=r'"value": "line 20"'),
    # Importing the released ALIGN checkpoint
    "huggingface-cli download kakaobrain/align-base --local-dir align-base": Skip(
        "downloads the 700 MB checkpoint from the Hugging Face Hub; align-base/ is the tiny "
        "checkpoint of tests/fixtures/align_tiny here"),
    "malign convert transformers-align --src align-base --out models/align-base/model.keras": Run(
        creates=("models/align-base/model.keras", "models/align-base/vocab.txt",
                 "models/align-base/model.conversion.json")),
    "malign eval --model models/align-base/model.keras --data records/m30k-test --languages en "
    "--out runs/align-base/eval-test": Run(
        creates=("runs/align-base/eval-test/metrics.json",)),
    "malign train --recipe recipes/<your-recipe>.py --set "
    "training.init_from=models/align-base/model.keras --set "
    "data.tokenizer=models/align-base/vocab.txt --workdir runs/align-base-ft": Run(
        why="recipes/align_base_ft.py (written by the test: the converted model's config from "
            "model.conversion.json, records/m30k-train, 2 steps of 4)",
        replace=(("recipes/<your-recipe>.py", "recipes/align_base_ft.py"),),
        creates=("runs/align-base-ft/model.keras",),
        output=r"initialised \d+ weights from models/align-base/model.keras", slow=True),
}

# Python blocks, keyed by one line the block contains (exactly one block may contain it).
PYTHON: dict[str, Run | Skip] = {
    "cb = malign.evaluation.RetrievalEvaluation(": Run(
        why="the README's fragment gets model, tokenizer and train_ds from runs/demo and "
            "records/m30k-train; 2 steps, evaluated at step 2, on records/m30k-test (the val "
            "split here) for records/m30k-val",
        prelude=(
            "import keras\n"
            "import malign\n"
            'model = keras.saving.load_model("runs/demo/teacher/model.keras")\n'
            'tokenizer = malign.text.tokenizer_from_file("runs/demo/teacher/tokenizer.model",\n'
            "                                            model.sequence_length)\n"
            'train_ds = malign.data.make_dataset("records/m30k-train", tokenizer,\n'
            "                                    model.image_size, 8, shuffle_buffer=64)\n"),
        replace=(('"records/m30k-val"', '"records/m30k-test"'),
                 ("every_n_steps=500", "every_n_steps=2"),
                 ("steps_per_epoch=1000, epochs=10", "steps_per_epoch=2, epochs=1")),
        check=(
            "steps = [step for step, _ in cb.history]  # the model's optimizer resumes at 4\n"
            "assert steps == [int(model.optimizer.iterations.numpy())], steps\n"
            "assert 0 <= cb.history[0][1]['mean']['mean_recall'] <= 100\n"),
        slow=True),
    'model = tf.saved_model.load("export/malign/1")': Run(
        check="assert tuple(scores.shape) == (1, 2), scores.shape\n"),
    'model = malign.convert.from_transformers_align("align-base")': Run(
        why=f"uint8_image and jpeg_bytes are dog.jpg; the tiny checkpoint's crop is "
            f"{FIXTURE_CROP} px, not 289",
        prelude=(
            "import numpy as np\n"
            "from PIL import Image\n"
            'uint8_image = np.asarray(Image.open("dog.jpg").convert("RGB"))\n'
            'jpeg_bytes = open("dog.jpg", "rb").read()\n'),
        replace=(("decode_and_crop(jpeg_bytes, 289,", f"decode_and_crop(jpeg_bytes, {FIXTURE_CROP},"),),
        check="assert tuple(logits.shape) == (1, 2), logits.shape\n"),
    'model = keras.saving.load_model("models/align-base/model.keras")': Run(
        why=f"2 steps of 4 at the tiny checkpoint's {FIXTURE_CROP} px and "
            f"{FIXTURE_SEQUENCE_LENGTH} tokens",
        replace=(("sequence_length=64", f"sequence_length={FIXTURE_SEQUENCE_LENGTH}"),
                 ("warmup_steps=100, steps=3000, global_batch_size=64",
                  "warmup_steps=1, steps=2, global_batch_size=4"),
                 ("image_size=289", f"image_size={FIXTURE_CROP}"),
                 ("global_batch_size=64, training=True", "global_batch_size=4, training=True")),
        check="assert int(model.optimizer.iterations.numpy()) == 2\n",
        slow=True),
    'model = malign.AlignModel.from_preset("tiny")': Run(
        check=(
            "assert strategy.num_replicas_in_sync == 4\n"
            "assert tuple(img.shape) == tuple(txt.shape) == (len(images), model.embedding_dim)\n"
            "assert float(loss) > 0\n")),
}

# Placeholders of the README that are files here, written by the journey fixture.
FILES = {
    "recipes/": "a copy of the repository's recipes/ (a user runs from the checkout), plus "
                "recipes/align_base_ft.py for `recipes/<your-recipe>.py`",
    "multi30k": "a symlink to ../shared/data/multi30k-mini (data/task1, data/task2)",
    "flickr30k-images": "a symlink to ../shared/data/multi30k-mini/images",
    "dog.jpg": "the first Multi30K val photo whose English caption has a dog",
    "rows.jsonl, DIR": f"{N_PHOTOS} val photos in photos/ with their en and de captions, and "
                       "one row whose image is missing",
    "images-by-class/, classes.json, templates.json": "3 val photos each of dogs and "
                       "bicycles (by their captions); class names and templates in en and de",
    "train.en.gz, train.de.gz, zh.txt": "300 Multi30K train captions each in English and "
                                        "German; 40 Chinese lines",
    "captions.de.txt": "the first 20 German Multi30K val captions, one per line",
    "align-base": "a copy of tests/fixtures/align_tiny (a random transformers ALIGN checkpoint)",
}

ALIGN_BASE_FT_RECIPE = '''\
"""Fine-tune the converted checkpoint (the README's `recipes/<your-recipe>.py`)."""

import json
from pathlib import Path

from malign.config import DataConfig, ExperimentConfig, ModelConfig, TrainingConfig


def get_config(smoke: bool = False) -> ExperimentConfig:
    conversion = json.loads(Path("models/align-base/model.conversion.json").read_text())
    return ExperimentConfig(
        name="align-base-ft",
        preset="align-base",
        model=ModelConfig.from_dict(conversion["model_config"]),
        data=DataConfig(train_pattern="records/m30k-train", shuffle_buffer=64),
        training=TrainingConfig(global_batch_size=4, steps=2, steps_per_checkpoint=2,
                                warmup_steps=1, learning_rate=1e-5),
    )
'''

CHINESE = [
    "一只狗在草地上奔跑。", "两个孩子在公园里玩耍。", "一个男人骑着自行车穿过街道。",
    "一位女士坐在长椅上看书。", "一群人在海滩上打排球。", "一只黑色的猫躺在窗台上。",
    "一个穿红衣服的女孩在跳舞。", "一辆公共汽车停在路边。", "两只狗在雪地里追逐。",
    "一个男孩在湖里游泳。",
]


# --------------------------------------------------------------------------- README parsing


@dataclasses.dataclass(frozen=True)
class Block:
    """One runnable README block: a command, a Python block or a JSON request body."""

    kind: str  # "command", "python" or "json"
    text: str
    line: int  # 1-based README line where it starts

    @property
    def id(self) -> str:
        """``L<line>-<kind>-<slug>``: a Python block's slug is its PYTHON key, if it has one."""
        lines = [line for line in self.text.strip().splitlines() if line.strip()] or [""]
        first = next((key for key in PYTHON if key in self.text), lines[0]) \
            if self.kind == "python" else lines[0]
        slug = re.sub(r"[^A-Za-z0-9]+", "-", first).strip("-")[:48].strip("-")
        return f"L{self.line}-{self.kind}-{slug}"


SHELL_KINDS = {"bash", "sh", "shell", "console"}
PROSE_KINDS = {"", "text"}  # unlabelled fences hold prose (the architecture tree)
INLINE_PROGRAMS = ("malign ", "saved_model_cli ")


def strip_comment(line: str) -> str:
    """A shell line without its trailing ``# comment`` (a ``#`` outside quotes after a blank)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
            elif char == "\\" and quote == '"':
                continue
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_commands(source: str) -> list[tuple[int, str]]:
    """(line offset, command) per logical command of a shell block.

    Continuation lines (after a trailing backslash, pipe or ``&&``) are joined, comments
    and blank lines dropped, runs of blanks outside quotes collapsed to one.
    """
    commands: list[tuple[int, str]] = []
    pending, start = "", 0
    for offset, raw in enumerate(source.splitlines()):
        line = strip_comment(raw).strip()
        if not pending:
            start = offset
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        if line.endswith(("|", "&&")):
            pending += line + " "
            continue
        command = (pending + line).strip()
        pending = ""
        if command:
            commands.append((start, collapse_blanks(command)))
    if pending.strip():
        commands.append((start, collapse_blanks(pending.strip())))
    return commands


def collapse_blanks(command: str) -> str:
    out, quote = [], ""
    for char in command:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char.isspace():
            if out and out[-1] == " ":
                continue
            char = " "
        out.append(char)
    return "".join(out)


def readme_blocks(text: str) -> list[Block]:
    """The runnable blocks of a README, in order.

    Raises:
        ValueError: an unclosed fence, or a fence of a language this test cannot run.
    """
    blocks: list[Block] = []
    lines = text.splitlines()
    prose: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        match = re.match(r"^```\s*([\w+-]*)\s*$", lines[i])
        if not match:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        kind, start = match.group(1).lower(), i + 1
        end = next((j for j in range(start, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"README.md line {i + 1}: unclosed ``` fence")
        body = "\n".join(lines[start:end])
        if kind in SHELL_KINDS:
            blocks += [Block("command", cmd, start + 1 + off) for off, cmd in shell_commands(body)]
        elif kind == "python":
            blocks.append(Block("python", body, start + 1))
        elif kind == "json":
            blocks.append(Block("json", body, start + 1))
        elif kind not in PROSE_KINDS:
            raise ValueError(f"README.md line {i + 1}: a ```{kind} block: this test runs bash, "
                             "python and json blocks; teach it the new kind")
        i = end + 1
    # Inline code spans (they may wrap across lines within a paragraph).
    joined = "\n".join(line for _, line in prose)
    line_of = []
    for number, line in prose:
        line_of += [number] * (len(line) + 1)
    for match in re.finditer(r"`([^`]+)`", joined):
        span = " ".join(match.group(1).split())
        number = line_of[match.start()]
        if span.startswith(INLINE_PROGRAMS) and " --" in span:
            blocks.append(Block("command", span, number))
        elif span.startswith('{"'):
            try:
                body = json.loads(span)
            except json.JSONDecodeError:
                continue  # a response shape such as {"predictions": [[...D floats...], ...]}
            if isinstance(body, dict) and ({"instances", "inputs"} & set(body)):
                blocks.append(Block("json", span, number))
    return sorted(blocks, key=lambda b: b.line)


def table_entry(block: Block) -> Run | Skip | None:
    """The COMMANDS / PYTHON entry of a block; None for JSON (checked generically).

    Raises:
        LookupError: a command or Python block in no table, or a Python block matched by
            more than one key, with what to add to this file.
    """
    if block.kind == "json":
        return None
    if block.kind == "command":
        if block.text not in COMMANDS:
            raise LookupError(
                f"README.md line {block.line}: the command\n    {block.text}\nis in no table of "
                "tests/test_readme.py: add it to COMMANDS (how it runs here) or, if it "
                "cannot run here, as a Skip with the reason. The key is the command above.")
        return COMMANDS[block.text]
    keys = [key for key in PYTHON if key in block.text]
    if len(keys) != 1:
        first = block.text.strip().splitlines()[0]
        raise LookupError(
            f"README.md line {block.line}: the Python block starting {first!r} matches "
            f"{len(keys)} PYTHON keys of tests/test_readme.py ({keys}): add (or make unique) "
            "a key, one line that only this block contains, saying how it runs here")
    return PYTHON[keys[0]]


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def _params() -> list:
    params = []
    for block in BLOCKS:
        marks = []
        try:
            entry = table_entry(block)
        except LookupError:
            entry = None  # the item fails with the message
        if isinstance(entry, Run):
            if entry.slow:
                marks.append(pytest.mark.slow)
            if entry.xfail:
                marks.append(pytest.mark.xfail(strict=True, reason=entry.xfail))
        params.append(pytest.param(block, id=block.id, marks=marks))
    return params


# --------------------------------------------------------------------------- the journey


@dataclasses.dataclass
class Journey:
    """The working directory shared by all blocks, and the first unexpected failure."""

    root: Path
    env: dict[str, str]
    failed: str = ""
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


def _captions(multi30k: Path, split: str, lang: str) -> list[str]:
    with gzip.open(multi30k / "data" / "task1" / "raw" / f"{split}.{lang}.gz", "rt",
                   encoding="utf-8") as handle:
        return handle.read().splitlines()


def _write_files(root: Path, multi30k: Path) -> None:
    """The README's placeholder files (see FILES)."""
    shutil.copytree(REPO / "recipes", root / "recipes",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "recipes" / "align_base_ft.py").write_text(ALIGN_BASE_FT_RECIPE)
    (root / "multi30k").symlink_to(multi30k, target_is_directory=True)
    (root / "flickr30k-images").symlink_to(multi30k / "images", target_is_directory=True)
    shutil.copytree(ALIGN_FIXTURE, root / "align-base")

    images = (multi30k / "data" / "task1" / "image_splits" / "val.txt").read_text().split()
    en, de = _captions(multi30k, "val", "en"), _captions(multi30k, "val", "de")

    def photos_with(word: str, n: int) -> list[int]:
        found = [i for i, text in enumerate(en) if re.search(rf"\b{word}\b", text.lower())]
        assert len(found) >= n, f"fewer than {n} val captions with {word!r} in {multi30k}"
        return found[:n]

    dog = photos_with("dog", 1)[0]
    shutil.copy(multi30k / "images" / images[dog], root / "dog.jpg")

    (root / "photos").mkdir()
    rows = []
    for i in range(N_PHOTOS):
        shutil.copy(multi30k / "images" / images[i], root / "photos" / images[i])
        rows += [{"image": images[i], "caption": en[i], "lang": "en"},
                 {"image": images[i], "caption": de[i], "lang": "de"}]
    rows.append({"image": "not-there.jpg", "caption": "a missing photo", "lang": "en"})
    (root / "rows.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    for name in ("dog", "bicycle"):
        folder = root / "images-by-class" / name
        folder.mkdir(parents=True)
        for i in photos_with(name, 3):
            shutil.copy(multi30k / "images" / images[i], folder / images[i])
    (root / "classes.json").write_text(json.dumps({"en": ["dog", "bicycle"],
                                                   "de": ["Hund", "Fahrrad"]}))
    (root / "templates.json").write_text(json.dumps(
        {"en": ["a photo of a {}.", "a {} outdoors."],
         "de": ["ein Foto von einem {}.", "ein {} im Freien."]}, ensure_ascii=False))

    for lang in ("en", "de"):
        text = "\n".join(_captions(multi30k, "train", lang)[:300]) + "\n"
        with gzip.open(root / f"train.{lang}.gz", "wt", encoding="utf-8") as handle:
            handle.write(text)
    (root / "zh.txt").write_text("\n".join(CHINESE * 4) + "\n", encoding="utf-8")
    (root / "captions.de.txt").write_text("\n".join(de[:20]) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def journey(tmp_path_factory, multi30k_mini) -> Journey:
    root = tmp_path_factory.mktemp("readme")
    _write_files(root, multi30k_mini)
    # The environment a user has: malign importable (this checkout first), the venv's
    # programs on PATH, no TF_CPP_MIN_LOG_LEVEL or MALIGN_VERBOSE of the test suite's.
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", VERBOSE_ENV)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(BIN), env.get("PATH", "")))
    return Journey(root, env)


PROGRAMS = {"malign": BIN / "malign", "python": Path(sys.executable),
            "saved_model_cli": BIN / "saved_model_cli"}


def _replaced(text: str, entry: Run) -> str:
    for old, new in entry.replace:
        assert old in text, f"table replacement {old!r} is not in the README text {text!r}"
        text = text.replace(old, new)
    return text


def _found(root: Path, pattern: str) -> list[Path]:
    return sorted(root.glob(pattern))


def _run(argv: list[str], journey: Journey, what: str) -> str:
    result = subprocess.run(argv, cwd=journey.root, env=journey.env, capture_output=True,
                            text=True, timeout=TIMEOUT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"{what} exited with {result.returncode} in {journey.root}:\n{output[-4000:]}")
    return output


def _run_command(block: Block, entry: Run, journey: Journey) -> str:
    command = _replaced(block.text, entry)
    if entry.add:
        command += " " + entry.add
    argv = shlex.split(command)
    assert not {"|", "&&", "||", ";", ">", "<"} & set(argv), (
        f"{command!r} needs a shell: run its parts as separate README commands, or Skip it")
    assert argv[0] in PROGRAMS, (
        f"README.md line {block.line}: no program {argv[0]!r} here ({sorted(PROGRAMS)}); "
        "Skip the command with the reason")
    return _run([str(PROGRAMS[argv[0]]), *argv[1:]], journey, command)


def _run_python(block: Block, entry: Run, journey: Journey) -> str:
    code = entry.prelude + _replaced(block.text, entry) + "\n" + entry.check
    return _run([sys.executable, "-c", code], journey,
                f"the Python block at README.md line {block.line}")


def _tf_serving_values(values: list, name: str, dog_b64: str) -> list:
    """One input's instances as TF Serving's REST API decodes them ({"b64": ...} -> bytes)."""
    decoded = []
    for value in values:
        if name.endswith("_bytes"):
            assert isinstance(value, dict) and set(value) == {"b64"}, (
                f"input {name!r}: binary values must be wrapped as {{\"b64\": ...}}, got {value!r}")
            data = value["b64"]
            if data in ("<base64 of the JPEG file>", "..."):  # the README's placeholders
                data = dog_b64
            decoded.append(base64.b64decode(data, validate=True))
        else:
            assert isinstance(value, str), f"input {name!r}: expected a string, got {value!r}"
            decoded.append(value.encode("utf-8"))
    return decoded


def _check_json(block: Block, journey: Journey) -> str:
    """Parses a REST body and answers it with the export, as TF Serving would."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the tokenizer ops

    body = json.loads(block.text)
    versions = sorted((journey.root / "export" / "malign").glob("[0-9]*"))
    assert versions, "no export/malign/<version>: the `malign export` block must run first"
    model = tf.saved_model.load(str(versions[-1]))
    name = body.get("signature_name", "serving_default")
    assert name in model.signatures, (
        f"README.md line {block.line}: signature {name!r} is not in the export "
        f"({sorted(model.signatures)})")
    signature = model.signatures[name]
    inputs = signature.structured_input_signature[1]
    dog_b64 = base64.b64encode((journey.root / "dog.jpg").read_bytes()).decode()
    if "instances" in body:  # row format: one value per row, or {input: value} rows
        rows = body["instances"]
        if len(inputs) == 1:
            (input_name,) = inputs
            rows = [row[input_name] if isinstance(row, dict) and "b64" not in row else row
                    for row in rows]
            columns = {input_name: rows}
        else:
            columns = {key: [row[key] for row in rows] for key in inputs}
    else:  # columnar format
        columns = body["inputs"]
    assert set(columns) == set(inputs), (
        f"README.md line {block.line}: {name} takes {sorted(inputs)}, the body gives "
        f"{sorted(columns)}")
    feed = {key: tf.constant(_tf_serving_values(values, key, dog_b64), tf.string)
            for key, values in columns.items()}
    outputs = signature(**feed)
    for key, value in outputs.items():
        assert value.shape.rank >= 1 and all(d > 0 for d in value.shape), (key, value.shape)
    return json.dumps({key: list(value.shape) for key, value in outputs.items()})


@pytest.mark.parametrize("block", _params())
def test_readme_block(block: Block, journey: Journey):
    entry = table_entry(block)  # raises for a block in no table
    if isinstance(entry, Skip):
        pytest.skip(f"README.md line {block.line}: {entry.reason}")
    if journey.failed:
        pytest.skip(f"an earlier README block failed ({journey.failed}); this one needs its output")
    created = entry.creates if entry else ()
    already = [p for p in created if _found(journey.root, p)]
    assert not already, f"{already} exist before the block that should create them"
    started = time.monotonic()
    try:
        if block.kind == "command":
            output = _run_command(block, entry, journey)
        elif block.kind == "python":
            output = _run_python(block, entry, journey)
        else:
            output = _check_json(block, journey)
        missing = [p for p in created if not _found(journey.root, p)]
        assert not missing, f"README.md line {block.line} did not create {missing}"
        if entry and entry.output:
            assert re.search(entry.output, output), (
                f"README.md line {block.line}: output does not match {entry.output!r}:\n"
                f"{output[-3000:]}")
    except BaseException:
        if not (entry and entry.xfail):
            journey.failed = block.id
        raise
    finally:
        journey.timings[block.id] = time.monotonic() - started


def test_tables_match_the_readme():
    """Every README block is in a table, and every table key is still in the README."""
    problems = []
    for block in BLOCKS:
        try:
            table_entry(block)
        except LookupError as error:
            problems.append(str(error))
    commands = {b.text for b in BLOCKS if b.kind == "command"}
    problems += [f"COMMANDS key not in README.md (update or remove it): {key}"
                 for key in COMMANDS if key not in commands]
    python = [b.text for b in BLOCKS if b.kind == "python"]
    problems += [f"PYTHON key in no README Python block (update or remove it): {key}"
                 for key in PYTHON if not any(key in text for text in python)]
    assert not problems, "\n\n".join(problems)
    # The parser found the kinds of block the README has (a broken parser finds nothing).
    kinds = {b.kind for b in BLOCKS}
    assert kinds == {"command", "python", "json"}, kinds


def test_parser_joins_continuations_and_drops_comments():
    source = ("malign data multi30k --root m \\\n    --out r   # task1\n"
              "# or: git lfs install\n"
              "echo '{\"a\": \"# not a comment\"}' |\n  curl -d @- x\n")
    assert shell_commands(source) == [
        (0, "malign data multi30k --root m --out r"),
        (3, "echo '{\"a\": \"# not a comment\"}' | curl -d @- x"),
    ]
    text = ("intro `malign eval --model m` and `malign eval`\n"
            "```bash\nmake demo    # demo\n```\n"
            '`{"inputs": {"text": ["a"]}}` `{"predictions": [[...]]}`\n'
            "```python\nimport malign\n```\n")
    blocks = readme_blocks(text)
    assert [(b.kind, b.text, b.line) for b in blocks] == [
        ("command", "malign eval --model m", 1), ("command", "make demo", 3),
        ("json", '{"inputs": {"text": ["a"]}}', 5), ("python", "import malign", 7)]
    with pytest.raises(LookupError, match="add it to COMMANDS"):
        table_entry(Block("command", "malign new-command --flag", 1))
    with pytest.raises(LookupError, match="matches 0 PYTHON keys"):
        table_entry(Block("python", "print('a new block')", 1))
