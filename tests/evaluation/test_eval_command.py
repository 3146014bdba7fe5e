"""End to end: ``malign eval`` and ``malign eval zero-shot`` on a tiny model and Multi30K-mini."""

import json
import shutil
from math import comb

import numpy as np
import pytest

import malign
from malign.cli import main
from malign.evaluation import metrics as M

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, multi30k_mini):
    """A saved tiny model with its tokenizer beside it, and task1/task2 val record sets."""
    root = tmp_path_factory.mktemp("eval")
    model = malign.AlignModel.from_preset("tiny")
    model.save(root / "model.keras")
    shutil.copy(malign.text.test_vocab_path(), root / "tokenizer.model")
    for task in ("task1", "task2"):
        malign.data.write_multi30k(
            multi30k_mini, multi30k_mini / "images", "val", root / f"m30k-val-{task}",
            captions=task, verbose=False,
        )
    return root


def _reference_metrics(workdir, prefix, lang):
    """The metrics recomputed independently: embed, full similarity matrix, counted ranks."""
    model = malign.AlignModel.from_preset("tiny")
    model.load_weights(workdir / "model.keras")
    split = malign.data.read_eval_split(str(workdir / prefix), model.image_size, 50, verbose=False)
    tok = malign.text.SentencePieceTokenizer(workdir / "tokenizer.model", model.sequence_length)
    images = np.concatenate([model.embed_image(b).numpy() for b in split.images])
    keep = [i for i, x in enumerate(split.caption_langs) if x == lang]
    ids = tok(np.array([split.captions[i] for i in keep]))
    texts = model.embed_text(ids).numpy()
    sim = images.astype(np.float64) @ texts.T.astype(np.float64)
    return M.retrieval_metrics_from_similarity(sim, split.text_to_image[keep])


def test_eval_task1_writes_all_outputs(workdir, capsys):
    out = workdir / "out-task1"
    rc = main([
        "eval", "--model", str(workdir / "model.keras"), "--data", str(workdir / "m30k-val-task1"),
        "--languages", "en,de,fr,cs", "--out", str(out), "--quiet",
    ])
    assert rc == 0
    report = json.loads((out / "metrics.json").read_text())
    assert list(report["languages"]) == ["en", "de", "fr", "cs"]
    for m in report["languages"].values():
        assert tuple(k for k in m if k in M.METRIC_KEYS) == M.METRIC_KEYS
        assert m["num_images"] == 242 and m["num_captions"] == 242
        assert m["captions_per_image"] == 1.0
        assert all(0.0 <= m[k] <= 100.0 for k in M.METRIC_KEYS)
    assert report["all"]["num_captions"] == 4 * 242
    for key in M.METRIC_KEYS:
        assert report["mean"][key] == pytest.approx(np.mean([m[key] for m in report["languages"].values()]))
    assert report["meta"]["tokenizer"].endswith("tokenizer.model")   # found beside the model
    # The numbers are the ones a full similarity matrix gives (float rounding aside).
    want = _reference_metrics(workdir, "m30k-val-task1", "de")
    for key in M.METRIC_KEYS:
        assert report["languages"]["de"][key] == pytest.approx(want[key], abs=0.5)
    table = (out / "metrics.md").read_text()
    assert "| de | 242 | 242 |" in table and "mean over languages" in table and "I→T R@1" in table
    # Chance: one caption per image per language, 242 images: R@K = K / 242 both ways.
    for m in list(report["languages"].values()) + [report["mean"]]:
        for k in (1, 5, 10):
            assert m["chance"][f"image_to_text_r{k}"] == pytest.approx(100 * k / 242)
            assert m["chance"][f"text_to_image_r{k}"] == pytest.approx(100 * k / 242)
    # Pooled: 4 of 968 captions per image; R@5 = 1 - C(964, 5) / C(968, 5).
    assert report["all"]["chance"]["image_to_text_r5"] == pytest.approx(100 * (1 - comb(964, 5) / comb(968, 5)))
    assert report["all"]["chance"]["text_to_image_r5"] == pytest.approx(100 * 5 / 242)
    assert ("| chance (en, de, fr, cs, all, mean over languages) |  |  | 0.41 | 2.1 | 4.1 | 0.41 | 2.1 | 4.1 | 2.2 |"
            in table)                          # all's values differ only past the printed digits
    assert (out / "recall.png").read_bytes()[:8] == PNG_MAGIC
    assert "| cs | 242 | 242 |" in capsys.readouterr().out


