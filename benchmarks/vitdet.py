#!/usr/bin/env python
"""ViTDet-EVA backbone training step: our ``ViT`` vs transformers' ``VitDetBackbone`` (same configuration).

Only the backbone part of the issue's benchmark exists so far (RPN / RoI heads / post-processing
come with the detector). Each size runs forward + backward of the last feature map on random images
with both implementations, timed in alternating steps in one process (both see the same machine
load), and reports ms per image (median) and the peak memory of one step beyond weights and
gradients:

* CUDA: ``torch.cuda.max_memory_allocated`` minus the memory held before the step;
* CPU: each case runs in a fresh subprocess that resets the kernel's peak-RSS mark
  (``/proc/self/clear_refs``) before the step and reports ``VmHWM`` minus the RSS at that point.

Examples::

    python benchmarks/vitdet.py                                    # CPU: tiny at 256, window 8
    python benchmarks/vitdet.py --device cuda --sizes giant --img-size 1024 --window 16 --ckpt
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0),
    "base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "giant": dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=6144 / 1408),
}


def global_blocks(depth: int) -> list[int]:
    """ViTDet's global blocks: the last of every quarter (EVA-g: 3, 7, ..., 39)."""
    step = depth // 4 if depth < 40 else 4
    return list(range(step - 1, depth, step))


def build(impl: str, size: str, img_size: int, window: int, ckpt: bool) -> torch.nn.Module:
    s = SIZES[size]
    windowed = [i for i in range(s["depth"]) if i not in global_blocks(s["depth"])]
    if impl == "ours":
        from vitdet_eva import ViT

        return ViT(img_size=img_size, patch_size=16, window_size=window, window_block_indexes=windowed,
                   use_rel_pos=True, pretrain_img_size=224, use_act_checkpoint=ckpt, **s)
    from transformers import VitDetBackbone, VitDetConfig

    cfg = VitDetConfig(hidden_size=s["embed_dim"], num_hidden_layers=s["depth"],
                       num_attention_heads=s["num_heads"], mlp_ratio=4, image_size=img_size,
                       pretrain_image_size=224, patch_size=16, window_size=window,
                       window_block_indices=windowed, use_relative_position_embeddings=True,
                       out_features=[f"stage{s['depth']}"])
    # the config validates mlp_ratio as an int; EVA-g's 6144/1408 is not one, and the model only
    # computes int(dim * mlp_ratio), so the attribute is set past the validator
    object.__setattr__(cfg, "mlp_ratio", s["mlp_ratio"])
    model = VitDetBackbone(cfg)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def last_feature(impl: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)["last_feat"] if impl == "ours" else model(x).feature_maps[-1]


def _setup(impl: str, size: str, img_size: int, window: int, ckpt: bool, batch: int, device: str):
    torch.manual_seed(0)
    dev = torch.device(device)
    model = build(impl, size, img_size, window, ckpt).to(dev).train()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # gradients exist before measuring: only the step's memory counts
    x = torch.randn(batch, 3, img_size, img_size, device=dev)

    def step():
        last_feature(impl, model, x).float().square().mean().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return step


def peak_step_memory(impl: str, size: str, img_size: int, window: int, ckpt: bool, batch: int,
                     device: str) -> float:
    """Peak memory (MiB) of one training step beyond the weights and gradients."""
    step = _setup(impl, size, img_size, window, ckpt, batch, device)
    return peak_step_memory_mib(step, device)


def paired_ms_per_image(size: str, img_size: int, window: int, ckpt: bool, batch: int, iters: int,
                        device: str) -> dict[str, float]:
    """Median ms per image of ours and transformers', timed in alternating steps."""
    steps = {impl: _setup(impl, size, img_size, window, ckpt, batch, device) for impl in ("ours", "hf")}
    times: dict[str, list[float]] = {impl: [] for impl in steps}
    for step in steps.values():
        step()  # warm-up
    for i in range(iters):
        for impl in (("ours", "hf") if i % 2 == 0 else ("hf", "ours")):
            t0 = time.perf_counter()
            steps[impl]()
            times[impl].append(time.perf_counter() - t0)
    return {impl: 1000 * statistics.median(t) / batch for impl, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny"], choices=sorted(SIZES))
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--ckpt", action="store_true", help="activation checkpointing in both")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one memory case -> JSON
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = dict(img_size=args.img_size, window=args.window, ckpt=args.ckpt, batch=args.batch,
                 device=args.device)
    if args.worker:
        impl, size = args.worker.split(",")
        print(json.dumps({"peak_mib": peak_step_memory(impl, size, **shape)}))
        return 0

    def memory(impl: str, size: str) -> float:
        if args.device != "cpu":
            return peak_step_memory(impl, size, **shape)
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"{impl},{size}",
               "--img-size", str(args.img_size), "--window", str(args.window), "--batch", str(args.batch),
               "--threads", str(args.threads), "--device", "cpu"] + (["--ckpt"] if args.ckpt else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])["peak_mib"]

    print(f"device={args.device} img={args.img_size} window={args.window} batch={args.batch} "
          f"ckpt={args.ckpt} threads={args.threads} iters={args.iters} "
          "(backbone forward+backward, median of alternating steps)")
    print(f"{'size':6} {'ours ms/img':>12} {'hf ms/img':>10} {'hf/ours':>8} {'ours MiB':>9} {'hf MiB':>8}")
    for size in args.sizes:
        ms = paired_ms_per_image(size, iters=args.iters, **shape)
        mem = {impl: memory(impl, size) for impl in ("ours", "hf")}
        print(f"{size:6} {ms['ours']:12.1f} {ms['hf']:10.1f} {ms['hf'] / ms['ours']:8.2f} "
              f"{mem['ours']:9.1f} {mem['hf']:8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
