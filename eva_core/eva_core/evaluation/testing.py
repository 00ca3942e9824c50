"""Results of evaluation: flattening nested metrics and printing them (detectron2's
``evaluation/testing.py``)."""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["flatten_results_dict", "format_results_table", "print_csv_format"]

logger = logging.getLogger("eva_core.evaluation")


def flatten_results_dict(results: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """``{"coco_val": {"bbox": {"AP": 1.0}}}`` -> ``{"coco_val/bbox/AP": 1.0}``.

    Args:
        results: possibly nested dict of metrics.
        sep: joins the keys of the levels.

    Raises:
        ValueError: two paths flatten to the same key (e.g. ``{"a/b": 1, "a": {"b": 2}}``).
    """
    flat: dict[str, Any] = {}
    for key, value in results.items():
        items = (flatten_results_dict(value, sep).items() if isinstance(value, Mapping)
                 else [(None, value)])
        for sub, v in items:
            name = str(key) if sub is None else f"{key}{sep}{sub}"
            if name in flat:
                raise ValueError(f"results hold the metric {name!r} twice after flattening nested dicts")
            flat[name] = v
    return flat


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def format_results_table(results: Mapping[str, Any]) -> str:
    """detectron2's copy-paste format: for each group of metrics (the path up to the last
    ``/``), a ``Task:`` line, a line of metric names and a line of values (4 decimals).

    Non-numeric entries are skipped.
    """
    groups: dict[str, list[tuple[str, float]]] = {}
    for name, value in flatten_results_dict(results).items():
        if not _is_number(value):
            continue
        task, _, metric = name.rpartition("/")
        groups.setdefault(task, []).append((metric, float(value)))
    lines = []
    for task, metrics in groups.items():
        lines.append(f"copypaste: Task: {task or 'results'}")
        lines.append("copypaste: " + ",".join(m for m, _ in metrics))
        lines.append("copypaste: " + ",".join("nan" if math.isnan(v) else f"{v:.4f}" for _, v in metrics))
    return "\n".join(lines)


def print_csv_format(results: Mapping[str, Any]) -> None:
    """Log :func:`format_results_table` of ``results``, one line per logger call."""
    for line in format_results_table(results).splitlines():
        logger.info(line)