def test_eval_task2_five_captions_per_image(workdir):
    out = workdir / "out-task2"
    rc = main([
        "eval", "--model", str(workdir / "model.keras"), "--data", str(workdir / "m30k-val-task2"),
        "--out", str(out), "--quiet", "--backend", "tensorflow", "--memory-budget-mb", "1",
    ])
    assert rc == 0
    report = json.loads((out / "metrics.json").read_text())
    assert list(report["languages"]) == ["en", "de"]
    for m in report["languages"].values():
        assert m["num_captions"] == 5 * 242 and m["min_captions_per_image"] == 5
        # Chance of finding one of 5 captions among 1210 in the top 10.
        assert m["chance"]["image_to_text_r10"] == pytest.approx(100 * (1 - comb(1205, 10) / comb(1210, 10)))
    want = _reference_metrics(workdir, "m30k-val-task2", "en")
    for key in M.METRIC_KEYS:
        assert report["languages"]["en"][key] == pytest.approx(want[key], abs=0.5)
    assert (out / "recall.png").read_bytes()[:8] == PNG_MAGIC


def test_eval_errors_are_clear(workdir, tmp_path, capsys):
    data = str(workdir / "m30k-val-task2")
    rc = main(["eval", "--model", str(workdir / "model.keras"), "--data", data,
               "--languages", "en,fr", "--out", str(tmp_path), "--quiet"])
    assert rc == 2
    assert "no captions in language(s) fr" in capsys.readouterr().err
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(workdir / "model.keras", lonely / "model.keras")
    rc = main(["eval", "--model", str(lonely / "model.keras"), "--data", data, "--out", str(tmp_path)])
    assert rc == 2
    assert "pass --tokenizer" in capsys.readouterr().err
    rc = main(["eval", "--data", data])
    assert rc == 2
    assert "--model, --out required" in capsys.readouterr().err


def test_zero_shot_on_records_and_image_folder(workdir, multi30k_mini, tmp_path):
    from malign.data.writer import CaptionRow, write_rows

    names = sorted(p.name for p in (multi30k_mini / "images").glob("*.jpg"))[:12]
    classes = {"en": ["dog", "bicycle", "street"], "de": ["Hund", "Fahrrad", "Straße"]}
    rows = []
    folder = tmp_path / "folder"
    for i, name in enumerate(names):
        lang = "en" if i % 2 else "de"
        label = classes[lang][i % 3]
        rows.append(CaptionRow(name, label, lang))
        (folder / classes["en"][i % 3]).mkdir(parents=True, exist_ok=True)
        shutil.copy(multi30k_mini / "images" / name, folder / classes["en"][i % 3] / name)
    write_rows(rows, tmp_path / "labelled", images_dir=multi30k_mini / "images", verbose=False)
    (tmp_path / "classes.json").write_text(json.dumps(classes, ensure_ascii=False))
    (tmp_path / "templates.json").write_text(json.dumps({"de": ["ein Foto von {}.", "ein {}."]}))

    reports = []
    for data in (tmp_path / "labelled", folder):
        out = tmp_path / f"zs-{data.name}"
        rc = main([
            "eval", "zero-shot", "--model", str(workdir / "model.keras"), "--data", str(data),
            "--classes", str(tmp_path / "classes.json"), "--templates", str(tmp_path / "templates.json"),
            "--out", str(out), "--quiet",
        ])
        assert rc == 0
        report = json.loads((out / "metrics.json").read_text())
        assert (out / "metrics.md").is_file() and (out / "accuracy.png").read_bytes()[:8] == PNG_MAGIC
        assert report["languages"]["en"]["num_templates"] == 18     # built-in English set
        assert report["languages"]["de"]["num_templates"] == 2
        for lang, m in report["languages"].items():
            assert m["num_images"] == 12 and m["num_classes"] == 3
            assert m["top5"] == 100.0                                 # 3 classes
            assert 0.0 <= m["top1"] <= 100.0
            assert m["chance"] == {"top1": 100 / 3, "top5": 100.0, "mean_per_class_top1": 100 / 3}
            assert [c["images"] for c in m["per_class"].values()] == [4, 4, 4]
            assert list(m["per_class"]) == classes[lang]
            rows = (out / m["confusion_file"]).read_text(encoding="utf-8").splitlines()
            assert rows[0] == "true \\ predicted," + ",".join(classes[lang])
            counts = np.array([[int(v) for v in row.split(",")[1:]] for row in rows[1:]])
            assert counts.sum(axis=1).tolist() == [4, 4, 4]
            assert np.trace(counts) == round(m["top1"] * 12 / 100)
            assert (out / f"confusion-{lang}.png").read_bytes()[:8] == PNG_MAGIC
        assert "| chance (en, de, mean) |" in (out / "metrics.md").read_text()
        reports.append(report)
    # Same images, same labels (the folder lists them in another order): same accuracy.
    assert reports[0]["languages"]["en"]["top1"] == reports[1]["languages"]["en"]["top1"]


