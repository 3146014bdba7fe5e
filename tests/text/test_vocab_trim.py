"""Vocabulary trimming: same pieces on the trim corpus and on other text of its languages,
special ids unchanged, the trimmed tokenizer in the graph, and a trimmed model's embeddings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

LANGS = ("en", "de", "fr", "cs")


def _processor(path):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path))


def _byte_piece(piece: str) -> bool:
    return len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")


def _compare(full, small, old_ids, sentences):
    """Counts, over ``sentences``: identical segmentations (pieces as strings, and ids through the
    mapping), and differing ones; a difference is only allowed where the full segmentation used a
    piece that was trimmed away. Returns (identical, differing, unseen)."""
    kept = set(old_ids.tolist())
    full_ids = full.encode(sentences)
    small_ids = small.encode(sentences)
    identical = differing = unseen = 0
    for sentence, f, s in zip(sentences, full_ids, small_ids):
        needs_dropped = any(i not in kept for i in f)
        unseen += needs_dropped
        same_pieces = [full.id_to_piece(i) for i in f] == [small.id_to_piece(i) for i in s]
        same_ids = len(f) == len(s) and all(int(old_ids[n]) == o for o, n in zip(f, s))
        assert same_pieces == same_ids, sentence
        if same_pieces:
            identical += 1
        else:
            differing += 1
            assert needs_dropped, (
                f"{sentence!r}: segmentation changed although every piece is kept: "
                f"{[full.id_to_piece(i) for i in f]} vs {[small.id_to_piece(i) for i in s]}")
        # Byte fallback: the trimmed model still encodes the text losslessly.
        assert small.decode(s) == full.decode(f), sentence
    return identical, differing, unseen


@pytest.fixture(scope="module")
def synthetic_split():
    from malign.data.synthetic import synthetic_captions

    train = [text for _, text in synthetic_captions(300, seed=5)]
    held_out = [text for _, text in synthetic_captions(200, seed=6)]
    return train, held_out


@pytest.fixture(scope="module")
def synthetic_trim(vocab_path, synthetic_split, tmp_path_factory):
    from malign.text import trim_vocabulary

    train, _ = synthetic_split
    return trim_vocabulary(vocab_path, train, tmp_path_factory.mktemp("trim") / "synthetic")


def test_trim_keeps_reserved_ids_and_corpus_pieces(vocab_path, synthetic_split, synthetic_trim):
    full, small = _processor(vocab_path), _processor(synthetic_trim.model_path)
    result = synthetic_trim
    assert result.pieces_before == full.get_piece_size() == 1000
    assert result.pieces_after == small.get_piece_size() < 600
    # Specials and the 256 bytes keep their ids, and come first in the mapping.
    assert result.old_ids[:261].tolist() == list(range(261))
    for piece, i in {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4,
                     "<0x00>": 5, "<0xFF>": 260}.items():
        assert small.piece_to_id(piece) == i
    assert small.unk_id() == 1 and small.pad_id() == 0
    # Scores kept, pieces the same at old/new ids.
    for new, old in enumerate(result.old_ids):
        assert small.id_to_piece(new) == full.id_to_piece(int(old))
        assert small.get_score(new) == pytest.approx(full.get_score(int(old)))
    # Every piece the corpus used is kept (min_count=1).
    train, _ = synthetic_split
    used = {i for ids in full.encode(train) for i in ids}
    assert used <= set(result.old_ids.tolist())
    # Written files agree with the result.
    assert np.load(result.ids_path).tolist() == result.old_ids.tolist()
    stats = json.loads(result.stats_path.read_text())
    assert stats["pieces_after"] == result.pieces_after
    assert stats["corpus_sentences"] == len(train)
    assert stats["corpus_sentences_changed"] == 0 and stats["corpus_token_coverage"] == 1.0
    assert len(result.vocab_path.read_text(encoding="utf-8").splitlines()) == result.pieces_after
    assert result.old_to_new()[int(result.old_ids[-1])] == result.pieces_after - 1


def test_same_pieces_on_corpus_and_held_out_text(vocab_path, synthetic_split, synthetic_trim,
                                                  multiscript_sentences):
    full, small = _processor(vocab_path), _processor(synthetic_trim.model_path)
    train, held_out = synthetic_split
    assert _compare(full, small, synthetic_trim.old_ids, train)[1] == 0
    identical, differing, unseen = _compare(full, small, synthetic_trim.old_ids, held_out)
    assert identical >= 0.95 * len(held_out)
    # Other scripts: differences only where a trimmed piece was needed (checked inside), and
    # the text still round-trips through byte fallback.
    other = [s for script in ("cyrillic", "cjk", "arabic", "mixed")
             for s in multiscript_sentences[script]]
    identical, differing, unseen = _compare(full, small, synthetic_trim.old_ids, other)
    assert differing > 0 and differing <= unseen


def test_in_graph_tokenizer_loads_trimmed_model(vocab_path, synthetic_split, synthetic_trim):
    import malign.text

    tok = malign.text.SentencePieceTokenizer(synthetic_trim.model_path, sequence_length=48)
    assert tok.vocabulary_size == synthetic_trim.pieces_after
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 2, 3, 4)
    small = _processor(synthetic_trim.model_path)
    _, held_out = synthetic_split
    texts = held_out[:20] + ["Приве́т, 世界! 🙂", "ein [SEP] im Text"]
    out = tok(texts)
    for text, ids, mask in zip(texts, out["token_ids"].numpy(), out["padding_mask"].numpy()):
        used = ids[mask.astype(bool)].tolist()
        assert used == [2] + small.encode(text) + [3], text


def test_min_count_drops_rare_pieces_and_counts_changes(vocab_path, synthetic_split, tmp_path):
    from malign.text import trim_vocabulary

    train, _ = synthetic_split
    full = _processor(vocab_path)
    counts: dict[int, int] = {}
    for ids in full.encode(train):
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
    result = trim_vocabulary(vocab_path, train, tmp_path / "mc", min_count=3)
    kept = set(result.old_ids.tolist())
    learned = range(261, full.get_piece_size())
    extremes = {min(learned, key=full.get_score), max(learned, key=full.get_score)}
    rare = {i for i, c in counts.items() if c < 3 and i >= 261}
    assert rare and not (rare & kept) - extremes
    assert {i for i, c in counts.items() if c >= 3} <= kept
    small = _processor(result.model_path)
    changed = sum(a != [int(result.old_ids[i]) for i in b]
                  for a, b in zip(full.encode(train), small.encode(train)))
    assert changed == result.stats["corpus_sentences_changed"] > 0
    assert result.stats["corpus_token_coverage"] < 1.0


def test_keep_and_bad_inputs(vocab_path, tmp_path):
    from malign.text import trim_vocabulary

    full = _processor(vocab_path)
    extra = full.id_to_piece(999)
    result = trim_vocabulary(vocab_path, ["a"], tmp_path / "k", keep=[extra])
    assert extra in {_processor(result.model_path).id_to_piece(i)
                     for i in range(result.pieces_after)}
    with pytest.raises(ValueError, match="not in"):
        trim_vocabulary(vocab_path, ["a"], tmp_path / "k", keep=["▁no-such-piece-xyz"])
    with pytest.raises(ValueError, match="min_count"):
        trim_vocabulary(vocab_path, ["a"], tmp_path / "k", min_count=0)
    with pytest.raises(ValueError, match="no non-empty sentence"):
        trim_vocabulary(vocab_path, ["", "  "], tmp_path / "k")
    with pytest.raises(TypeError, match="single string"):
        trim_vocabulary(vocab_path, "a sentence", tmp_path / "k")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        trim_vocabulary(vocab_path, [tmp_path / "missing.txt"], tmp_path / "k")
    with pytest.raises(FileNotFoundError, match="not found"):
        trim_vocabulary(tmp_path / "none.model", ["a"], tmp_path / "k")
    (tmp_path / "junk.model").write_bytes(b"\xff\x00junk")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        trim_vocabulary(tmp_path / "junk.model", ["a"], tmp_path / "k")


def test_trimmed_model_embeds_like_the_full_one(tiny_model, vocab_path, synthetic_split,
                                                synthetic_trim):
    import malign
    from malign.models.align_model import count_params

    assert tiny_model.vocabulary_size == 1000
    small_model = malign.text.trim_token_embedding(tiny_model, synthetic_trim)
    assert small_model.vocabulary_size == synthetic_trim.pieces_after
    assert count_params(tiny_model) - count_params(small_model) == (
        (1000 - synthetic_trim.pieces_after) * tiny_model.model_config.text.hidden_dim)
    full_tok = malign.text.SentencePieceTokenizer(vocab_path, sequence_length=16)
    small_tok = malign.text.SentencePieceTokenizer(synthetic_trim.model_path, sequence_length=16)
    train, _ = synthetic_split
    texts = train[:32]
    full_in, small_in = full_tok(texts), small_tok(texts)
    assert not np.array_equal(full_in["token_ids"].numpy(), small_in["token_ids"].numpy())
    a = tiny_model.embed_text(full_in).numpy()
    b = small_model.embed_text(small_in).numpy()
    np.testing.assert_allclose(b, a, atol=1e-6)
    # Image tower and temperature copied too.
    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(small_model.embed_image(images).numpy(),
                               tiny_model.embed_image(images).numpy(), atol=1e-6)
    assert float(small_model.temperature) == float(tiny_model.temperature)
    with pytest.raises(ValueError, match="past the model's vocabulary"):
        malign.text.trim_token_embedding(small_model, synthetic_trim)
    with pytest.raises(ValueError, match="special ids 0..4"):
        malign.text.trim_token_embedding(tiny_model, [0, 1, 3, 4, 5])


def test_cli_trim_writes_tokenizer_and_model(vocab_path, synthetic_split, tmp_path, tiny_model):
    train, _ = synthetic_split
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(train[:100]) + "\n", encoding="utf-8")
    tiny_model.save(tmp_path / "full.keras")
    out = subprocess.run(
        [sys.executable, "-m", "malign.cli", "tokenizer", "trim", "--model", str(vocab_path),
         "--corpus", str(corpus), "--out", str(tmp_path / "cli"),
         "--keras-model", str(tmp_path / "full.keras"), "--keras-out", str(tmp_path / "s.keras")],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    stats = json.loads((tmp_path / "cli.trim.json").read_text())
    assert f"pieces: 1000 -> {stats['pieces_after']}" in out.stdout
    assert (tmp_path / "cli.model").is_file() and (tmp_path / "s.keras").is_file()
    import keras

    small = keras.saving.load_model(tmp_path / "s.keras", compile=False)
    assert small.vocabulary_size == stats["pieces_after"]


@pytest.mark.parametrize("extra, message", [
    (["--corpus", "no/such/corpus.txt"], "trim corpus file not found: no/such/corpus.txt"),
    (["--corpus", "{corpus}", "--keras-model", "m.keras"], "--keras-model and --keras-out go together"),
])
def test_cli_trim_errors(vocab_path, tmp_path, extra, message):
    corpus = tmp_path / "c.txt"
    corpus.write_text("ein Hund\n", encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "malign.cli", "tokenizer", "trim", "--model", str(vocab_path),
         "--out", str(tmp_path / "x")] + [a.format(corpus=corpus) for a in extra],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert out.returncode != 0
    assert message in out.stderr
    assert not (tmp_path / "x.model").exists()


@pytest.fixture(scope="module")
def m30k_captions(multi30k_mini) -> dict[str, dict[str, list[str]]]:
    import gzip

    raw = Path(multi30k_mini) / "data" / "task1" / "raw"
    out: dict[str, dict[str, list[str]]] = {}
    for split in ("train", "val"):
        out[split] = {}
        for lang in LANGS:
            path = raw / f"{split}.{lang}.gz"
            if not path.is_file():
                pytest.skip(f"{path} not found in the shared Multi30K subset")
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                out[split][lang] = [line.strip() for line in handle if line.strip()]
    return out


@pytest.mark.parametrize("langs", [LANGS, ("en", "de")], ids=["en-de-fr-cs", "en-de"])
def test_multi30k_train_trim_keeps_val_segmentation(vocab_path, m30k_captions, tmp_path, langs):
    """Trim on the task1 train captions, check on the val captions: identical on train,
    differing on val only where a val sentence needs a piece train never used."""
    from malign.text import trim_vocabulary

    raw = vocab_path  # the full model: the 1000-piece test vocabulary
    files = []
    for lang in langs:
        path = tmp_path / f"train.{lang}.txt"
        path.write_text("\n".join(m30k_captions["train"][lang]) + "\n", encoding="utf-8")
        files.append(path)
    result = trim_vocabulary(raw, files, tmp_path / "m30k")
    full, small = _processor(raw), _processor(result.model_path)
    train = [s for lang in langs for s in m30k_captions["train"][lang]]
    assert _compare(full, small, result.old_ids, train) == (len(train), 0, 0)
    report = {}
    for lang in langs:
        val = m30k_captions["val"][lang]
        identical, differing, unseen = _compare(full, small, result.old_ids, val)
        assert differing <= unseen
        report[lang] = (len(val), differing, unseen)
        assert identical >= 0.97 * len(val), report
    print(f"\ntrim on train {'/'.join(langs)}: {result.pieces_before} -> {result.pieces_after} "
          f"pieces; val (sentences, differing, needing a trimmed piece) {report}")
    if langs == ("en", "de"):
        # fr/cs text needs pieces the en/de corpus never used; it still encodes (bytes).
        other = m30k_captions["val"]["cs"][:200]
        identical, differing, unseen = _compare(full, small, result.old_ids, other)
        assert differing > 0


def test_multi30k_larger_vocab_trimmed_on_a_subset(m30k_captions, tmp_path):
    """A 4000-piece vocabulary trained on all 4x4000 train captions, trimmed on 1000 captions
    per language: the other 12000 train captions and the val captions segment identically
    unless they need a piece the subset never used (then into kept pieces or bytes)."""
    from malign.text import train_vocabulary, trim_vocabulary

    files = []
    for lang in LANGS:
        path = tmp_path / f"train.{lang}.txt"
        path.write_text("\n".join(m30k_captions["train"][lang]) + "\n", encoding="utf-8")
        files.append(str(path))
    full_path = train_vocabulary(files, 4000, tmp_path / "full4k", verbose=False, num_threads=1)
    subset = [s for lang in LANGS for s in m30k_captions["train"][lang][:1000]]
    result = trim_vocabulary(full_path, subset, tmp_path / "sub")
    assert result.pieces_before == 4000 and result.pieces_after < 4000
    full, small = _processor(full_path), _processor(result.model_path)
    assert _compare(full, small, result.old_ids, subset) == (len(subset), 0, 0)
    rest = [s for lang in LANGS for s in m30k_captions["train"][lang][1000:]]
    val = [s for lang in LANGS for s in m30k_captions["val"][lang]]
    shares = {}
    for name, sentences in (("train[1000:]", rest), ("val", val)):
        identical, differing, unseen = _compare(full, small, result.old_ids, sentences)
        assert differing <= unseen and identical + differing == len(sentences)
        shares[name] = differing / len(sentences)
    print(f"\n4000 -> {result.pieces_after} pieces; share of sentences segmented differently "
          f"(all needing a trimmed piece): {shares}")
    assert 0 < shares["val"] < 0.5
