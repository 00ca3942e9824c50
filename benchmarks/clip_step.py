#!/usr/bin/env python
"""EVA-CLIP throughput against open_clip's own model of the same size, in the same run.

    python benchmarks/clip_step.py                            # toy size (the main job's), CPU
    python benchmarks/clip_step.py --size small --batch 32    # ViT-S/16-sized vision tower, 224 px
    python benchmarks/clip_step.py --curation-entries 500000  # MetaCLIP's metadata size

Ours is :class:`clip.model.EvaCLIP`; the peer is the model ``open_clip.create_model`` builds from the
same architecture (``clip.model.register_open_clip_config``: open_clip's ``CustomTextCLIP`` with a timm
``Eva`` trunk and open_clip's text transformer), loaded with our weights (``to_open_clip_state_dict``)
so both compute the same function; the run checks their image embeddings agree before timing.

Measured, per model, after ``--warmup`` untimed iterations, the median of ``--iters``:

- training samples/s: forward (both towers), open_clip's ``ClipLoss``, backward, AdamW step;
- zero-shot evaluation images/s: eval mode, ``no_grad``, normalised image embeddings times the class
  weights (built once, not timed; ``--classes`` classes);

then MetaCLIP curation throughput (texts matched per second, Aho-Corasick vs the naive definition) by
running ``benchmarks/metaclip_match.py`` (``--curation-entries`` / ``--curation-texts``). Ratios are
ours / open_clip's (> 1: ours is faster).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from open_clip.loss import ClipLoss  # noqa: E402

from clip.model import create_eva_clip, register_open_clip_config, to_open_clip_state_dict  # noqa: E402

SIZES = {
    # the toy EVA-CLIP of the main job (clip/toy_stage.py)
    "toy": dict(embed_dim=32,
                vision_cfg=dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0),
                text_cfg=dict(context_length=24, vocab_size=49408, width=32, heads=2, layers=2)),
    # a ViT-S/16-sized vision tower with a 6-layer text tower
    "small": dict(embed_dim=256,
                  vision_cfg=dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6,
                                  mlp_ratio=4.0),
                  text_cfg=dict(context_length=77, vocab_size=49408, width=256, heads=4, layers=6)),
}


def build_pair(size: str, device: str):
    """(ours, open_clip's twin with our weights)."""
    torch.manual_seed(0)
    ours = create_eva_clip("eva_clip_tiny", **SIZES[size])
    name = f"EvaCLIP-bench-{size}"
    with tempfile.TemporaryDirectory() as tmp:
        register_open_clip_config(name, ours, tmp)
        theirs = open_clip.create_model(name, pretrained=None)
    theirs.load_state_dict(to_open_clip_state_dict(ours), strict=True)
    return ours.to(device), theirs.to(device)


def make_batch(model, batch: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    img = int(model.vision_cfg["img_size"])
    text = torch.randint(1, 49406, (batch, model.context_length), generator=g)
    text[:, 0], text[:, -1] = 49406, 49407  # SOT ... EOT (the highest id: the pooled position)
    return {"image": torch.randn(batch, 3, img, img, generator=g).to(device), "text": text.to(device)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, iters: int, warmup: int, device: str) -> float:
    """Median seconds of one call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step_fn(model, batch, ours: bool):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = ClipLoss()

    def step():
        if ours:
            loss = model(batch)["loss_clip"]
        else:
            # open_clip returns (image features, text features, exp(logit_scale)) normalised
            image_features, text_features, scale = model(batch["image"], batch["text"])[:3]
            loss = loss_fn(image_features, text_features, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def zero_shot_fn(model, batch, classes: int, embed_dim: int):
    model.eval()
    g = torch.Generator().manual_seed(2)
    weights = F.normalize(torch.randn(classes, embed_dim, generator=g), dim=-1).t().to(batch["image"].device)

    @torch.no_grad()
    def run():
        return 100.0 * model.encode_image(batch["image"], normalize=True) @ weights
    return run


def curation_report(entries: int, texts: int) -> dict:
    path = Path(__file__).resolve().parent / "metaclip_match.py"
    spec = importlib.util.spec_from_file_location("metaclip_match", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(["--entries", str(entries), "--vocab", str(max(entries, 1000)), "--texts", str(texts),
                        "--naive-texts", "10"])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="toy")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--classes", type=int, default=1000, help="zero-shot classes")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--curation-entries", type=int, default=50_000)
    p.add_argument("--curation-texts", type=int, default=5_000)
    p.add_argument("--no-curation", action="store_true")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    ours, theirs = build_pair(args.size, args.device)
    batch = make_batch(ours, args.batch, args.device)
    with torch.no_grad():
        diff = (ours.eval().encode_image(batch["image"])
                - theirs.eval().encode_image(batch["image"])).abs().max()
    if diff > 1e-4:
        raise SystemExit(f"ours and open_clip's twin disagree on image embeddings (max |diff| {diff:.2e})")
    report = {"size": args.size, "device": args.device, "batch": args.batch, "threads": args.threads,
              "params": sum(q.numel() for q in ours.parameters()), "embedding_max_abs_diff": float(diff)}
    dim = ours.embed_dim
    for what, make in (("train_samples_per_s", lambda m, o: train_step_fn(m, batch, o)),
                       ("zero_shot_images_per_s", lambda m, o: zero_shot_fn(m, batch, args.classes, dim))):
        rates = {}
        for name, model, is_ours in (("ours", ours, True), ("open_clip", theirs, False)):
            rates[name] = args.batch / timed(make(model, is_ours), args.iters, args.warmup, args.device)
        report[what] = {k: round(v, 2) for k, v in rates.items()}
        report[what]["ratio"] = round(rates["ours"] / rates["open_clip"], 3)
        print(f"{what:>24}: ours {rates['ours']:9.1f} | open_clip {rates['open_clip']:9.1f} | "
              f"ratio {rates['ours'] / rates['open_clip']:.2f}")
    if not args.no_curation:
        report["curation"] = curation_report(args.curation_entries, args.curation_texts)
    print(json.dumps(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
