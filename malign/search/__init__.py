"""Embed images and captions into a file, and search it: ``malign embed`` / ``malign search``.

One job a module:

- :mod:`~malign.search.embeddings_file`: the ``.npz`` format (ids, L2-normalised float32
  embeddings, kind, the model's path and fingerprint), written atomically, read and checked.
- :mod:`~malign.search.fingerprint`: which model a ``--model`` names and its fingerprint;
  the refusal to compare embeddings of different models.
- :mod:`~malign.search.sources`: images of a folder or record shards, captions of a text
  file, and the checks an image passes before decoding.
- :mod:`~malign.search.embed`: embedding with a ``.keras`` model or an exported SavedModel
  (one interface), in batches, skipping and naming files that cannot be embedded.
- :mod:`~malign.search.query`: exact top-k (``malign.evaluation.retrieval.top_k_search``),
  as a table or JSON.
- :mod:`~malign.search.contact_sheet`: the hits as an HTML page or a PNG grid.
- :mod:`~malign.search.commands`: the two commands.

Nothing is imported here, so that the command line's parser stays free of TensorFlow
and numpy; import the modules.

Example:
    >>> from malign.search.embeddings_file import read_embeddings
    >>> photos = read_embeddings("photos.npz")  # doctest: +SKIP
    >>> photos.kind, photos.count, photos.model["format"]  # doctest: +SKIP
    ('image', 9, 'keras')
"""
