"""A Keras callback that runs the retrieval evaluation during ``fit``.

Every ``every_n_steps`` optimizer steps (and, optionally, at the end of
training) it embeds a held-out record set with the model being trained,
computes the metrics of ``malign.evaluation.evaluate_embeddings`` and writes
them as TensorBoard scalars (``retrieval/<lang>/<metric>``, also
``retrieval/all/...`` and ``retrieval/mean/...``) under ``log_dir``. The step
is the optimizer's iteration count, so a resumed run continues its curves.

Example:
    >>> import malign  # doctest: +SKIP
    >>> cb = RetrievalEvaluation("out/m30k-val-*", tokenizer, every_n_steps=500,
    ...                          log_dir="runs/x/tb")  # doctest: +SKIP
    >>> model.fit(train_ds, steps_per_epoch=1000, epochs=10, callbacks=[cb])  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from malign.evaluation.evaluate import evaluate_embeddings, select_languages, warn_if_resize_differs
from malign.evaluation.metrics import DEFAULT_KS
from malign.evaluation.retrieval import DEFAULT_MEMORY_BUDGET_BYTES

__all__ = ["RetrievalEvaluation"]


class RetrievalEvaluation(keras.callbacks.Callback):
    """Evaluates multilingual retrieval every N training steps and logs it.

    Args:
        data: an ``EvalSplit`` (from ``malign.data.read_eval_split``) or a file
            pattern / record prefix of one, read at the first evaluation with the
            model's image size and evaluation resize (``ImageTowerConfig.eval_resize``).
        tokenizer: strings → ``{"token_ids", "padding_mask"}`` for the model.
        every_n_steps: evaluate when the optimizer step count reaches a multiple of this.
        log_dir: TensorBoard directory; the scalars go to ``log_dir/retrieval``.
            None logs nothing (results stay in ``history``).
        languages: languages to report (default: all in the record set).
        ks: K values of recall at K.
        image_batch_size: batch size when reading a file pattern.
        text_batch_size: captions per embedding batch.
        at_train_end: also evaluate when training ends (if the last step was
            not just evaluated).
        memory_budget_bytes: working-memory bound of the exact search.
        verbose: print a one-line summary per evaluation.

    Attributes:
        history: list of ``(step, report)``, one per evaluation.

    Example:
        >>> import malign, numpy as np, tensorflow as tf
        >>> from types import SimpleNamespace
        >>> model = malign.AlignModel.from_preset("tiny")
        >>> tok = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), 16)
        >>> images = tf.data.Dataset.from_tensor_slices(np.random.rand(3, 32, 32, 3).astype("float32")).batch(2)
        >>> split = SimpleNamespace(images=images, image_ids=["a", "b", "c"], captions=["x", "y", "z"],
        ...                         caption_langs=["en"] * 3, text_to_image=np.arange(3))
        >>> cb = RetrievalEvaluation(split, tok, every_n_steps=10, verbose=False)
        >>> cb.set_model(model)
        >>> report = cb.evaluate(step=0)
        >>> 0 <= report["mean"]["mean_recall"] <= 100
        True
    """

    def __init__(
        self,
        data: Any,
        tokenizer: Any,
        every_n_steps: int = 1000,
        log_dir: str | os.PathLike | None = None,
        languages: Sequence[str] | None = None,
        ks: Sequence[int] = DEFAULT_KS,
        image_batch_size: int = 64,
        text_batch_size: int = 256,
        at_train_end: bool = True,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
        verbose: bool = True,
    ):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}")
        self.data = data
        self.tokenizer = tokenizer
        self.every_n_steps = int(every_n_steps)
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.languages = None if languages is None else list(languages)
        self.ks = tuple(ks)
        self.image_batch_size = image_batch_size
        self.text_batch_size = text_batch_size
        self.at_train_end = at_train_end
        self.memory_budget_bytes = memory_budget_bytes
        self.verbose = verbose
        self.history: list[tuple[int, dict[str, Any]]] = []
        self._split = None
        self._writer = None
        self._last_step: int | None = None

    @property
    def _embedder(self) -> Any:
        """The dual encoder to evaluate: the trained model, or the student a Distiller trains
        (its ``embedding_model``)."""
        return getattr(self.model, "embedding_model", self.model)

    # -- data -------------------------------------------------------------------------
    def _get_split(self):
        if self._split is None:
            if isinstance(self.data, (str, os.PathLike)):
                from malign.data import model_eval_resize, read_eval_split

                self._split = read_eval_split(
                    os.fspath(self.data),
                    self._embedder.image_size,
                    self.image_batch_size,
                    languages=self.languages,
                    verbose=self.verbose,
                    eval_resize=model_eval_resize(self._embedder),
                )
            else:
                self._split = self.data
                warn_if_resize_differs(self._embedder, self._split)
            # Fail early (at the first evaluation) on a language the set lacks.
            self._chosen = select_languages(list(self._split.caption_langs), self.languages)
            langs = np.asarray(list(self._split.caption_langs), dtype=object)
            self._keep = np.flatnonzero(np.isin(langs, self._chosen))
        return self._split

    # -- evaluation -------------------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, Any]:
        """Runs one evaluation now, logs it at ``step`` and returns the report.

        Args:
            step: the step to log the scalars at.

        Returns:
            The dict of ``evaluate_embeddings`` plus ``num_images`` and ``num_captions``
            (as ``evaluate_retrieval`` gives; ``write_retrieval_report`` takes it).
        """
        from malign.evaluation.embedding import embed_images, embed_texts

        split = self._get_split()
        image_emb = embed_images(self._embedder, split.images, num_images=len(split.image_ids), verbose=False)
        captions = [split.captions[i] for i in self._keep]
        text_emb = embed_texts(self._embedder, self.tokenizer, captions, self.text_batch_size, verbose=False)
        report = evaluate_embeddings(
            image_emb,
            text_emb,
            np.asarray(split.text_to_image)[self._keep],
            [split.caption_langs[i] for i in self._keep],
            self._chosen,
            self.ks,
            self.memory_budget_bytes,
        )
        report["num_images"] = int(image_emb.shape[0])
        report["num_captions"] = int(text_emb.shape[0])
        self.history.append((int(step), report))
        self._last_step = int(step)
        self._log(step, report)
        if self.verbose:
            parts = [f"{lang} {m['mean_recall']:.1f}" for lang, m in report["languages"].items()]
            # Keras' progress bar (verbose=1) leaves its line open: start a new one.
            start = "\n" if (self.params or {}).get("verbose") == 1 else ""
            print(f"{start}retrieval @ step {step}: mR {', '.join(parts)} "
                  f"(mean {report['mean']['mean_recall']:.1f})", flush=True)
        return report

    def _log(self, step: int, report: dict[str, Any]) -> None:
        if self.log_dir is None:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "retrieval"))
        groups = dict(report["languages"])
        if "all" in report:
            groups["all"] = report["all"]
        groups["mean"] = report["mean"]
        # record_if(True): Keras' TensorBoard callback may have switched recording off
        # for this batch (its update_freq), which would silently drop these scalars.
        with self._writer.as_default(step=int(step)), tf.summary.record_if(True):
            for group, metrics in groups.items():
                for key in report["metric_keys"]:
                    tf.summary.scalar(f"retrieval/{group}/{key}", metrics[key])
        self._writer.flush()

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    # -- Keras hooks ------------------------------------------------------------------
    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        step = self._step()
        # With steps_per_execution > 1 the step may jump over a multiple.
        previous = self._last_step if self._last_step is not None else self._start_step
        if step // self.every_n_steps > previous // self.every_n_steps:
            self.evaluate(step)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._start_step = self._step()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.at_train_end:
            step = self._step()
            if self._last_step != step:
                self.evaluate(step)
        if self._writer is not None:
            self._writer.flush()
