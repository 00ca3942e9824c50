"""The evaluator interface and the one inference loop shared by every task (detectron2's
``DatasetEvaluator`` and ``inference_on_dataset``)."""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..utils.device import to_device

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "inference_context", "inference_on_dataset",
           "inference_on_datasets"]

logger = logging.getLogger("eva_core.evaluation")


class DatasetEvaluator:
    """Accumulates model outputs over a dataset and turns them into metrics.

    :func:`inference_on_dataset` calls :meth:`reset` once, :meth:`process` for every batch, then
    :meth:`evaluate`. In a multi-process run every rank processes its own shard; :meth:`evaluate`
    gathers the shards and returns the metrics on rank 0 and ``{}`` (or ``None``) elsewhere.
    """

    def reset(self) -> None:
        """Forget everything seen so far (called before an evaluation pass)."""

    def process(self, batch: Any, outputs: Any) -> None:
        """Record one batch.

        Args:
            batch: the batch given to the model (a dict from the data loader).
            outputs: what the model returned for it in eval mode.
        """

    def evaluate(self) -> dict[str, Any]:
        """Return ``{metric_name: value}`` on rank 0 (``{}`` elsewhere). Values may be nested
        dicts (``{"bbox": {"AP": ..}, "segm": {"AP": ..}}``)."""
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

    def evaluate(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for e in self.evaluators:
            for k, v in (e.evaluate() or {}).items():
                if k in results:
                    raise ValueError(f"DatasetEvaluators: two evaluators both report metric {k!r}")
                results[k] = v
        return results


@contextlib.contextmanager
def inference_context(model: nn.Module):
    """Put ``model`` in eval mode for the block and restore its previous train/eval mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def inference_on_dataset(model: nn.Module, data_loader: Iterable, evaluator: DatasetEvaluator | None,
                         *, amp_dtype: torch.dtype | None = None,
                         device: torch.device | str | None = None) -> dict[str, Any]:
    """Run ``model`` on every batch of ``data_loader`` and score the outputs with ``evaluator``.

    The model runs in eval mode under ``torch.no_grad()`` (its train/eval mode is restored
    afterwards); each batch is moved to ``device`` before ``model(batch)``; the evaluator is
    reset, fed every ``(batch, outputs)`` pair and asked for its results. Multi-process runs
    give each rank its shard of the data (``build_test_loader``) and the evaluator gathers.

    Args:
        model: follows the model contract (``model(batch)`` returns predictions in eval mode).
        data_loader: a finite iterable of batches.
        evaluator: a :class:`DatasetEvaluator` (a list is wrapped in :class:`DatasetEvaluators`;
            ``None`` runs inference only and returns ``{}``).
        amp_dtype: run the forward pass under ``torch.autocast`` with this dtype (None: no AMP).
        device: where batches go (default: the device of the model's first parameter).

    Returns:
        the evaluator's results on rank 0 (possibly nested dicts), ``{}`` elsewhere.
    """
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif isinstance(evaluator, (list, tuple)):
        evaluator = DatasetEvaluators(list(evaluator))
    device = torch.device(device) if device is not None else _device_of(model)
    autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    evaluator.reset()
    start, num_batches = time.perf_counter(), 0
    with inference_context(model), torch.no_grad():
        for batch in data_loader:
            batch = to_device(batch, device)
            with autocast:
                outputs = model(batch)
            evaluator.process(batch, outputs)
            num_batches += 1
    logger.info("Inference on %d batches took %.2f s", num_batches, time.perf_counter() - start)
    results = evaluator.evaluate()
    # an evaluator may return None on ranks other than 0
    return results if results is not None else {}


def inference_on_datasets(model: nn.Module, data_loaders: Any, evaluators: Any,
                          **kwargs: Any) -> dict[str, Any]:
    """:func:`inference_on_dataset` over one test set or several named ones.

    Args:
        model: the model to evaluate.
        data_loaders: one loader, or ``{dataset_name: loader}``.
        evaluators: one evaluator (used for every dataset, reset in between), or
            ``{dataset_name: evaluator}`` with the same names as ``data_loaders``.
        **kwargs: passed to :func:`inference_on_dataset` (``amp_dtype``, ``device``).

    Returns:
        the evaluator's results for a single loader; ``{dataset_name: results}`` for a dict of
        loaders.

    Raises:
        ValueError: the evaluator names and the loader names differ, or a dict of evaluators is
            given for a single loader.
    """
    if not isinstance(data_loaders, Mapping):
        if isinstance(evaluators, Mapping):
            raise ValueError(f"one test loader but a dict of evaluators {sorted(evaluators)}: give "
                             "dataloader.test as {name: loader} with the same names")
        return inference_on_dataset(model, data_loaders, evaluators, **kwargs)
    if isinstance(evaluators, Mapping) and set(evaluators) != set(data_loaders):
        raise ValueError(f"dataloader.evaluator names {sorted(evaluators)} differ from dataloader.test "
                         f"names {sorted(data_loaders)}: give one evaluator per test set (or one for all)")
    results = {}
    for name, loader in data_loaders.items():
        evaluator = evaluators[name] if isinstance(evaluators, Mapping) else evaluators
        results[name] = inference_on_dataset(model, loader, evaluator, **kwargs)
        logger.info("Evaluation on %s: %s", name, results[name])
    # ranks other than 0 get {} per dataset; keep their result empty as a whole
    return results if any(results.values()) else {}
