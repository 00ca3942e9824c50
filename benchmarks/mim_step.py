#!/usr/bin/env python
"""EVA MIM training-step throughput (teacher forward included) and mask-generator speed.

    python benchmarks/mim_step.py                         # tiny student + tiny CLIP teacher, CPU
    python benchmarks/mim_step.py --model giant --device cuda --batch 32   # EVA-g + CLIP-L/14, bf16

Prints samples/s, the model FLOPs of one step (student forward + backward = 3x forward, plus the
teacher forward; counted by torch.utils.flop_counter on a meta-device copy) and the model FLOP
utilisation MFU = achieved FLOP/s / peak (``--peak-tflops``; default: H100 dense bf16, 989).
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def build(model: str, precision: str):
    import eva_core
    from eva_core.mim import ClipTeacher, EvaMIM

    if model == "giant":
        enc = eva_core.create_model("eva_giant_patch14_mim_224", drop_path_rate=0.1)
        return EvaMIM(enc, ClipTeacher("ViT-L-14", precision=precision)), 224, (16, 105, 16)
    enc = eva_core.create_model("eva_tiny_patch16_224", img_size=64, patch_size=8, embed_dim=192, depth=4,
                                num_heads=3, num_classes=0, use_mask_token=True, use_fc_norm=False,
                                global_pool="token")
    teacher = ClipTeacher("ViT-L-14", vision_cfg=dict(image_size=64, patch_size=8, width=128, layers=2,
                                                      head_width=32), embed_dim=96, precision=precision)
    return EvaMIM(enc, teacher), 64, (8, 26, 4)


def mask_speed(grid: int, count: int, min_block: int, n: int = 2000) -> float:
    from eva_core.mim import BlockMaskGenerator

    gen = BlockMaskGenerator(grid, count, min_num_patches=min_block)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for _ in range(n):
        gen(rng)
    return n / (time.perf_counter() - t)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("tiny", "giant"), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                   help="autocast dtype of the student (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense FLOP/s of the device (TFLOP/s)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    teacher_precision = "bf16" if dtype == "fp32" and device.type == "cuda" else (dtype if dtype != "fp32" else "fp32")

    from eva_core.mim import pretraining_cost

    with torch.device("meta"):
        meta_model, image_size, (grid, count, min_block) = build(args.model, teacher_precision)
    cost = pretraining_cost(meta_model, image_size=image_size, batch_size=1)
    del meta_model

    torch.manual_seed(0)
    model, _, _ = build(args.model, teacher_precision)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05)
    from eva_core.mim import BlockMaskGenerator

    gen = BlockMaskGenerator(grid, count, min_num_patches=min_block)
    images = torch.randn(args.batch, 3, image_size, image_size, device=device)
    mask = torch.from_numpy(np.stack([gen(i).reshape(-1) for i in range(args.batch)])).to(device)
    batch = {"image": images, "mask": mask}
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = model(batch)["loss_mim"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync()
    dt = (time.perf_counter() - t) / args.iters
    samples_s = args.batch / dt
    achieved = samples_s * cost["train_step_flops"]
    res = {
        "model": args.model, "device": str(device), "dtype": dtype, "teacher_precision": teacher_precision,
        "batch": args.batch, "threads": args.threads, "step_s": dt, "samples_per_s": samples_s,
        "params": cost["params"], "teacher_params": cost["teacher_params"],
        "step_gflops_per_sample": cost["train_step_flops"] / 1e9,
        "achieved_tflops": achieved / 1e12, "peak_tflops": args.peak_tflops,
        "mfu": achieved / (args.peak_tflops * 1e12),
        "masks_per_s": mask_speed(grid, count, min_block),
        "masks_per_s_16x16_105": mask_speed(16, 105, 16),
    }
    if device.type == "cuda":
        res["max_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    for k, v in res.items():
        print(f"{k:>24}: {v:.4g}" if isinstance(v, float) else f"{k:>24}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
