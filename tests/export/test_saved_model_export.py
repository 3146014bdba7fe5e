"""SavedModel export: parity in a process without malign, saved_model_cli, errors, card, CLI.

Three exports are made once per module (tiny sizes): both towers of a tiny model, the text
tower of a smaller "student" alone, and its image tower alone. The student evaluates with
``eval_resize="square"`` (the kakaobrain/align-base processor's resize), the tiny model with
the default shorter-side resize, so both in-graph crops are checked. One fresh Python process
that imports only tensorflow and tensorflow_text loads all three and runs every signature; the
tests compare what it wrote with the Keras models here.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import malign
from malign import export
from malign.data.preprocess import decode_and_crop, eval_crop, model_eval_resize

CAPTIONS = [
    "A black dog runs across the grass.",
    "Ein schwarzer Hund läuft über die Wiese.",
    "Un chien noir court sur l'herbe.",
    "Černý pes běží po trávě.",
    "一只黑狗在草地上奔跑",
    "",
    "Зимний пейзаж: красные дома у реки, снег, дети катаются на санках и смеются",
]
# Keras' own .keras saving (the CLI test) trips numpy 2's copy-keyword warning; not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
PYTHON = sys.executable
BIN = Path(sys.executable).parent
ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}


def _jpegs() -> list[bytes]:
    rng = np.random.default_rng(1)
    out = []
    for height, width in ((48, 80), (90, 40), (20, 24), (64, 64)):
        ramp = np.linspace(0, 255, height * width * 3).reshape(height, width, 3)
        image = np.clip(ramp + rng.normal(0, 40, ramp.shape), 0, 255).astype(np.uint8)
        out.append(tf.io.encode_jpeg(image, quality=85).numpy())
    gray = rng.integers(0, 256, (50, 70, 1), dtype=np.uint8)
    out.append(tf.io.encode_jpeg(gray).numpy())  # grayscale: decoded to RGB
    return out


def _png() -> bytes:
    return tf.io.encode_png(np.random.default_rng(2).integers(0, 256, (30, 45, 3), np.uint8)).numpy()


def _numpy(x) -> np.ndarray:
    return np.array(tf.convert_to_tensor(x).numpy())


FRESH_PROCESS = r'''
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the SentencePiece ops)

full_dir, text_dir, image_dir, inputs_file, out_file = sys.argv[1:]
inputs = np.load(inputs_file, allow_pickle=True)
captions = tf.constant(list(inputs["captions"]), tf.string)
jpegs = tf.constant(list(inputs["jpegs"]), tf.string)
png = tf.constant(list(inputs["png"]), tf.string)
no_strings = tf.constant([], tf.string)
out, errors = {}, {}

full = tf.saved_model.load(full_dir)
out["signatures"] = np.array(sorted(full.signatures.keys()))
out["text"] = full.signatures["embed_text"](text=captions)["embeddings"].numpy()
out["image"] = full.signatures["embed_image"](image_bytes=jpegs)["embeddings"].numpy()
out["png"] = full.signatures["embed_image"](image_bytes=png)["embeddings"].numpy()
both = full.signatures["serving_default"](image_bytes=jpegs, text=captions)
for key, value in both.items():
    out["default_" + key] = value.numpy()
out["zero_text"] = full.signatures["embed_text"](text=no_strings)["embeddings"].numpy()
out["zero_image"] = full.signatures["embed_image"](image_bytes=no_strings)["embeddings"].numpy()
zero = full.signatures["serving_default"](image_bytes=no_strings, text=no_strings)
out["zero_logits"] = zero["logits"].numpy()
bad_inputs = {
    "not_an_image": [inputs["jpegs"][0], b"this is not an image"],
    "truncated_jpeg": [inputs["jpegs"][0][:200]],
    "base64": [__import__("base64").b64encode(inputs["jpegs"][0])],
    "corrupt_jpeg": [b"\xff\xd8\xff" + b"\x00" * 64 + b"\xff\xd9"],
}
for name, value in bad_inputs.items():
    try:
        full.signatures["embed_image"](image_bytes=tf.constant(value, tf.string))
        errors[name] = "no error"
    except tf.errors.InvalidArgumentError as error:
        errors[name] = "InvalidArgumentError: " + error.message
try:
    full.signatures["embed_text"](text=tf.constant([b"ok", b"\xff\xfe"]))
    errors["bad_utf8"] = "no error"
except tf.errors.InvalidArgumentError as error:
    errors["bad_utf8"] = "InvalidArgumentError: " + error.message

student = tf.saved_model.load(text_dir)
out["student_signatures"] = np.array(sorted(student.signatures.keys()))
out["student_text"] = student.signatures["embed_text"](text=captions)["embeddings"].numpy()
out["student_default"] = student.signatures["serving_default"](text=captions)["embeddings"].numpy()
image_only = tf.saved_model.load(image_dir)
out["image_only_signatures"] = np.array(sorted(image_only.signatures.keys()))
out["image_only"] = image_only.signatures["embed_image"](image_bytes=jpegs)["embeddings"].numpy()

modules = sorted({m.split(".")[0] for m in sys.modules})
assert "malign" not in modules and "keras_hub" not in modules, modules
np.savez(out_file, **out)
with open(out_file + ".json", "w") as f:
    json.dump({"errors": errors, "modules": modules}, f)
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    keras.utils.set_random_seed(3)
    root = tmp_path_factory.mktemp("export")
    model = malign.AlignModel.from_preset("tiny")
    model.temperature_variable.assign(0.07)  # logits must divide by it
    student = malign.AlignModel.from_preset("tiny", num_layers=1, intermediate_dim=32,
                                            eval_resize="square")
    tokenizer = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), 16)
    card = {"training": {"data": "multi30k train (en, de, fr, cs)"},
            "evaluation": {"multi30k-test": {"mean_recall": 12.5}}}
    full = export.export_saved_model(model, tokenizer, root / "full", model_card=card)
    text_only = export.export_saved_model(student, tokenizer, root / "student", version=4,
                                          towers=("text",), verify=False)
    image_only = export.export_saved_model(student, None, root / "student-image", towers="image",
                                           verify=False)
    return {"root": root, "model": model, "student": student, "tokenizer": tokenizer,
            "full": full, "text_only": text_only, "image_only": image_only}


@pytest.fixture(scope="module")
def served(setup):
    """Runs every signature in a fresh process that imports only tensorflow(-text)."""
    root = setup["root"]
    inputs = root / "inputs.npz"
    np.savez(inputs, captions=np.array(CAPTIONS, dtype=object),
             jpegs=np.array(_jpegs(), dtype=object), png=np.array([_png()], dtype=object))
    script = root / "serve_check.py"
    script.write_text(FRESH_PROCESS)
    out = root / "served.npz"
    result = subprocess.run(
        [PYTHON, str(script), str(setup["full"]), str(setup["text_only"]),
         str(setup["image_only"]), str(inputs), str(out)],
        capture_output=True, text=True, env=ENV, cwd=root, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(Path(str(out) + ".json").read_text())
    return dict(np.load(out, allow_pickle=False)), info


def _reference_images(model, encoded: list[bytes], eval_resize: str | None = None) -> np.ndarray:
    """The Keras model's embeddings of images cropped as ``malign eval`` crops them."""
    mode = eval_resize or model_eval_resize(model)
    images = tf.stack([decode_and_crop(b, model.image_size, training=False, eval_resize=mode)
                       for b in encoded])
    return _numpy(model.embed_image(images, training=False))


