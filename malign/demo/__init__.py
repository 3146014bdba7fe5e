"""The demo: the whole journey (data, vocabulary, teacher, distilled student, evaluation,
export, a query on the SavedModel), each step a ``malign`` command in its own process.

- :mod:`malign.demo.journey`: ``run_journey``.
- :mod:`malign.demo.commands`: ``malign demo``.
"""

from malign.demo.journey import run_journey

__all__ = ["run_journey"]
