"""RetrievalEvaluation during fit: evaluates every N steps and logs TensorBoard scalars."""

import numpy as np
import pytest
import tensorflow as tf

import malign
from malign.evaluation import RetrievalEvaluation, evaluate_embeddings


@pytest.fixture(scope="module")
def records(tmp_path_factory, multi30k_mini):
    from malign.data.multi30k import multi30k_rows
    from malign.data.writer import write_rows

    rows = multi30k_rows(multi30k_mini, "val", ["en", "de"])[:60]     # 30 images, en + de
    prefix = tmp_path_factory.mktemp("cb") / "val"
    write_rows(rows, prefix, images_dir=multi30k_mini / "images", verbose=False)
    return prefix


def _scalars(log_dir):
    values = {}
    for path in tf.io.gfile.glob(str(log_dir / "retrieval" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                values[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    return values


def test_callback_evaluates_every_n_steps_and_logs(records, tmp_path):
    model = malign.AlignModel.from_preset("tiny")
    tok = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), model.sequence_length)
    train = malign.data.make_dataset(str(records), tok, model.image_size, 8, training=True, seed=0)
    model.compile(optimizer="sgd")
    cb = RetrievalEvaluation(str(records), tok, every_n_steps=2, log_dir=tmp_path, verbose=False)
    model.fit(train, steps_per_epoch=5, epochs=1, callbacks=[cb], verbose=0)

    # Steps 2 and 4, then the end of training (step 5).
    assert [step for step, _ in cb.history] == [2, 4, 5]
    scalars = _scalars(tmp_path)
    for step, report in cb.history:
        assert set(report["languages"]) == {"en", "de"}
        for group in ("en", "de", "all", "mean"):
            metrics = report[group] if group in ("all", "mean") else report["languages"][group]
            for key in report["metric_keys"]:
                assert scalars[(f"retrieval/{group}/{key}", step)] == pytest.approx(metrics[key])

    # The last report is what evaluate_embeddings gives on the trained model.
    split = malign.data.read_eval_split(str(records), model.image_size, 16, verbose=False)
    img = np.concatenate([model.embed_image(b).numpy() for b in split.images])
    txt = model.embed_text(tok(np.array(split.captions))).numpy()
    want = evaluate_embeddings(img, txt, split.text_to_image, split.caption_langs)
    assert cb.history[-1][1]["mean"]["mean_recall"] == pytest.approx(want["mean"]["mean_recall"], abs=1.0)


def test_bad_interval():
    with pytest.raises(ValueError, match="every_n_steps"):
        RetrievalEvaluation("x", None, every_n_steps=0)


def test_callback_crops_as_the_model_says(records):
    """The callback reads its record set with the model's eval_resize; a split read with
    another one is warned about."""
    model = malign.AlignModel.from_preset("tiny", eval_resize="square")
    tok = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), model.sequence_length)
    cb = RetrievalEvaluation(str(records), tok, every_n_steps=10, verbose=False)
    cb.set_model(model)
    report = cb.evaluate(step=0)
    assert cb._split.eval_resize == "square"
    split = malign.data.read_eval_split(str(records), model.image_size, 16, verbose=False,
                                        eval_resize="square")
    img = np.concatenate([model.embed_image(b).numpy() for b in split.images])
    txt = model.embed_text(tok(np.array(split.captions))).numpy()
    want = evaluate_embeddings(img, txt, split.text_to_image, split.caption_langs)
    assert report["mean"]["mean_recall"] == pytest.approx(want["mean"]["mean_recall"], abs=1e-6)

    shorter = malign.data.read_eval_split(str(records), model.image_size, 16, verbose=False)
    other = RetrievalEvaluation(shorter, tok, every_n_steps=10, verbose=False)
    other.set_model(model)
    with pytest.warns(UserWarning, match="eval_resize='shorter_side' but the model's config says 'square'"):
        other.evaluate(step=0)
