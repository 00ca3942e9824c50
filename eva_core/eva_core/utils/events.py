"""Scalar metrics storage and writers (JSON lines, TensorBoard, console), as in detectron2."""
from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections import defaultdict, deque
from typing import Any

import torch

__all__ = ["EventStorage", "JSONWriter", "TensorboardWriter", "ConsoleWriter", "max_memory_mb"]

logger = logging.getLogger("eva_core.engine")


class EventStorage:
    """Scalars keyed by name, stamped with the iteration they were recorded at.

    Args:
        start_iter: iteration of the first ``put_scalar``.
        window: how many recent values ``median``/``avg`` look at.
    """

    def __init__(self, start_iter: int = 0, window: int = 20):
        self.iter = start_iter
        self._history: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))
        self._latest: dict[str, tuple[float, int]] = {}

    def put_scalar(self, name: str, value: float | torch.Tensor) -> None:
        value = float(value.detach().item() if isinstance(value, torch.Tensor) else value)
        self._history[name].append(value)
        self._latest[name] = (value, self.iter)

    def put_scalars(self, **kwargs: float) -> None:
        for k, v in kwargs.items():
            self.put_scalar(k, v)

    def latest(self) -> dict[str, tuple[float, int]]:
        """``{name: (value, iteration)}`` of the most recent value of every scalar."""
        return dict(self._latest)

    def median(self, name: str) -> float:
        values = sorted(self._history[name])
        return values[len(values) // 2] if values else float("nan")

    def avg(self, name: str) -> float:
        values = self._history[name]
        return sum(values) / len(values) if values else float("nan")

    def latest_since(self, iteration: int) -> dict[str, float]:
        """Scalars recorded at or after ``iteration`` (their latest values)."""
        return {k: v for k, (v, it) in self._latest.items() if it >= iteration}


def max_memory_mb() -> float:
    """Peak memory of this process: CUDA max allocated on GPU, else the process's peak RSS."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class JSONWriter:
    """Appends one JSON object per call to ``path`` (``metrics.json``, one line each)."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()

    def close(self) -> None:
        pass


class TensorboardWriter:
    """Writes every scalar of a record (except ``iteration``) as a TensorBoard scalar event."""

    def __init__(self, log_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir)

    def write(self, record: dict[str, Any]) -> None:
        it = record["iteration"]
        for k, v in record.items():
            if k != "iteration" and isinstance(v, (int, float)):
                self._writer.add_scalar(k, v, it)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class ConsoleWriter:
    """Logs ``eta, iter, it/s, losses, lr, time, data_time, max_mem`` in one line."""

    def __init__(self, max_iter: int):
        self.max_iter = max_iter
        self._start: tuple[float, int] | None = None

    def write(self, record: dict[str, Any]) -> None:
        it = record["iteration"]
        now = time.perf_counter()
        if self._start is None:
            self._start = (now, it)
        eta = ""
        if "time" in record:
            remaining = (self.max_iter - it - 1) * record["time"]
            eta = f"eta: {datetime.timedelta(seconds=int(remaining))}  "
        losses = "  ".join(f"{k}: {v:.4g}" for k, v in sorted(record.items())
                           if k.startswith("loss") or k == "total_loss")
        other = "  ".join(f"{k}: {record[k]:.4g}" for k in ("it/s", "time", "data_time") if k in record)
        logger.info(f"{eta}iter: {it}  {losses}  {other}  lr: {record.get('lr', float('nan')):.4g}  "
                    f"max_mem: {record.get('max_mem_mb', 0):.0f}M")

    def close(self) -> None:
        pass
