"""The evaluator interface shared by every task (detectron2's ``DatasetEvaluator``)."""
from __future__ import annotations

from typing import Any

__all__ = ["DatasetEvaluator", "DatasetEvaluators"]


class DatasetEvaluator:
    """Accumulates model outputs over a dataset and turns them into metrics.

    The engine calls :meth:`reset` once, :meth:`process` for every batch, then :meth:`evaluate`.
    In a multi-process run every rank processes its own shard; :meth:`evaluate` gathers the
    shards and returns the metrics on rank 0 and ``{}`` on the other ranks.
    """

    def reset(self) -> None:
        """Forget everything seen so far (called before an evaluation pass)."""

    def process(self, batch: Any, outputs: Any) -> None:
        """Record one batch.

        Args:
            batch: the batch given to the model (a dict from the data loader).
            outputs: what the model returned for it in eval mode.
        """

    def evaluate(self) -> dict[str, float]:
        """Return ``{metric_name: value}`` on rank 0 (``{}`` elsewhere)."""
        return {}


class DatasetEvaluators(DatasetEvaluator):
    """Runs several evaluators on the same outputs and merges their results.

    Raises:
        ValueError: two evaluators report the same metric name.
    """

    def __init__(self, evaluators: list[DatasetEvaluator]) -> None:
        self.evaluators = list(evaluators)

    def reset(self) -> None:
        for e in self.evaluators:
            e.reset()

    def process(self, batch: Any, outputs: Any) -> None:
        for e in self.evaluators:
            e.process(batch, outputs)

    def evaluate(self) -> dict[str, float]:
        results: dict[str, float] = {}
        for e in self.evaluators:
            for k, v in (e.evaluate() or {}).items():
                if k in results:
                    raise ValueError(f"DatasetEvaluators: two evaluators both report metric {k!r}")
                results[k] = v
        return results
