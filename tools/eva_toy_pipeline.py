#!/usr/bin/env python
"""EVA end to end on the toy world, on CPU: data -> teacher -> MIM pre-training -> linear probe.

1. Toy world: the colour ImageFolder of ``eva_core.data.toy_world`` (``make_imagefolder(...,
   label="color")``: one random shape per image, class = its colour, 8 classes).
2. Teacher: a tiny eva_core classifier trained supervised on those labels (stands in for CLIP).
3. MIM: ``configs/pretrain/toy.py`` through ``Trainer.from_config``: a tiny EVA student regresses
   the frozen teacher's patch features at block-masked positions (negative cosine).
4. Linear probe (logistic regression on frozen features) of the MIM encoder, of the same
   encoder at random init, and of the teacher.

Writes ``results.json``, ``loss_curve.png`` and the MIM run (metrics, checkpoint) under ``--out``::

    python tools/eva_toy_pipeline.py --out output/eva_toy_pipeline          # about 2-4 minutes
    python tools/eva_toy_pipeline.py --out /tmp/toy --fast                  # the test's setting
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

FULL = dict(train_per_class=100, val_per_class=25, teacher_steps=300, mim_steps=300)
FAST = dict(train_per_class=40, val_per_class=15, teacher_steps=150, mim_steps=200)


# ----------------------------------------------------------------------------- 1. toy world
def load_split(root: str, image_size: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Whole split as tensors (eval transform, CLIP normalisation) and the class names."""
    from eva_core.data import CLIP_MEAN, CLIP_STD, ImageFolderDataset, build_transform

    ds = ImageFolderDataset(root, transform=build_transform(False, image_size, crop_pct=1.0, mean=CLIP_MEAN,
                                                            std=CLIP_STD, interpolation="bilinear"))
    samples = [ds[i] for i in range(len(ds))]
    return torch.stack([s["image"] for s in samples]), torch.tensor([s["label"] for s in samples]), ds.classes


