#!/usr/bin/env python
"""Video EVA vs Hugging Face transformers' ``VideoMAEForVideoClassification``: clips/s and peak memory.

Both models are built at the same width, depth, heads, MLP width, frames, tubelet, patch and image
size, with random weights, in one process; each measurement alternates the two so both see the same
machine load. Reported, per implementation:

* training clips/s: forward + backward + AdamW step on a batch of random clips (median over ``--iters``);
* multi-view inference clips/s: the paper's 4 temporal clips x 3 spatial crops per video
  (``[B, 12, T, 3, S, S]``), softmax averaged over the views (ours: ``video.VideoClassifier`` in eval
  mode; VideoMAE: the 12 views flattened into the batch, the same averaging), ``no_grad``;
* peak memory of one training step (after a warm-up step, so gradients and AdamW state exist), with
  and without activation checkpointing (ours: ``set_grad_checkpointing``; VideoMAE:
  ``activation_checkpointing_enable``, non-reentrant as ours). CUDA: ``torch.cuda.max_memory_allocated``
  minus the memory allocated before the step. CPU: the peak of live tensors from the profiler's
  allocator events (``torch.profiler``, ``profile_memory=True``; torch's CPU allocator frees at once)
  minus the memory live before the step.

Ratios are ours / VideoMAE (clips/s: > 1 means ours is faster; memory: < 1 means ours uses less).

Weights are not mapped here (speed only). Numerical parity of the shared computation is
``tests/test_video_videomae_parity.py``: the whole models cannot be made equal with mapped weights,
because EVA's video encoder (as the EVA-01 release) prepends a learned CLS token that every patch
attends to and learns its position table ``[1, 1 + T*N, C]``, while VideoMAE has no CLS token and adds
a fixed sinusoidal table ``[1, T*N, C]``; the test shows that our patch embedding, blocks and head on
VideoMAE's tokens give VideoMAE's logits. VideoMAE's default tubelet is 2 (EVA's 1), so both run at
``--tubelet`` (default 2). Our attention uses torch SDPA; VideoMAE runs with ``attn_implementation``
``sdpa`` too (``--hf-attn eager`` for its reference path). The CLS token makes ours process one more
token per clip.

Examples::

    python benchmarks/video.py                               # CPU, tiny: width 192, 4 blocks, 8 x 112^2
    python benchmarks/video.py --device cuda --width 1408 --depth 40 --heads 16 --mlp-ratio 4.3637 \\
        --frames 16 --tubelet 1 --patch 14 --img-size 224 --batch 2
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

# run as a script, this file's folder comes first on sys.path and its name would shadow the video package
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--mlp-ratio", type=float, default=4.0)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--tubelet", type=int, default=2)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--classes", type=int, default=400)
    p.add_argument("--batch", type=int, default=4, help="clips per training step")
    p.add_argument("--test-batch", type=int, default=1, help="videos (x 12 views) per inference batch")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--hf-attn", default="sdpa", choices=("sdpa", "eager"))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", help="write the figures to this file")
    return p.parse_args(argv)


def build(impl: str, a: argparse.Namespace) -> torch.nn.Module:
    """Our ``VideoClassifier(EvaVideo)`` or VideoMAE at the same geometry, in train mode on the device."""
    if impl == "ours":
        from video import VideoClassifier, create_video_model

        net = create_video_model("eva_video_tiny_patch14_224_f8", img_size=a.img_size, patch_size=a.patch,
                                 num_frames=a.frames, tubelet_size=a.tubelet, embed_dim=a.width,
                                 depth=a.depth, num_heads=a.heads, mlp_ratio=a.mlp_ratio,
                                 num_classes=a.classes)
        model = VideoClassifier(net)
    else:
        import transformers

        config = transformers.VideoMAEConfig(
            image_size=a.img_size, patch_size=a.patch, num_frames=a.frames, tubelet_size=a.tubelet,
            hidden_size=a.width, num_hidden_layers=a.depth, num_attention_heads=a.heads,
            intermediate_size=int(a.width * a.mlp_ratio), qkv_bias=True, use_mean_pooling=True,
            num_labels=a.classes, attn_implementation=a.hf_attn)
        model = transformers.VideoMAEForVideoClassification(config)
    return model.to(a.device).train()


def set_checkpointing(impl: str, model: torch.nn.Module, enable: bool) -> None:
    if impl == "ours":
        model.net.set_grad_checkpointing(enable)
    elif hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x names
        if enable:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif enable:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def train_step_fn(impl: str, model: torch.nn.Module, a: argparse.Namespace) -> Callable[[], None]:
    """One training step (forward, cross entropy, backward, AdamW) on a fixed random batch."""
    g = torch.Generator().manual_seed(0)
    clips = torch.randn(a.batch, a.frames, 3, a.img_size, a.img_size, generator=g).to(a.device)
    labels = torch.randint(0, a.classes, (a.batch,), generator=g).to(a.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        if impl == "ours":
            loss = model({"video": clips, "label": labels})["loss_cls"]
        else:
            loss = F.cross_entropy(model(pixel_values=clips).logits, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def multiview_fn(impl: str, model: torch.nn.Module, a: argparse.Namespace) -> Callable[[], torch.Tensor]:
    """Scores of ``--test-batch`` videos from 4 x 3 views each (softmax averaged over the views)."""
    views = torch.randn(a.test_batch, 12, a.frames, 3, a.img_size, a.img_size,
                        generator=torch.Generator().manual_seed(1)).to(a.device)

    @torch.no_grad()
    def infer():
        if impl == "ours":
            return model(views)  # eval mode: [B, V, T, 3, S, S] -> mean of the views' softmax
        logits = model(pixel_values=views.flatten(0, 1)).logits
        return logits.softmax(-1).view(a.test_batch, 12, -1).mean(1)

    return infer


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fns: dict[str, Callable], a: argparse.Namespace) -> dict[str, float]:
    """Median seconds per call of each function, the implementations alternating call by call."""
    for _ in range(a.warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(a.iters):
        for k, fn in fns.items():
            _sync(a.device)
            t = time.perf_counter()
            fn()
            _sync(a.device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_step_mib(step: Callable[[], None], device: str) -> float:
    """MiB one call of ``step`` adds at its peak to the memory live before it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    # running sum of allocations (+) and frees (-) inside the step: its peak over what was live before
    return max(itertools.accumulate((e.nbytes() for e in events), initial=0)) / 2 ** 20