def test_fresh_process_embeddings_equal_keras(setup, served):
    out, info = served
    model, tokenizer = setup["model"], setup["tokenizer"]
    assert "malign" not in info["modules"] and "keras_hub" not in info["modules"]
    assert list(out["signatures"]) == ["embed_image", "embed_text", "serving_default"]

    text = _numpy(model.embed_text(tokenizer(CAPTIONS), training=False))
    image = _reference_images(model, _jpegs())
    png = _reference_images(model, [_png()])
    assert out["text"].shape == (len(CAPTIONS), 32) and out["text"].dtype == np.float32
    assert out["image"].shape == (5, 32) and out["image"].dtype == np.float32
    np.testing.assert_allclose(out["text"], text, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["image"], image, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["png"], png, rtol=0, atol=1e-5)

    # serving_default: the same embeddings and the model's logits
    np.testing.assert_allclose(out["default_text_embeddings"], text, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["default_image_embeddings"], image, rtol=0, atol=1e-5)
    logits = _numpy(model.similarity_logits(image, text))
    assert out["default_logits"].shape == (5, len(CAPTIONS))
    np.testing.assert_allclose(out["default_logits"], logits, rtol=0, atol=1e-4)


def test_empty_caption_and_zero_rows(setup, served):
    out, _ = served
    model, tokenizer = setup["model"], setup["tokenizer"]
    ids = tokenizer([""])["token_ids"].numpy()[0]
    assert ids[:3].tolist() == [tokenizer.cls_token_id, tokenizer.sep_token_id, 0]
    empty = CAPTIONS.index("")
    np.testing.assert_allclose(np.linalg.norm(out["text"][empty]), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        out["text"][empty], _numpy(model.embed_text(tokenizer([""])))[0], atol=1e-5)
    assert out["zero_text"].shape == (0, 32) and out["zero_image"].shape == (0, 32)
    assert out["zero_logits"].shape == (0, 0)


