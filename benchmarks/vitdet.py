#!/usr/bin/env python
"""ViTDet-EVA timing: backbone vs transformers' ``VitDetBackbone``, the detector's parts, soft-NMS.

Three tables, each measured in one process (all cases see the same machine load):

1. **Backbone** training step (forward + backward of the last feature map) of our ``ViT`` against
   transformers' ``VitDetBackbone`` at the same configuration, timed in alternating steps; ms per image
   (median) and the peak memory of one step beyond weights and gradients:

   * CUDA: ``torch.cuda.max_memory_allocated`` minus the memory held before the step;
   * CPU: each case runs in a fresh subprocess that resets the kernel's peak-RSS mark
     (``/proc/self/clear_refs``) before the step and reports ``VmHWM`` minus the RSS at that point.

2. **Detector breakdown** (``--detector``): the whole Cascade Mask R-CNN (``configs/common/models``'s
   tree with the size's backbone) on random images with random boxes and masks. Training step: forward
   of backbone / RPN / RoI heads (3 stages + mask) and the backward of the summed losses; inference:
   backbone / RPN / RoI heads (boxes, NMS, masks) / post-processing (rescale + mask paste). ms per image
   (median over ``--iters``), each part's share, and the peak memory of a training step and of an
   inference pass (same measurement as above, in-process).

3. **Soft-NMS** (``--detector``): ``batched_soft_nms`` (vectorised over classes) against the per-box
   reference loop ``soft_nms_per_box`` on the same random detections (clustered boxes, many classes),
   with the result checked equal; and torchvision's ``batched_nms`` for scale.

Examples::

    python benchmarks/vitdet.py                                    # CPU: tiny at 256, window 8
    python benchmarks/vitdet.py --detector --img-size 256 --window 8   # + breakdown and soft-NMS
    python benchmarks/vitdet.py --device cuda --sizes giant --img-size 1024 --window 16 --ckpt --detector
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


# ---------------------------------------------------------------------------------------------- detector
MODEL_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "ViTDet-EVA",
                            "configs", "common", "models", "cascade_mask_rcnn_vitdet.py")


def build_detector(size: str, img_size: int, window: int, ckpt: bool, num_classes: int) -> torch.nn.Module:
    """The ViTDet-EVA Cascade Mask R-CNN of ``configs/common/models`` with the size's backbone."""
    from eva_core.config import LazyConfig, instantiate

    s = SIZES[size]
    cfg = LazyConfig.load(MODEL_CONFIG)
    net = cfg.model.backbone.net
    net.update(embed_dim=s["embed_dim"], depth=s["depth"], num_heads=s["num_heads"], mlp_ratio=s["mlp_ratio"],
               img_size=img_size, window_size=window, use_act_checkpoint=ckpt, drop_path_rate=0.0,
               window_block_indexes=[i for i in range(s["depth"]) if i not in global_blocks(s["depth"])])
    cfg.model.backbone.square_pad = img_size
    cfg.model.roi_heads.num_classes = num_classes
    return instantiate(cfg.model)


def detector_inputs(batch: int, img_size: int, num_classes: int, objects: int = 8) -> list[dict]:
    """Random images with ``objects`` random boxes each (their masks fill the boxes)."""
    g = torch.Generator().manual_seed(0)
    inputs = []
    for _ in range(batch):
        xy = torch.rand(objects, 2, generator=g) * img_size * 0.7
        wh = img_size * (0.05 + torch.rand(objects, 2, generator=g) * 0.25)
        boxes = torch.cat([xy, (xy + wh).clamp(max=img_size)], dim=1).round()
        masks = torch.zeros(objects, img_size, img_size, dtype=torch.bool)
        for m, b in zip(masks, boxes.long()):
            m[b[1]:b[3], b[0]:b[2]] = True
        image = torch.randint(0, 256, (3, img_size, img_size), generator=g, dtype=torch.uint8)
        classes = torch.randint(0, num_classes, (objects,), generator=g)
        inputs.append({"image": image, "height": img_size, "width": img_size,
                       "instances": {"gt_boxes": boxes, "gt_classes": classes, "gt_masks": masks}})
    return inputs


def _timed(parts: dict, name: str, device: str, fn, *args):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(*args)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0
    return out


def detector_train_step(model, inputs, device: str) -> dict[str, float]:
    """One training step, seconds per part: backbone, rpn, roi_heads (forward) and backward."""
    parts: dict[str, float] = {}
    images = model.preprocess_image(inputs)
    gt = model._gt_instances(inputs, images)
    features = _timed(parts, "backbone", device, model.backbone, images.tensor)
    proposals, rpn_losses = _timed(parts, "rpn", device, model.proposal_generator, images, features, gt)
    _, roi_losses = _timed(parts, "roi_heads", device, model.roi_heads, images, features, proposals, gt)
    loss = sum(rpn_losses.values()) + sum(roi_losses.values())
    _timed(parts, "backward", device, loss.backward)
    return parts


