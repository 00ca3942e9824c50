#!/usr/bin/env python
"""EVA MIM training-step throughput (teacher forward included) and mask-generator speed.

    python benchmarks/mim_step.py                         # tiny student + tiny CLIP teacher, CPU
    python benchmarks/mim_step.py --model giant --device cuda --batch 32   # EVA-g + CLIP-L/14, bf16

Peer: the same MIM step (same teacher, masks, head and loss) with timm's ``Eva`` as the student
encoder in the identical configuration (masked patch embeddings replaced by a mask token before
the position embedding, as in ours); both run alternately in one process and the ratio
ours / timm is printed.

Prints samples/s, the model FLOPs of one step (student forward + backward = 3x forward, plus the
teacher forward; counted by torch.utils.flop_counter on a meta-device copy) and the model FLOP
utilisation MFU = achieved FLOP/s / peak (``--peak-tflops``; default: H100 dense bf16, 989).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


GIANT = dict(img_size=224, patch_size=14, embed_dim=1408, depth=40, num_heads=16, mlp_ratio=6144 / 1408)
TINY = dict(img_size=64, patch_size=8, embed_dim=192, depth=4, num_heads=3, mlp_ratio=4.0)


class TimmMaskedStudent(torch.nn.Module):
    """timm's ``Eva`` (EVA-01 configuration) with EVA's mask-token input, as a peer student encoder."""

    def __init__(self, arch: dict):
        super().__init__()
        from timm.models.eva import Eva

        self.eva = Eva(num_classes=0, global_pool="token", use_fc_norm=False, qkv_fused=True, qkv_bias=True,
                       use_abs_pos_emb=True, use_rot_pos_emb=False, drop_path_rate=0.1, **arch)
        self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, arch["embed_dim"]))
        self.patch_embed, self.norm = self.eva.patch_embed, self.eva.norm
        self.num_features, self.num_prefix_tokens = self.eva.num_features, self.eva.num_prefix_tokens

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.eva.patch_embed(x)
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x, rope = self.eva._pos_embed(x)
        x = self.eva.norm_pre(x)
        for blk in self.eva.blocks:
            x = blk(x, rope=rope)
        return self.eva.norm(x)


def build(model: str, precision: str, impl: str = "ours"):
    """(EvaMIM, image size, (grid, masked count, min block)) for the tiny or the paper's setup."""
    import eva_core
    from eva_core.mim import ClipTeacher, EvaMIM

    arch = GIANT if model == "giant" else TINY
    if impl == "timm":
        enc = TimmMaskedStudent(arch)
    else:
        enc = eva_core.create_model("eva_giant_patch14_mim_224", drop_path_rate=0.1, **arch)
    if model == "giant":
        return EvaMIM(enc, ClipTeacher("ViT-L-14", precision=precision)), 224, (16, 105, 16)
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
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="peak dense FLOP/s of the device (TFLOP/s)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--no-peer", action="store_true", help="skip timm's Eva peer (e.g. to save GPU memory)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    teacher_precision = ("bf16" if dtype == "fp32" and device.type == "cuda"
                         else (dtype if dtype != "fp32" else "fp32"))

    from eva_core.mim import pretraining_cost

    with torch.device("meta"):
        meta_model, image_size, (grid, count, min_block) = build(args.model, teacher_precision)
    cost = pretraining_cost(meta_model, image_size=image_size, batch_size=1)
    del meta_model

    from eva_core.mim import BlockMaskGenerator

    gen = BlockMaskGenerator(grid, count, min_num_patches=min_block)
    images = torch.randn(args.batch, 3, image_size, image_size, device=device)
    mask = torch.from_numpy(np.stack([gen(i).reshape(-1) for i in range(args.batch)])).to(device)
    batch = {"image": images, "mask": mask}
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)

    def make_step(impl):
        torch.manual_seed(0)
        model, _, _ = build(args.model, teacher_precision, impl)
        model.to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05)

        def step():
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = model(batch)["loss_mim"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(step):
        sync()
        t = time.perf_counter()
        step()
        sync()
        return time.perf_counter() - t

    impls = ["ours"] if args.no_peer else ["ours", "timm"]
    steps = {impl: make_step(impl) for impl in impls}  # (giant: both fit on one 80 GB GPU in bf16)
    for _ in range(args.warmup):
        for impl in impls:
            steps[impl]()
    times = {impl: [] for impl in impls}
    for _ in range(args.iters):  # alternate so both see the same machine load
        for impl in impls:
            times[impl].append(timed(steps[impl]))
    dt = statistics.median(times["ours"])
    samples_s = args.batch / dt
    achieved = samples_s * cost["train_step_flops"]
    res = {
        "model": args.model, "device": str(device), "dtype": dtype, "teacher_precision": teacher_precision,
        "batch": args.batch, "threads": args.threads, "step_s": dt, "samples_per_s": samples_s,
        "params": cost["params"], "teacher_params": cost["teacher_params"],
        "step_gflops_per_sample": cost["train_step_flops"] / 1e9,
        "achieved_tflops": achieved / 1e12, "peak_tflops": args.peak_tflops,
        "mfu": achieved / (args.peak_tflops * 1e12),
        "timm_samples_per_s": None if args.no_peer else args.batch / statistics.median(times["timm"]),
        "masks_per_s": mask_speed(grid, count, min_block),
        "masks_per_s_16x16_105": mask_speed(16, 105, 16),
    }
    if not args.no_peer:
        res["ratio_vs_timm"] = res["samples_per_s"] / res["timm_samples_per_s"]
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