def test_one_tower_exports(setup, served):
    out, _ = served
    student, tokenizer = setup["student"], setup["tokenizer"]
    assert list(out["student_signatures"]) == ["embed_text", "serving_default"]
    text = _numpy(student.embed_text(tokenizer(CAPTIONS), training=False))
    np.testing.assert_allclose(out["student_text"], text, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out["student_default"], out["student_text"])
    assert list(out["image_only_signatures"]) == ["embed_image", "serving_default"]
    # The student's eval_resize is "square": the SavedModel squeezes as malign eval does.
    np.testing.assert_allclose(out["image_only"], _reference_images(student, _jpegs()),
                               rtol=0, atol=1e-5)
    shorter = _reference_images(student, _jpegs(), eval_resize="shorter_side")
    non_square = [0, 1, 2, 4]  # 48x80, 90x40, 20x24 and the 50x70 grayscale JPEG
    assert np.abs(out["image_only"] - shorter)[non_square].max(axis=1).min() > 1e-3
    card = export.read_model_card(setup["image_only"])
    assert card["image"]["eval_resize"] == "square"
    assert "resize the whole image to 38x38" in card["image"]["preprocessing"]
    assert card["model_config"]["image"]["eval_resize"] == "square"
    # A one-tower export stores only that tower's weights.
    names = [name for name, _ in tf.train.list_variables(
        str(setup["text_only"] / "variables" / "variables"))]
    assert any("text_weights" in n for n in names)
    assert not any("image" in n for n in names)
    assert not (setup["image_only"] / "assets" / "tokenizer.model").exists()


def test_bad_input_errors_name_the_element(served):
    _, info = served
    errors = info["errors"]
    assert errors["not_an_image"].startswith("InvalidArgumentError")
    assert "image_bytes[1] (20 bytes) is not a JPEG, PNG, GIF, BMP or WebP file" \
        in errors["not_an_image"]
    assert "image_bytes[0]" not in errors["not_an_image"]
    assert "image_bytes[0] (200 bytes) is a truncated JPEG" in errors["truncated_jpeg"]
    assert "image_bytes[0]" in errors["base64"] and "looks base64-encoded" in errors["base64"]
    # Valid signature and end marker but garbage inside: TensorFlow's decoder error, raised
    # in the scope named after the input.
    assert errors["corrupt_jpeg"].startswith("InvalidArgumentError")
    assert "Invalid JPEG data" in errors["corrupt_jpeg"]
    assert "decode_image_bytes" in errors["corrupt_jpeg"]
    assert "text[1] is not valid UTF-8" in errors["bad_utf8"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300)


def test_saved_model_cli_show_lists_the_signatures(setup):
    result = _run([str(BIN / "saved_model_cli"), "show", "--dir", str(setup["full"]), "--all"])
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    blocks = {}
    for block in text.split("signature_def['")[1:]:
        name, body = block.split("']", 1)
        blocks[name] = body.split("Method name is")[0]
    assert {"embed_text", "embed_image", "serving_default"} <= set(blocks)

    def tensors(body: str, kind: str) -> dict[str, tuple[str, str]]:
        found = {}
        for part in body.split(f"{kind}['")[1:]:
            key = part.split("']")[0]
            dtype = part.split("dtype: ")[1].split()[0]
            shape = part.split("shape: ")[1].split("\n")[0].strip()
            found[key] = (dtype, shape)
        return found

    assert tensors(blocks["embed_text"], "inputs") == {"text": ("DT_STRING", "(-1)")}
    assert tensors(blocks["embed_text"], "outputs") == {"embeddings": ("DT_FLOAT", "(-1, 32)")}
    assert tensors(blocks["embed_image"], "inputs") == {"image_bytes": ("DT_STRING", "(-1)")}
    assert tensors(blocks["embed_image"], "outputs") == {"embeddings": ("DT_FLOAT", "(-1, 32)")}
    assert tensors(blocks["serving_default"], "inputs") == {
        "image_bytes": ("DT_STRING", "(-1)"), "text": ("DT_STRING", "(-1)")}
    assert tensors(blocks["serving_default"], "outputs") == {
        "image_embeddings": ("DT_FLOAT", "(-1, 32)"),
        "text_embeddings": ("DT_FLOAT", "(-1, 32)"),
        "logits": ("DT_FLOAT", "(-1, -1)"),
    }


