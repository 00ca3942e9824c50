"""Top-k accuracy evaluator for image classification and its robustness variants."""
from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..data.loader import batch_num_skipped
from ..utils import comm
from .evaluator import DatasetEvaluator

__all__ = ["ClassificationEvaluator"]

logger = logging.getLogger(__name__)


class ClassificationEvaluator(DatasetEvaluator):
    """Top-k accuracy (in percent), optionally on a class subset and with multi-label targets.

    For every sample it records the rank of the first correct prediction, so any ``k`` can be
    scored from the same record; records are gathered across ranks with
    :func:`eva_core.utils.comm.all_gather_object`.

    Args:
        topk: the ``k`` values to report as ``top{k}``. A ``k`` larger than the number of
            (subset) classes counts every sample as correct, as timm's ``accuracy`` does.
        class_subset: column indices of the logits that the evaluation set can contain (e.g.
            the 200 IN-1K classes of ImageNet-A / -R, the IN-1K classes mapped to ObjectNet).
            Logits are restricted to these columns before ranking; labels stay in the full
            logits' index space.
        multi_label_key: batch key holding the set of correct labels per sample (ImageNet-ReaL,
            ObjectNet): a ``[B, C]`` 0/1 tensor over the full logits' columns, or a list of
            label lists. A prediction is correct when it is in the set; samples whose set is
            empty are excluded (ReaL's rule). When ``None``, ``batch[label_key]`` is the single
            correct label.
        label_key: batch key of the single-label targets (``[B]`` int64).
        index_key: batch key of dataset indices; when present, a sample seen twice (a sharded
            loader that pads its last shard) is counted once.
        prefix: prepended to every metric name (e.g. ``"imagenet_a/"``).

    Results: ``{prefix + "top1": .., prefix + "top5": .., prefix + "num_samples": n,
    prefix + "num_skipped": unreadable samples the test loader excluded (when it counts them)}``.
    """

    def __init__(self, topk: Sequence[int] = (1, 5), class_subset: Iterable[int] | None = None,
                 multi_label_key: str | None = None, *, label_key: str = "label",
                 index_key: str = "index", prefix: str = "") -> None:
        self.topk = tuple(int(k) for k in topk)
        if not self.topk or min(self.topk) < 1:
            raise ValueError(f"ClassificationEvaluator: topk must be positive integers, got {topk}")
        if class_subset is not None:
            subset = [int(c) for c in class_subset]
            if not subset:
                raise ValueError("ClassificationEvaluator: class_subset is empty")
            if len(set(subset)) != len(subset):
                raise ValueError("ClassificationEvaluator: class_subset has repeated indices")
            self.class_subset: torch.Tensor | None = torch.tensor(subset, dtype=torch.long)
        else:
            self.class_subset = None
        self.multi_label_key = multi_label_key
        self.label_key = label_key
        self.index_key = index_key
        self.prefix = prefix
        self.reset()

    def reset(self) -> None:
        self._ranks: list[np.ndarray] = []
        self._num_skipped: int | None = None  # stays None unless the loader counts skips
        self._indices: list[np.ndarray] | None = []

    # ------------------------------------------------------------------ per batch
    def _targets(self, batch: Mapping, num_columns: int, batch_size: int) -> torch.Tensor:
        """Boolean ``[B, num_columns]`` matrix of correct labels for the batch."""
        key = self.multi_label_key or self.label_key
        if key not in batch:
            raise KeyError(f"ClassificationEvaluator: batch has no {key!r} entry "
                           f"(batch keys: {sorted(batch.keys())})")
        value = batch[key]
        if self.multi_label_key is None:
            labels = torch.as_tensor(value).long().reshape(-1)
            if labels.numel() != batch_size:
                raise ValueError(f"ClassificationEvaluator: {key!r} has {labels.numel()} labels for "
                                 f"{batch_size} outputs")
            if labels.numel() and (labels.min() < 0 or labels.max() >= num_columns):
                raise ValueError(f"ClassificationEvaluator: label {labels.max().item()} out of range "
                                 f"for {num_columns} logits")
            return torch.nn.functional.one_hot(labels.cpu(), num_columns).bool()
        if torch.is_tensor(value) and value.dim() == 2:
            if tuple(value.shape) != (batch_size, num_columns):
                raise ValueError(f"ClassificationEvaluator: multi-label {key!r} has shape "
                                 f"{tuple(value.shape)}, expected ({batch_size}, {num_columns})")
            return value.detach().cpu().bool()
        rows = list(value)
        if len(rows) != batch_size:
            raise ValueError(f"ClassificationEvaluator: {key!r} has {len(rows)} label sets for "
                             f"{batch_size} outputs")
        out = torch.zeros(batch_size, num_columns, dtype=torch.bool)
        for i, row in enumerate(rows):
            for c in torch.as_tensor(list(row), dtype=torch.long).reshape(-1).tolist():
                if not 0 <= c < num_columns:
                    raise ValueError(f"ClassificationEvaluator: label {c} in {key!r} out of range "
                                     f"for {num_columns} logits")
                out[i, c] = True
        return out

    def process(self, batch: Mapping, outputs: Any) -> None:
        skipped = batch_num_skipped(batch)
        if skipped is not None:
            self._num_skipped = (self._num_skipped or 0) + skipped
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs
        if not torch.is_tensor(logits) or logits.dim() != 2:
            raise ValueError("ClassificationEvaluator: outputs must be logits [B, C], got "
                             f"{getattr(logits, 'shape', type(logits).__name__)}")
        logits = logits.detach().float().cpu()
        batch_size, num_columns = logits.shape
        correct = self._targets(batch, num_columns, batch_size)
        if self.class_subset is not None:
            if int(self.class_subset.max()) >= num_columns:
                raise ValueError(f"ClassificationEvaluator: class_subset index "
                                 f"{int(self.class_subset.max())} out of range for {num_columns} logits")
            logits = logits[:, self.class_subset]
            correct = correct[:, self.class_subset]
        valid = correct.any(dim=1)
        if self.multi_label_key is None and not bool(valid.all()):
            # A single label outside the subset can never be predicted: the dataset and the
            # subset disagree, which is a setup error rather than a wrong prediction.
            raise ValueError("ClassificationEvaluator: a label is not in class_subset; the "
                             "evaluation set and the class subset disagree")
        # rank of the first correct class in the descending order of the logits
        order = logits.argsort(dim=1, descending=True, stable=True)
        hit = correct.gather(1, order)
        first = torch.where(hit.any(dim=1), hit.float().argmax(dim=1),
                            torch.full((batch_size,), logits.shape[1], dtype=torch.long))
        self._ranks.append(first[valid].numpy())
        if self._indices is not None:
            if isinstance(batch, Mapping) and self.index_key in batch:
                idx = torch.as_tensor(batch[self.index_key]).reshape(-1)
                self._indices.append(idx[valid].cpu().numpy())
            else:
                self._indices = None

    # ------------------------------------------------------------------ results
    def evaluate(self) -> dict[str, float]:
        ranks_all = comm.all_gather_object(self._ranks)
        indices_all = comm.all_gather_object(self._indices)
        skipped_all = [c for c in comm.all_gather_object(self._num_skipped) if c is not None]
        if not comm.is_main_process():
            return {}
        ranks = (np.concatenate([r for part in ranks_all for r in part]) if any(ranks_all)
                 else np.zeros(0, int))
        if all(part is not None for part in indices_all):
            idx = [i for part in indices_all for i in part]
            if idx:
                idx_arr = np.concatenate(idx)
                _, keep = np.unique(idx_arr, return_index=True)
                ranks = ranks[np.sort(keep)]
        n = int(ranks.shape[0])
        if n == 0:
            logger.warning("ClassificationEvaluator%s: no samples to evaluate",
                           f" ({self.prefix})" if self.prefix else "")
            return {}
        results = {f"{self.prefix}top{k}": float((ranks < k).mean() * 100.0) for k in self.topk}
        results[f"{self.prefix}num_samples"] = n
        if skipped_all:
            results[f"{self.prefix}num_skipped"] = int(sum(skipped_all))
        return results