def test_zero_shot_needs_templates_for_other_languages(workdir, tmp_path, capsys):
    (tmp_path / "classes.json").write_text(json.dumps({"fr": ["chien", "chat"]}))
    rc = main(["eval", "zero-shot", "--model", str(workdir / "model.keras"), "--data", str(workdir / "x"),
               "--classes", str(tmp_path / "classes.json"), "--out", str(tmp_path)])
    assert rc == 2
    assert "no prompt templates for language 'fr'" in capsys.readouterr().err


def test_eval_and_zero_shot_crop_as_the_model_says(workdir, multi30k_mini, tmp_path):
    """A model whose config says eval_resize="square" (a converted align-base) is evaluated on
    the square resize's crops by `malign eval` and `malign eval zero-shot`."""
    from malign.data.preprocess import decode_image, eval_crop
    from malign.evaluation.zero_shot import read_image_folder

    model = malign.AlignModel.from_preset("tiny", eval_resize="square")
    model.save(tmp_path / "model.keras")
    shutil.copy(malign.text.test_vocab_path(), tmp_path / "tokenizer.model")
    rc = main(["eval", "--model", str(tmp_path / "model.keras"),
               "--data", str(workdir / "m30k-val-task1"), "--languages", "en",
               "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 0
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["meta"]["eval_resize"] == "square"
    split = malign.data.read_eval_split(str(workdir / "m30k-val-task1"), 32, 64, languages=["en"],
                                        verbose=False, eval_resize="square")
    tok = malign.text.SentencePieceTokenizer(tmp_path / "tokenizer.model", model.sequence_length)
    sim = np.concatenate([model.embed_image(b).numpy() for b in split.images]).astype(np.float64) \
        @ model.embed_text(tok(np.array(split.captions))).numpy().T.astype(np.float64)
    want = M.retrieval_metrics_from_similarity(sim, split.text_to_image)
    for key in M.METRIC_KEYS:
        assert report["languages"]["en"][key] == pytest.approx(want[key], abs=0.5)

    folder = tmp_path / "folder" / "dog"
    folder.mkdir(parents=True)
    names = sorted(p.name for p in (multi30k_mini / "images").glob("*.jpg"))[:2]
    for name in names:
        shutil.copy(multi30k_mini / "images" / name, folder / name)
    images, _, paths = read_image_folder(tmp_path / "folder", {"en": ["dog"]}, 32,
                                         eval_resize="square")
    expected = [eval_crop(decode_image(open(p, "rb").read(), accurate_jpeg=True), 32, eval_resize="square")
                for p in paths]
    np.testing.assert_allclose(next(iter(images)).numpy(), np.stack(expected), rtol=0, atol=1e-6)
    (tmp_path / "classes.json").write_text(json.dumps({"en": ["dog", "cat"]}))
    rc = main(["eval", "zero-shot", "--model", str(tmp_path / "model.keras"),
               "--data", str(tmp_path / "folder"), "--classes", str(tmp_path / "classes.json"),
               "--out", str(tmp_path / "zs"), "--quiet"])
    assert rc == 0
    assert json.loads((tmp_path / "zs" / "metrics.json").read_text())["meta"]["eval_resize"] == "square"