def test_saved_model_cli_run_embed_text(setup, tmp_path):
    """``saved_model_cli run`` loads the model the TF1/TF Serving way (restore op, session).

    saved_model_cli has no option to load op libraries, so it runs with tensorflow_text
    imported first (TF Serving's own binaries link the tensorflow-text ops).
    """
    launcher = ("import sys, tensorflow_text; "
                "from tensorflow.python.tools.saved_model_cli import main; "
                "sys.argv[0] = 'saved_model_cli'; sys.exit(main())")
    captions = ["a dog", "ein Hund", ""]
    result = _run([PYTHON, "-c", launcher, "run", "--dir", str(setup["full"]),
                   "--tag_set", "serve", "--signature_def", "embed_text",
                   "--input_exprs", f"text={json.dumps(captions, ensure_ascii=False)}",
                   "--outdir", str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Result for output key embeddings" in result.stdout + result.stderr
    served = np.load(tmp_path / "embeddings.npy")
    model, tokenizer = setup["model"], setup["tokenizer"]
    expected = _numpy(model.embed_text(tokenizer(captions), training=False))
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)


def test_model_card_and_self_contained_assets(setup):
    full = setup["full"]
    card = export.read_model_card(full)
    assert card["preset"] == "tiny" and card["embedding_dim"] == 32
    assert card["image"]["image_size"] == 32 and card["text"]["sequence_length"] == 16
    assert card["image"]["eval_resize"] == "shorter_side"
    assert "resize the shorter side to 38" in card["image"]["preprocessing"]
    vocab = malign.text.test_vocab_path().read_bytes()
    tok = card["text"]["tokenizer"]
    assert tok["type"] == "sentencepiece" and tok["vocabulary_size"] == 1000
    assert (full / tok["file"]).read_bytes() == vocab
    assert (full / "assets.extra" / "tokenizer.model").read_bytes() == vocab
    assert card["training"] == {"data": "multi30k train (en, de, fr, cs)"}
    assert card["evaluation"] == {"multi30k-test": {"mean_recall": 12.5}}
    assert card["temperature"] == pytest.approx(0.07)
    assert set(card["signatures"]) == {"embed_text", "embed_image", "serving_default"}
    check = card["export_check"]
    assert check["text_max_abs_diff"] <= 1e-5 and check["image_max_abs_diff"] <= 1e-5
    # Nothing points outside the export: neither the vocabulary's path nor the staging dir.
    graph = (full / "saved_model.pb").read_bytes()
    assert str(malign.text.test_vocab_path()).encode() not in graph
    assert b".tmp-export" not in graph
    # Written atomically: only the version directory is left in the base directory.
    assert sorted(p.name for p in full.parent.iterdir()) == ["1"]


def test_versions_and_argument_checks(setup, tmp_path):
    model, tokenizer = setup["model"], setup["tokenizer"]
    with pytest.raises(FileExistsError, match="exists"):
        export.export_saved_model(model, tokenizer, setup["full"].parent, version=1)
    assert export.next_version(setup["full"].parent) == 2
    assert export.next_version(tmp_path / "new") == 1
    with pytest.raises(ValueError, match="towers"):
        export.export_saved_model(model, tokenizer, tmp_path, towers=("audio",))
    short = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), 8)
    with pytest.raises(ValueError, match="sequence_length"):
        export.export_saved_model(model, short, tmp_path)
    with pytest.raises(ValueError, match="tokenizer"):
        export.export_saved_model(model, None, tmp_path, towers="text")


def test_next_version_and_overwrite(setup, tmp_path):
    student, tokenizer = setup["student"], setup["tokenizer"]
    base = tmp_path / "serving"
    (base / "7").mkdir(parents=True)  # an older version TF Serving would be serving
    first = export.export_saved_model(student, tokenizer, base, version=None, towers="text",
                                      verify=False)
    assert first.name == "8"
    (first / "stale-file").write_text("from the replaced export")
    again = export.export_saved_model(student, tokenizer, base, version=8, towers="text",
                                      verify=False, overwrite=True)
    assert again == first and not (again / "stale-file").exists()
    assert export.read_model_card(again)["version"] == 8
    assert sorted(p.name for p in base.iterdir()) == ["7", "8"]  # no staging left behind


