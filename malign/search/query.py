"""Top-k search of query embeddings against an embeddings file, and how its results are shown.

The search is :func:`malign.evaluation.retrieval.top_k_search`, the exact, chunked,
memory-bounded top-k that ``malign eval`` uses: scores are cosine similarities (both
sides L2-normalised) computed as one fixed float64 sum, ties go to the item stored
first, and the results are the same with either backend and at every memory budget.

Example:
    >>> import numpy as np
    >>> from malign.search.embeddings_file import Embeddings, normalise
    >>> gallery = Embeddings(["a.jpg", "b.jpg", "c.jpg"], normalise(np.eye(3)), "image")
    >>> hits = search(gallery, normalise([[0.0, 1.0, 0.2]]), k=2)
    >>> [(h.rank, h.id, round(h.score, 3)) for h in hits[0]]
    [(1, 'b.jpg', 0.981), (2, 'c.jpg', 0.196)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from malign.search.embeddings_file import Embeddings

__all__ = ["Hit", "Query", "results_json", "results_table", "search"]


@dataclasses.dataclass(frozen=True)
class Query:
    """One query as the user gave it.

    Args:
        kind: "text", "image" (a file) or "embedding" (a row of a query embeddings file).
        value: the text, the image path, or the row's id.
        text: for a row of a text embeddings file, its caption.
    """

    kind: str
    value: str
    text: str = ""

    @property
    def label(self) -> str:
        """``text "ein Hund"``, ``image dog.jpg`` or ``line 3 "a dog"``."""
        if self.kind == "text":
            return f'text "{self.value}"'
        if self.kind == "image":
            return f"image {self.value}"
        return f'{self.value} "{self.text}"' if self.text else self.value


@dataclasses.dataclass(frozen=True)
class Hit:
    """One result: its rank (1 = best), row of the embeddings file, id and cosine score."""

    rank: int
    index: int
    id: str
    score: float


def search(gallery: Embeddings, queries: np.ndarray, k: int,
           memory_budget_bytes: int | None = None, backend: str = "numpy") -> list[list[Hit]]:
    """The ``k`` best rows of ``gallery`` for each query, by cosine similarity.

    Args:
        gallery: the embeddings searched.
        queries: ``[Q, D]`` L2-normalised query embeddings of the same model.
        k: results per query; more than the gallery holds gives the whole gallery.
        memory_budget_bytes: working memory of the search (default: that of
            ``top_k_search``, 512 MiB).
        backend: "numpy" or "tensorflow".

    Returns:
        For each query, its hits, best first.

    Raises:
        ValueError: queries of another width than the gallery, or ``k < 1``.

    Example:
        >>> from malign.search.embeddings_file import normalise
        >>> g = Embeddings(["x", "y"], normalise([[1.0, 0.0], [0.0, 1.0]]), "image")
        >>> search(g, normalise([[1.0, 1.0]]), k=5)[0][1].id
        'y'
    """
    from malign.evaluation.retrieval import DEFAULT_MEMORY_BUDGET_BYTES, top_k_search

    queries = np.asarray(queries)
    if queries.ndim != 2:
        raise ValueError(f"queries must be [count, dim], got shape {queries.shape}")
    if queries.shape[1] != gallery.dim:
        raise ValueError(f"the queries are {queries.shape[1]}-dimensional but the embeddings "
                         f"searched are {gallery.dim}-dimensional: they come from another model")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = min(int(k), gallery.count)
    budget = DEFAULT_MEMORY_BUDGET_BYTES if memory_budget_bytes is None else memory_budget_bytes
    scores, indices = top_k_search(queries, gallery.embeddings, k, memory_budget_bytes=budget,
                                   backend=backend)
    return [
        [Hit(rank + 1, int(i), gallery.ids[int(i)], float(s))
         for rank, (s, i) in enumerate(zip(row_scores, row_indices))]
        for row_scores, row_indices in zip(scores, indices)
    ]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def results_table(queries: Sequence[Query], results: Sequence[Sequence[Hit]], gallery: Embeddings,
                  width: int = 100) -> str:
    """The results as plain-text tables, one per query.

    Args:
        queries: the queries, in order.
        results: :func:`search`'s output.
        gallery: the embeddings searched (for captions and languages of a text file).
        width: the widest a query line or a caption row may get (cut with "…"); image
            ids are never cut.

    Example:
        >>> from malign.search.embeddings_file import normalise
        >>> g = Embeddings(["a.jpg"], normalise([[1.0, 0.0]]), "image")
        >>> print(results_table([Query("text", "a dog")], search(g, normalise([[1.0, 0.0]]), 1), g))
        query 1: text "a dog"
          rank   score  id
             1  1.0000  a.jpg
    """
    lines = []
    texts = gallery.kind == "text"
    for n, (query, hits) in enumerate(zip(queries, results), start=1):
        if lines:
            lines.append("")
        lines.append(_cut(_one_line(f"query {n}: {query.label}"), width))
        if texts:
            id_width = max([4, *(len(h.id) for h in hits)])
            lines.append(f"  rank   score  {'line':<{id_width}}  lang  caption")
        else:
            lines.append("  rank   score  id")
        for hit in hits:
            row = f"  {hit.rank:>4}  {hit.score:6.4f}  "
            if texts:
                lang = (gallery.langs[hit.index] if gallery.langs else "") or "-"
                row += f"{hit.id:<{id_width}}  {lang:<4}  {_one_line(gallery.source_text(hit.index))}"
                row = _cut(row, width)
            else:
                row += hit.id
            lines.append(row)
    return "\n".join(lines)


def results_json(queries: Sequence[Query], results: Sequence[Sequence[Hit]], gallery: Embeddings,
                 **extra: Any) -> dict[str, Any]:
    """The results as a JSON-ready dict.

    ``{"embeddings": {"kind", "count", "embedding_dim", "model"}, ..extra..,
    "queries": [{"query": {"kind", "value"[, "text"]}, "hits": [{"rank", "index", "id",
    "score"[, "text", "lang"]}]}]}``.

    Args:
        queries: the queries, in order.
        results: :func:`search`'s output.
        gallery: the embeddings searched.
        **extra: more top-level fields (e.g. ``file``, ``k``).

    Example:
        >>> from malign.search.embeddings_file import normalise
        >>> g = Embeddings(["a.jpg"], normalise([[1.0, 0.0]]), "image", model={"path": "m"})
        >>> results_json([Query("text", "a dog")], search(g, normalise([[1.0, 0.0]]), 1), g)["queries"]
        [{'query': {'kind': 'text', 'value': 'a dog'}, 'hits': [{'rank': 1, 'index': 0, 'id': 'a.jpg', 'score': 1.0}]}]
    """
    out: dict[str, Any] = {
        "embeddings": {"kind": gallery.kind, "count": gallery.count,
                       "embedding_dim": gallery.dim, "model": dict(gallery.model)},
        **extra,
        "queries": [],
    }
    for query, hits in zip(queries, results):
        entry: dict[str, Any] = {"kind": query.kind, "value": query.value}
        if query.text:
            entry["text"] = query.text
        rows = []
        for hit in hits:
            row: dict[str, Any] = dataclasses.asdict(hit)
            if gallery.kind == "text":
                row["text"] = gallery.source_text(hit.index)
                row["lang"] = gallery.langs[hit.index] if gallery.langs else ""
            rows.append(row)
        out["queries"].append({"query": entry, "hits": rows})
    return out
