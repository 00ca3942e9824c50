#!/usr/bin/env python
"""Multi-scale deformable attention: ours vs Hugging Face transformers' pure-PyTorch function.

The default size is that of a Mask2Former pixel-decoder layer on a 512x512 image: three levels at
strides 8, 16, 32 (64x64, 32x32, 16x16), every position a query, d_model 256, 8 heads, 4 points,
batch 2. Each step is forward + backward with respect to the value, the sampling locations and the
attention weights. The two functions alternate step by step in one process (same machine load);
the medians over ``--iters`` steps and their ratio are printed. On CUDA the ``torch.compile``'d
fast path is timed as well (``--no-compiled`` leaves it out).

Examples::

    python benchmarks/msda.py                       # CPU, Mask2Former-like size
    python benchmarks/msda.py --device cuda --batch 8 --img-size 896
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from mask2former_eva.ms_deform_attn import (compiled_multi_scale_deformable_attention, fast_path_available,
                                            multi_scale_deformable_attention)
from transformers.models.mask2former.modeling_mask2former import \
    multi_scale_deformable_attention as hf_multi_scale_deformable_attention


def make_inputs(args: argparse.Namespace, device: torch.device) -> tuple[list, list[tuple[int, int]]]:
    shapes = [(args.img_size // s, args.img_size // s) for s in args.strides]
    seq = sum(h * w for h, w in shapes)
    head_dim = args.d_model // args.heads
    g = torch.Generator().manual_seed(0)
    value = torch.randn(args.batch, seq, args.heads, head_dim, generator=g)
    locations = torch.rand(args.batch, seq, args.heads, len(shapes), args.points, 2, generator=g)
    weights = torch.rand(args.batch, seq, args.heads, len(shapes) * args.points, generator=g).softmax(-1)
    weights = weights.view(args.batch, seq, args.heads, len(shapes), args.points)
    return [t.to(device).requires_grad_(True) for t in (value, locations, weights)], shapes


def step(fn, inputs: list, shapes: list[tuple[int, int]], device: torch.device) -> float:
    for t in inputs:
        t.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(*inputs[:1], shapes, *inputs[1:]).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--strides", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-compiled", action="store_true", help="do not time the torch.compile'd path")
    args = parser.parse_args()
    device = torch.device(args.device)
    inputs, shapes = make_inputs(args, device)
    impls = {"ours": multi_scale_deformable_attention, "transformers": hf_multi_scale_deformable_attention}
    if fast_path_available(device) and not args.no_compiled:
        impls["ours_compiled"] = compiled_multi_scale_deformable_attention()
    times: dict[str, list[float]] = {name: [] for name in impls}
    for i in range(args.warmup + args.iters):
        for name, fn in impls.items():
            t = step(fn, inputs, shapes, device)
            if i >= args.warmup:
                times[name].append(t)
    seq = sum(h * w for h, w in shapes)
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch}, levels {shapes}, "
          f"queries {seq}, d_model {args.d_model}, heads {args.heads}, points {args.points}")
    ref = statistics.median(times["transformers"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:>14}: forward+backward {med * 1e3:8.1f} ms (median of {len(ts)}), "
              f"transformers / {name} = {ref / med:.2f}x")


if __name__ == "__main__":
    main()