# ----------------------------------------------------------------------------- 2. teacher
def train_teacher(cfg, x: torch.Tensor, y: torch.Tensor, steps: int, progress, seed: int = 0):
    """Supervised tiny EVA classifier with the teacher architecture of the toy config."""
    import eva_core

    torch.manual_seed(seed)
    overrides = dict(cfg.model.teacher.model_overrides)
    net = eva_core.create_model(cfg.model.teacher.model, **overrides)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    task = progress.add_task("teacher (supervised)", total=steps)
    for it in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=gen)
        xb = x[idx].flip(-1) if it % 2 else x[idx]
        loss = F.cross_entropy(net(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        progress.update(task, advance=1, description=f"teacher (supervised) loss {loss.item():.3f}")
    return net.eval()


# ----------------------------------------------------------------------------- 4. probe
@torch.no_grad()
def encoder_features(encoder, x: torch.Tensor) -> torch.Tensor:
    """CLS and mean patch token of the final tokens (frozen encoder)."""
    encoder.eval()
    tokens = torch.cat([encoder.forward_features(chunk) for chunk in x.split(256)])
    p = getattr(encoder, "num_prefix_tokens", 1)
    return torch.cat([tokens[:, 0], tokens[:, p:].mean(1)], dim=1)


def linear_probe(f_train, y_train, f_val, y_val, num_classes: int) -> float:
    """Multinomial logistic regression (L-BFGS, small L2) on standardised features -> val accuracy."""
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_val = (f_train - mu) / sd, (f_val - mu) / sd
    torch.manual_seed(0)
    head = torch.nn.Linear(f_train.shape[1], num_classes)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=200, lr=1.0, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(f_train), y_train) + 1e-3 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((head(f_val).argmax(1) == y_val).float().mean())


# ----------------------------------------------------------------------------- 3. MIM
def run_mim(cfg, progress, losses: list):
    from eva_core.engine.hooks import CallbackHook
    from eva_core.engine.trainer import Trainer

    task = progress.add_task("MIM pre-training", total=int(cfg.train.max_iter))

    def after_step(trainer):
        latest = trainer.storage.latest()
        if "loss_mim" in latest:
            losses.append(float(latest["loss_mim"][0]))
            progress.update(task, advance=1, description=f"MIM pre-training loss {losses[-1]:+.3f}")

    hook = CallbackHook(after_step=after_step)
    trainer = Trainer.from_config(cfg, extra_hooks=[hook], tensorboard=False)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer.unwrapped_model


def save_loss_curve(losses: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.8, alpha=0.5, label="per step")
    k = max(1, len(losses) // 20)
    if len(losses) >= k:
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(k, len(losses) + 1), smooth, lw=2, label=f"mean of {k}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss_mim (negative cosine)")
    ax.set_title("EVA MIM on the toy world")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def run_pipeline(out: Path, fast: bool = False, threads: int = 1, seed: int = 0) -> dict:
    """Run the four stages; returns (and writes to ``out/results.json``) the summary."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from eva_core.checkpoint import save_atomic
    from eva_core.config import LazyConfig, instantiate
    from eva_core.data.toy_world import make_imagefolder

    # one thread: tiny matrices gain nothing from more and lose a lot on a shared CPU
    torch.set_num_threads(threads)
    sizes = FAST if fast else FULL
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    t0 = time.perf_counter()
    timings = {}

    cfg = LazyConfig.load(str(REPO / "configs" / "pretrain" / "toy.py"))
    image_size = int(cfg.model.encoder.img_size)
    world = make_imagefolder(out / "toy_world", train_per_class=sizes["train_per_class"],
                             val_per_class=sizes["val_per_class"], img_size=image_size, seed=seed,
                             label="color")
    x_train, y_train, classes = load_split(world["imagefolder_color_train"], image_size)
    x_val, y_val, _ = load_split(world["imagefolder_color_val"], image_size)
    num_classes = len(classes)
    cfg.model.teacher.model_overrides.num_classes = num_classes
    timings["data_s"] = time.perf_counter() - t0

    losses: list = []
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        t = time.perf_counter()
        teacher_net = train_teacher(cfg, x_train, y_train, sizes["teacher_steps"], progress, seed=seed)
        teacher_path = save_atomic(teacher_net.state_dict(), out / "teacher.safetensors")
        timings["teacher_s"] = time.perf_counter() - t

        t = time.perf_counter()
        cfg.dataloader.train.dataset.dataset.root = world["imagefolder_color_train"]
        cfg.dataloader.train.seed = seed
        cfg.model.teacher.checkpoint = str(teacher_path)
        cfg.train.output_dir = str(out / "mim")
        cfg.train.max_iter = sizes["mim_steps"]
        cfg.train.checkpointer.period = sizes["mim_steps"]
        cfg.train.seed = seed
        mim = run_mim(cfg, progress, losses)
        timings["mim_s"] = time.perf_counter() - t

    t = time.perf_counter()
    torch.manual_seed(seed + 1)
    random_encoder = instantiate(cfg.model.encoder)
    accuracy = {}
    for name, encoder in (("mim", mim.encoder), ("random_init", random_encoder), ("teacher", teacher_net)):
        accuracy[name] = linear_probe(encoder_features(encoder, x_train), y_train,
                                      encoder_features(encoder, x_val), y_val, num_classes)
    timings["probe_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    save_loss_curve(losses, out / "loss_curve.png")
    k = max(1, min(20, len(losses) // 5))
    results = {
        "probe_accuracy": accuracy,
        "loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])),
        "losses": losses, "num_classes": num_classes, "classes": classes,
        "num_train": int(len(y_train)), "num_val": int(len(y_val)),
        "teacher_steps": sizes["teacher_steps"], "mim_steps": sizes["mim_steps"], "fast": fast,
        "timings": timings, "loss_curve": str(out / "loss_curve.png"),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))

    table = Table(title=f"Linear probe on toy-world colours ({num_classes} classes, {len(y_val)} val images)")
    table.add_column("encoder")
    table.add_column("probe top-1", justify="right")
    for name, label in (("mim", "EVA MIM pre-trained"), ("random_init", "random init"),
                        ("teacher", "teacher (supervised)")):
        table.add_row(label, f"{100 * accuracy[name]:.1f}%")
    console.print(table)
    console.print(f"MIM loss {results['loss_first']:+.3f} -> {results['loss_last']:+.3f}; "
                  f"total {timings['total_s']:.0f} s; outputs in {out}")
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="output/eva_toy_pipeline", help="output folder")
    parser.add_argument("--fast", action="store_true", help="smaller data and fewer steps (tests)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return run_pipeline(Path(args.out), fast=args.fast, threads=args.threads, seed=args.seed)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
