#!/usr/bin/env python
"""Training-step throughput and peak memory: our EVA encoder vs timm's ``Eva`` (same configuration).

Each (size, activation checkpointing) case runs forward + backward on random images with both
implementations and reports images/s (median over ``--iters`` steps, ours and timm's steps
alternating in one process so both see the same machine load) and peak memory of one step:

* CUDA: ``torch.cuda.max_memory_allocated`` minus the memory held before the step (weights, grads);
* CPU: each case runs in a fresh subprocess that resets the kernel's peak-RSS mark
  (``/proc/self/clear_refs``) right before the first step and reports ``VmHWM`` minus the RSS at
  that point (weights and zeroed gradients already allocated): the step's activation + workspace
  memory.

Examples::

    python benchmarks/encoder.py                                   # CPU defaults: tiny + small @ 112
    python benchmarks/encoder.py --device cuda --sizes base large giant --img-size 224 --batch 32
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from step_memory import peak_step_memory_mib  # benchmarks/ is the script's folder

SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0),
    "small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "giant": dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=6144 / 1408),
}


def build(impl: str, size: str, img_size: int, patch_size: int) -> torch.nn.Module:
    cfg = dict(img_size=img_size, patch_size=patch_size, num_classes=1000, **SIZES[size])
    if impl == "ours":
        import eva_core

        return eva_core.create_model("eva_base_patch16_224", **cfg)
    from timm.models.eva import Eva

    # timm's eva_giant_patch14_224 recipe: fused qkv with q/v bias, CLS + abs pos, no rope
    return Eva(qkv_fused=True, qkv_bias=True, use_abs_pos_emb=True, use_rot_pos_emb=False, **cfg)


def _setup(impl: str, size: str, grad_ckpt: bool, img_size: int, patch_size: int, batch: int, device: str):
    torch.manual_seed(0)
    dev = torch.device(device)
    model = build(impl, size, img_size, patch_size).to(dev).train()
    model.set_grad_checkpointing(grad_ckpt)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # gradients exist before measuring: only the step's memory counts
    x = torch.randn(batch, 3, img_size, img_size, device=dev)

    def step():
        model(x).float().logsumexp(-1).mean().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return model, step


def peak_step_memory(impl: str, size: str, grad_ckpt: bool, img_size: int, patch_size: int, batch: int,
                     device: str) -> float:
    """Peak memory (MiB) of one training step beyond the weights and gradients."""
    model, step = _setup(impl, size, grad_ckpt, img_size, patch_size, batch, device)
    return peak_step_memory_mib(step, device)


def paired_throughput(size: str, grad_ckpt: bool, img_size: int, patch_size: int, batch: int, iters: int,
                      device: str) -> dict[str, float]:
    """Images/s of ours and timm's, timed in alternating steps so both see the same machine load."""
    steps = {impl: _setup(impl, size, grad_ckpt, img_size, patch_size, batch, device)[1]
             for impl in ("ours", "timm")}
    times: dict[str, list[float]] = {"ours": [], "timm": []}
    for impl in steps:
        steps[impl]()  # warm-up
    for i in range(iters):
        order = ("ours", "timm") if i % 2 == 0 else ("timm", "ours")
        for impl in order:
            t0 = time.perf_counter()
            steps[impl]()
            times[impl].append(time.perf_counter() - t0)
    return {impl: batch / statistics.median(t) for impl, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=sorted(SIZES))
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one memory case -> JSON
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = dict(img_size=args.img_size, patch_size=args.patch_size, batch=args.batch, device=args.device)
    if args.worker:
        impl, size, ck = args.worker.split(",")
        print(json.dumps({"peak_mib": peak_step_memory(impl, size, ck == "1", **shape)}))
        return 0

    def memory(impl: str, size: str, ck: bool) -> float:
        if args.device != "cpu":
            return peak_step_memory(impl, size, ck, **shape)
        # a fresh process per case: ru_maxrss only ever grows within a process
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"{impl},{size},{int(ck)}",
               "--img-size", str(args.img_size), "--patch-size", str(args.patch_size),
               "--batch", str(args.batch), "--threads", str(args.threads), "--device", "cpu"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])["peak_mib"]

    print(f"device={args.device} img={args.img_size} patch={args.patch_size} batch={args.batch} "
          f"threads={args.threads} iters={args.iters} (forward+backward, median of alternating steps)")
    print(f"{'size':6} {'ckpt':5} {'ours img/s':>11} {'timm img/s':>11} {'ratio':>6} "
          f"{'ours MiB':>9} {'timm MiB':>9}")
    mem = {}
    for size in args.sizes:
        for ck in (False, True):
            tput = paired_throughput(size, ck, iters=args.iters, **shape)
            mem[(size, ck)] = {impl: memory(impl, size, ck) for impl in ("ours", "timm")}
            m = mem[(size, ck)]
            print(f"{size:6} {str(ck):5} {tput['ours']:11.2f} {tput['timm']:11.2f} "
                  f"{tput['ours'] / tput['timm']:6.2f} {m['ours']:9.1f} {m['timm']:9.1f}", flush=True)
    for size in args.sizes:
        for impl in ("ours", "timm"):
            full, ck = mem[(size, False)][impl], mem[(size, True)][impl]
            print(f"{size} {impl}: activation checkpointing cuts step peak memory by "
                  f"{100 * (1 - ck / full):.0f}% ({full:.0f} -> {ck:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