@torch.no_grad()
def detector_inference(model, inputs, device: str) -> dict[str, float]:
    """One inference pass, seconds per part: backbone, rpn, roi_heads and postprocess."""
    parts: dict[str, float] = {}
    images = model.preprocess_image(inputs)
    features = _timed(parts, "backbone", device, model.backbone, images.tensor)
    proposals, _ = _timed(parts, "rpn", device, model.proposal_generator, images, features, None)
    results, _ = _timed(parts, "roi_heads", device, model.roi_heads, images, features, proposals, None)
    _timed(parts, "postprocess", device, model._postprocess, results, inputs, images.image_sizes)
    return parts


def detector_breakdown(size: str, img_size: int, window: int, ckpt: bool, batch: int, iters: int, device: str,
                       num_classes: int = 80) -> dict:
    """Median ms per image of each part (training step and inference) and their peak memory (MiB)."""
    torch.manual_seed(0)
    dev = torch.device(device)
    model = build_detector(size, img_size, window, ckpt, num_classes).to(dev)
    inputs = detector_inputs(batch, img_size, num_classes)
    for x in inputs:
        x["instances"] = {k: v.to(dev) for k, v in x["instances"].items()}
    model.train()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    train = [detector_train_step(model, inputs, device) for _ in range(iters + 1)][1:]  # first: warm-up
    train_mib = peak_step_memory_mib(lambda: detector_train_step(model, inputs, device), device)
    model.eval()
    infer = [detector_inference(model, inputs, device) for _ in range(iters + 1)][1:]
    infer_mib = peak_step_memory_mib(lambda: detector_inference(model, inputs, device), device)
    med = {name: {k: 1000 * statistics.median(r[k] for r in runs) / batch for k in runs[0]}
           for name, runs in (("train", train), ("inference", infer))}
    return {"ms_per_image": med, "peak_mib": {"train": train_mib, "inference": infer_mib}}


def soft_nms_timing(num_boxes: int, num_classes: int, iters: int, device: str) -> dict[str, float]:
    """ms of ``batched_soft_nms``, the per-box reference and torchvision's ``batched_nms`` (linear, 0.6)."""
    from torchvision.ops import batched_nms
    from vitdet_eva.soft_nms import batched_soft_nms, soft_nms_per_box

    g = torch.Generator().manual_seed(0)
    centres = torch.rand(num_boxes // 20 + 1, 2, generator=g) * 800
    c = centres[torch.randint(0, len(centres), (num_boxes,), generator=g)]
    c = c + torch.randn(num_boxes, 2, generator=g) * 8
    wh = 20 + torch.rand(num_boxes, 2, generator=g) * 60
    boxes = torch.cat([c - wh / 2, c + wh / 2], dim=1).to(device)
    scores = torch.rand(num_boxes, generator=g).to(device)
    idxs = torch.randint(0, num_classes, (num_boxes,), generator=g).to(device)
    args = (boxes, scores, idxs, "linear", 0.6, 0.5, 1e-3)
    times = {"vectorised": [], "per_box": [], "torchvision_nms": []}
    for _ in range(iters):
        keep, new = _timed(t := {}, "x", device, batched_soft_nms, *args)
        times["vectorised"].append(t["x"])
        ref_keep, ref_new = _timed(t := {}, "x", device, soft_nms_per_box, *args)
        times["per_box"].append(t["x"])
        _timed(t := {}, "x", device, batched_nms, boxes, scores, idxs, 0.6)
        times["torchvision_nms"].append(t["x"])
    if keep.tolist() != ref_keep.tolist() or not torch.allclose(new, ref_new, atol=1e-6):
        raise RuntimeError("batched_soft_nms and soft_nms_per_box disagree")
    return {k: 1000 * statistics.median(v) for k, v in times.items()} | {"kept": len(keep)}


def print_detector_tables(args, shape: dict) -> None:
    print(f"\ndetector (Cascade Mask R-CNN, 80 classes, 8 objects/image) device={args.device} "
          f"img={args.img_size} batch={args.batch}: ms per image, median of {args.iters}")
    for size in args.sizes:
        r = detector_breakdown(size, iters=args.iters, **shape)
        for mode, parts in r["ms_per_image"].items():
            total = sum(parts.values())
            cells = "  ".join(f"{k} {v:8.1f} ({100 * v / total:4.1f}%)" for k, v in parts.items())
            print(f"{size:6} {mode:9} total {total:8.1f}  {cells}  peak {r['peak_mib'][mode]:.0f} MiB",
                  flush=True)
    print("\nsoft-NMS (linear, IoU 0.6, min score 1e-3): ms per call, median")
    print(f"{'boxes':>6} {'classes':>7} {'vectorised':>10} {'per-box':>9} {'per-box/vec':>11} {'tv nms':>7} "
          f"{'kept':>5}")
    for n, k in ((300, 10), (1000, 80), (3000, 80)):
        t = soft_nms_timing(n, k, iters=3, device=args.device)
        ratio = t["per_box"] / t["vectorised"]
        print(f"{n:6d} {k:7d} {t['vectorised']:10.2f} {t['per_box']:9.1f} {ratio:11.1f} "
              f"{t['torchvision_nms']:7.2f} {t['kept']:5d}", flush=True)


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
    p.add_argument("--detector", action="store_true", help="also the detector breakdown and soft-NMS tables")
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
    if args.detector:
        print_detector_tables(args, shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())
