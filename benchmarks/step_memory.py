"""Peak memory of one training step, shared by the benchmarks (CUDA allocator or the process's RSS)."""
from __future__ import annotations

import os
from typing import Callable

import torch


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_step_memory_mib(step: Callable[[], None], device: str) -> float:
    """MiB that ``step()`` adds at its peak to what was allocated before it (weights, inputs).

    On CUDA: the allocator's peak. On CPU: the kernel's peak-RSS mark (VmHWM), reset first so that
    imports and model construction do not count.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _rss_bytes()
    step()
    return (_status_kib("VmHWM") * 1024 - base) / 2**20