def test_cli_export_finds_tokenizer_training_and_evaluation(setup, tmp_path):
    from malign.cli import main

    workdir = tmp_path / "run"
    workdir.mkdir()
    model_path = workdir / "model.keras"
    setup["student"].save(model_path)
    (workdir / "tokenizer.model").write_bytes(malign.text.test_vocab_path().read_bytes())
    (workdir / "config.json").write_text(json.dumps({
        "name": "student", "preset": "tiny",
        "data": {"train_pattern": "records/m30k-train-*", "languages": ["en", "de"]},
        "training": {"steps": 100, "global_batch_size": 8},
    }))
    (workdir / "eval-test").mkdir()
    (workdir / "eval-test" / "metrics.json").write_text(json.dumps(
        {"mean": {"mean_recall": 3.5}, "meta": {"model": str(model_path)}}))
    (workdir / "eval-other").mkdir()
    (workdir / "eval-other" / "metrics.json").write_text(json.dumps(
        {"mean": {"mean_recall": 99.0}, "meta": {"model": "some/other/model.keras"}}))
    out = tmp_path / "serving"
    code = main(["export", "--model", str(model_path), "--out", str(out), "--towers", "text",
                 "--no-verify"])
    assert code == 0
    card = export.read_model_card(out / "1")
    assert card["towers"] == ["text"] and card["preset"] == "tiny"
    assert card["training"]["data"]["train_pattern"] == "records/m30k-train-*"
    assert card["training"]["steps"] == 100
    assert list(card["evaluation"]) == ["eval-test/metrics.json"]
    assert card["source"]["tokenizer"] == str((workdir / "tokenizer.model").resolve())
    loaded = tf.saved_model.load(str(out / "1"))
    served = loaded.signatures["embed_text"](text=tf.constant(CAPTIONS[:2]))["embeddings"]
    expected = setup["student"].embed_text(setup["tokenizer"](CAPTIONS[:2]))
    np.testing.assert_allclose(served.numpy(), _numpy(expected), rtol=0, atol=1e-5)


# -- images as people see them: EXIF orientation, 16-bit PNG, pixel limit -------------------
IMAGE_CHECK = r'''
import json, resource, sys, time
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401

model_dir, inputs_file, out_file = sys.argv[1:]
inputs = np.load(inputs_file, allow_pickle=True)
embed = tf.saved_model.load(model_dir).signatures["embed_image"]
out = {"images": embed(image_bytes=tf.constant(list(inputs["images"])))["embeddings"].numpy()}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    embed(image_bytes=tf.constant([inputs["images"][0], inputs["huge"][0]]))
    error = "no error"
except tf.errors.InvalidArgumentError as e:
    error = e.message
info = {"error": error, "seconds": time.perf_counter() - start,
        "rss_growth_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}
np.savez(out_file, **out)
with open(out_file + ".json", "w") as f:
    json.dump(info, f)
'''


def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _hand_png(samples: np.ndarray, bit_depth: int, color_type: int, exif: bytes = b"") -> bytes:
    """A PNG written by hand: PIL cannot write 16-bit grey with an eXIf chunk."""
    import struct
    import zlib

    height, width = samples.shape[:2]
    dtype = ">u2" if bit_depth == 16 else np.uint8
    rows = b"".join(b"\x00" + row.astype(dtype).tobytes() for row in samples)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    extra = _chunk(b"eXIf", exif) if exif else b""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra
            + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))


def _huge_png(side: int = 20000) -> bytes:
    """A valid side x side black PNG of a few hundred KB, built without its pixels."""
    import struct
    import zlib

    rows_per_block = 100
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(b"\x00" * (side + 1) * rows_per_block)
    block += compressor.flush(zlib.Z_FULL_FLUSH)
    total = (side + 1) * side
    stream = (b"\x78\xda" + block * (side // rows_per_block) + compressor.flush()
              + (((total % 65521) << 16) | 1).to_bytes(4, "big"))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", stream)
            + _chunk(b"IEND", b""))


def _tiff_orientation(orientation: int) -> bytes:
    import struct

    return (b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1,
                                                                 orientation, 0) + bytes(4))


