"""Robustness evaluation: one IN-1K classifier scored on ImageNet variants (paper Table 5).

Table 5 reports top-1 on IN-1K, IN-V2, ReaL, IN-A, IN-R and IN-Sketch, their average and the
"gap": IN-1K top-1 minus that six-column average. With the paper's EVA-g row
(89.6, 81.6, 90.8, 86.2, 88.3, 67.7) this gives avg 504.2 / 6 = 84.03 -> 84.0 and
gap 89.6 - 84.03 = 5.57 -> 5.6, the published numbers. (IN-1K minus the mean of the five variants
would be 6.7, which is not what the table shows.)
"""
from __future__ import annotations

import json
import logging
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["TABLE5_SETS", "SET_TITLES", "table5_summary", "ImageInput", "evaluate_set", "evaluate_robustness",
           "format_table", "dump_json"]

logger = logging.getLogger(__name__)

#: The six columns averaged in Table 5, in the paper's order.
TABLE5_SETS = ("imagenet", "imagenet_v2", "imagenet_real", "imagenet_a", "imagenet_r", "imagenet_sketch")
SET_TITLES = {"imagenet": "IN-1K", "imagenet_v2": "IN-V2", "imagenet_real": "ReaL",
              "imagenet_a": "IN-A", "imagenet_r": "IN-R", "imagenet_sketch": "IN-Sketch",
              "objectnet": "ObjectNet"}


def table5_summary(top1: Mapping[str, float]) -> dict[str, float]:
    """Table 5's ``avg`` (mean top-1 of the six columns) and ``gap`` (IN-1K minus ``avg``).

    Args:
        top1: top-1 accuracy (%) per set name; must contain every name of :data:`TABLE5_SETS`
            (other sets such as ObjectNet are ignored).

    Raises:
        KeyError: a Table 5 column is missing (the message lists which).
    """
    missing = [s for s in TABLE5_SETS if s not in top1]
    if missing:
        raise KeyError(f"table5_summary: missing top-1 for {missing}; Table 5 averages {list(TABLE5_SETS)}")
    avg = sum(float(top1[s]) for s in TABLE5_SETS) / len(TABLE5_SETS)
    return {"avg": avg, "gap": float(top1["imagenet"]) - avg}


class ImageInput(nn.Module):
    """Lets a bare timm-style network (image tensor -> logits) take the engine's batch dicts."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.net(batch["image"])


def _batch_model(model: nn.Module) -> nn.Module:
    """``model`` when it takes batch dicts (``ImageClassifier``), else it wrapped in :class:`ImageInput`."""
    from .model import ImageClassifier

    inner = getattr(model, "module", model)  # DDP / EMA wrappers
    return model if isinstance(inner, ImageClassifier) else ImageInput(model)


def _evaluator_for(dataset: Dataset, topk: Sequence[int]):
    # the set's own make_evaluator decides the scoring (class subset, multi-label rule)
    if hasattr(dataset, "make_evaluator"):
        return dataset.make_evaluator(topk=topk)
    from ..evaluation import ClassificationEvaluator

    return ClassificationEvaluator(topk=topk)


def evaluate_set(model: nn.Module, dataset: Dataset, *, batch_size: int = 64, num_workers: int = 0,
                 topk: Sequence[int] = (1, 5), loader: DataLoader | None = None) -> dict[str, float]:
    """Top-k of ``model`` (images -> IN-1K logits, or an ``ImageClassifier``) on one set.

    The set's own ``make_evaluator`` decides the scoring (class subset, multi-label rule); the
    loop is :func:`eva_core.evaluation.inference_on_dataset` over
    ``eva_core.data.build_test_loader`` (sharded across ranks; results on rank 0).
    """
    from ..data import build_test_loader
    from ..evaluation import inference_on_dataset

    loader = loader or build_test_loader(dataset, batch_size, num_workers=num_workers)
    return inference_on_dataset(_batch_model(model), loader, _evaluator_for(dataset, topk))


def evaluate_robustness(model: nn.Module, sets: Mapping[str, Dataset], **kwargs: Any) -> dict[str, Any]:
    """Evaluate ``model`` on several sets; add Table 5's avg / gap when all six columns are there.

    Args:
        model: IN-1K classifier.
        sets: ``{set name: dataset}`` (names as in :data:`eva_core.classification.datasets.EVAL_SETS`).
        **kwargs: ``batch_size``, ``num_workers``, ``topk`` (as :func:`evaluate_set`).

    Returns:
        ``{"sets": {name: {"top1", "top5", "num_samples"}}, "avg": .., "gap": ..}`` (the last two
        only when every Table 5 column was evaluated); ``{}`` on ranks other than 0.
    """
    from ..data import build_test_loader
    from ..evaluation import inference_on_datasets

    batch_size, num_workers = kwargs.pop("batch_size", 64), kwargs.pop("num_workers", 0)
    topk = kwargs.pop("topk", (1, 5))
    if kwargs:
        raise TypeError(f"evaluate_robustness: unexpected arguments {sorted(kwargs)}")
    loaders = {name: build_test_loader(ds, batch_size, num_workers=num_workers) for name, ds in sets.items()}
    evaluators = {name: _evaluator_for(ds, topk) for name, ds in sets.items()}
    per_set = inference_on_datasets(_batch_model(model), loaders, evaluators)
    if not per_set:
        return {}
    out: dict[str, Any] = {"sets": per_set}
    top1 = {k: v["top1"] for k, v in per_set.items() if "top1" in v}
    if all(s in top1 for s in TABLE5_SETS):
        out.update(table5_summary(top1))
    return out


def format_table(results: Mapping[Any, Mapping[str, Any]], digits: int = 1) -> str:
    """Markdown table of top-1 / top-5 per set (columns) and resolution (rows), plus avg / gap.

    Args:
        results: ``{row label (e.g. resolution): evaluate_robustness(...) output}``.
    """
    names: list[str] = []
    for res in results.values():
        for n in res.get("sets", {}):
            if n not in names:
                names.append(n)
    order = [n for n in TABLE5_SETS if n in names] + [n for n in names if n not in TABLE5_SETS]
    has_summary = any("avg" in r for r in results.values())
    header = ["resolution", "metric"] + [SET_TITLES.get(n, n) for n in order]
    if has_summary:
        header += ["avg", "gap"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    fmt = f"{{:.{digits}f}}"
    for label, res in results.items():
        for metric in ("top1", "top5"):
            row = [str(label), metric]
            row += [fmt.format(res["sets"][n][metric]) if metric in res.get("sets", {}).get(n, {}) else "-"
                    for n in order]
            if has_summary:
                row += [fmt.format(res[k]) if metric == "top1" and k in res else "-" for k in ("avg", "gap")]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def dump_json(results: Mapping[Any, Any], path: str) -> None:
    """Write ``results`` as JSON (keys turned into strings)."""
    with open(path, "w") as f:
        json.dump({str(k): v for k, v in results.items()}, f, indent=2, sort_keys=True)
        f.write("\n")