def main(argv=None) -> dict:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    impls = ("ours", "videomae")
    models = {k: build(k, a) for k in impls}
    tokens = (a.frames // a.tubelet) * (a.img_size // a.patch) ** 2
    print(f"width {a.width}, depth {a.depth}, heads {a.heads}, mlp {a.mlp_ratio}, {a.frames} frames, tubelet "
          f"{a.tubelet}, patch {a.patch}, {a.img_size} px: {tokens} patch tokens (ours + 1 CLS); device "
          f"{a.device}, {a.threads} thread(s); params ours "
          f"{sum(p.numel() for p in models['ours'].parameters()) / 1e6:.2f}M, VideoMAE "
          f"{sum(p.numel() for p in models['videomae'].parameters()) / 1e6:.2f}M")
    results: dict[str, dict] = {k: {} for k in impls}

    steps = {k: train_step_fn(k, m, a) for k, m in models.items()}
    for k, sec in timed(steps, a).items():
        results[k]["train_clips_per_s"] = a.batch / sec
    for k, m in models.items():
        m.eval()
    infers = {k: multiview_fn(k, m, a) for k, m in models.items()}
    for k, sec in timed(infers, a).items():
        results[k]["multiview_clips_per_s"] = a.test_batch * 12 / sec  # clips = views
        results[k]["multiview_videos_per_s"] = a.test_batch / sec
    for k, m in models.items():
        m.train()
        for ckpt in (False, True):
            set_checkpointing(k, m, ckpt)
            steps[k]()  # state of the checkpointing setting's step (nothing new: AdamW state exists)
            results[k][f"peak_step_mib_ckpt_{'on' if ckpt else 'off'}"] = peak_step_mib(steps[k], a.device)
        set_checkpointing(k, m, False)

    print(f"{'':32s}{'ours':>12s}{'VideoMAE':>12s}{'ours/VideoMAE':>16s}")
    for key in ("train_clips_per_s", "multiview_clips_per_s", "multiview_videos_per_s",
                "peak_step_mib_ckpt_off", "peak_step_mib_ckpt_on"):
        o, h = results["ours"][key], results["videomae"][key]
        print(f"{key:32s}{o:12.2f}{h:12.2f}{o / h:16.3f}")
    for k in impls:
        r = results[k]
        r["checkpointing_memory_ratio"] = r["peak_step_mib_ckpt_on"] / r["peak_step_mib_ckpt_off"]
        print(f"{k}: activation checkpointing keeps {r['checkpointing_memory_ratio']:.3f} of the step's peak")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