def _stored_for(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The stored pixels that EXIF ``orientation`` shows as ``upright`` (the inverse of PIL's
    exif_transpose: 6 is shown rotated 90 degrees clockwise, so it is stored rotated back)."""
    t = lambda a: a.transpose(1, 0, 2)  # noqa: E731
    return {1: upright, 2: upright[:, ::-1], 3: upright[::-1, ::-1], 4: upright[::-1],
            5: t(upright), 6: np.rot90(upright, 1), 7: t(upright[::-1, ::-1]),
            8: np.rot90(upright, -1)}[orientation]


def test_served_images_are_upright_16bit_aware_and_size_limited(setup):
    from PIL import Image

    model = setup["model"]
    y, x = np.mgrid[0:40, 0:56]
    upright = np.stack([x * 4, y * 6, 255 - x * 2 - y * 3], -1).astype(np.uint8)
    pngs = [_hand_png(_stored_for(upright, o), 8, 2, exif=_tiff_orientation(o)) for o in range(1, 9)]
    out = io.BytesIO()
    Image.fromarray(_stored_for(upright, 6)).save(out, "JPEG", quality=95,
                                                  exif=b"Exif\x00\x00" + _tiff_orientation(6))
    jpeg6 = out.getvalue()
    stripes = np.where(np.indices((30, 44))[1] % 2 == 0, 30000, 10000)
    grey16 = _hand_png(stripes, 16, 0)
    grey16_turned = _hand_png(_stored_for(stripes[..., None], 8)[..., 0], 16, 0,
                         exif=_tiff_orientation(8))
    images = pngs + [jpeg6, grey16, grey16_turned]
    huge = _huge_png()
    assert len(huge) < 1_000_000

    root = setup["root"]
    inputs = root / "image_inputs.npz"
    np.savez(inputs, images=np.array(images, dtype=object), huge=np.array([huge], dtype=object))
    script = root / "image_check.py"
    script.write_text(IMAGE_CHECK)
    result_file = root / "image_check.npz"
    result = subprocess.run([PYTHON, str(script), str(setup["full"]), str(inputs),
                             str(result_file)], capture_output=True, text=True, env=ENV,
                            cwd=root, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    served = np.load(result_file)["images"]
    info = json.loads(Path(str(result_file) + ".json").read_text())

    # The served embeddings are the Keras model's on the pixels `malign eval` crops ...
    np.testing.assert_allclose(served, _reference_images(model, images), rtol=0, atol=1e-5)
    # ... which are the upright image for all eight orientations (PNG: exactly) ...
    size = model.image_size
    want = _numpy(model.embed_image(tf.stack([eval_crop(upright, size)]), training=False))
    np.testing.assert_allclose(served[:8], np.repeat(want, 8, axis=0), rtol=0, atol=1e-5)
    sideways = _numpy(model.embed_image(
        tf.stack([eval_crop(_stored_for(upright, 6), size)]), training=False))
    assert np.abs(served[5] - sideways).max() > 1e-3  # orientation 6 is not served sideways
    assert np.abs(served[8] - want[0]).max() < 0.05  # the JPEG: close (lossy, fast DCT)
    # ... and a 16-bit grey PNG is grey (30000 -> 117, 10000 -> 39), not white.
    grey = np.stack([np.where(np.indices((30, 44))[1] % 2 == 0, 117, 39)] * 3, -1)
    want_grey = _numpy(model.embed_image(tf.stack([eval_crop(grey.astype(np.uint8), size)]),
                                         training=False))
    np.testing.assert_allclose(served[9], want_grey[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(served[10], want_grey[0], rtol=0, atol=1e-5)
    white = _numpy(model.embed_image(tf.ones([1, size, size, 3]), training=False))
    assert np.abs(served[9] - white[0]).max() > 1e-3

    # 20000 x 20000: refused from its header, naming the element and the limit, without
    # decoding 400 million pixels.
    assert (f"image_bytes[1] ({len(huge)} bytes) is 20000x20000 = 400000000 pixels, over the "
            "limit of 67108864 pixels") in info["error"]
    assert "image_bytes[0]" not in info["error"]
    assert info["seconds"] < 10 and info["rss_growth_kb"] < 200_000
    card = export.read_model_card(setup["full"])
    assert card["image"]["max_image_pixels"] == 67108864
    assert "EXIF orientation" in card["image"]["preprocessing"]
