#!/usr/bin/env python
"""EVA end to end on the toy world, on CPU: the paper's loop CLIP -> MIM -> EVA-CLIP, plus a linear probe.

1. Toy world: the colour ImageFolder of ``eva_core.data.toy_world`` (``make_imagefolder(...,
   label="color")``: one random shape per image, class = its colour, 8 classes) and toy caption
   shards (``make_captions``: "a red circle and a blue square").
2. Teacher: a tiny CLIP trained contrastively on the captions (``clip/configs/toy_clip.py`` through
   ``eva_core.engine.defaults.train_from_config``, vision tower = the MIM encoder's architecture at
   32 px, see ``clip.toy_stage.toy_clip_config``); its vision tower (a plain eva_core ``Eva`` state
   dict) is the MIM teacher, as CLIP-L/14 is EVA's.
3. MIM: ``configs/pretrain/toy.py`` through ``train_from_config``: a tiny EVA student regresses
   the frozen CLIP vision tower's patch features at block-masked positions (negative cosine).
4. Linear probe (``eva_core.classification.linear_probe``: frozen CLS token -> BatchNorm ->
   Linear, SGD on cached features) of the MIM encoder, of the same encoder at random init, and of
   the teacher (the CLIP vision tower).
5. Task stages: each task package's ``toy_stage.run_toy_stage`` on the MIM encoder (``TASK_STAGES``):
   ``detection``: ViTDet-EVA Cascade Mask R-CNN on toy COCO (box / mask AP50, a PNG of detections);
   ``segmentation``: ViT-Adapter + Mask2Former on toy ADE20K (mIoU, a colourised PNG);
   ``video``: the encoder inflated to a video EVA on toy Kinetics motions (top-1, beside a one-frame model);
   ``clip``: EVA-CLIP initialised from the MIM encoder, zero-shot top-1 on the toy colours.

Writes ``results.json``, ``loss_curve.png``, the teacher and MIM runs (metrics, checkpoints) and
``stages/<name>/`` under ``--out``::

    python tools/eva_toy_pipeline.py --out output/eva_toy_pipeline          # about 2-4 minutes
    python tools/eva_toy_pipeline.py --out /tmp/toy --fast                  # the test's setting
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import time
from pathlib import Path
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import torch  # noqa: E402

FULL = dict(train_per_class=100, val_per_class=25, num_captions=640, teacher_steps=300, mim_steps=300)
FAST = dict(train_per_class=40, val_per_class=15, num_captions=320, teacher_steps=300, mim_steps=200)
#: (name, module) of every task's toy stage: ``module.run_toy_stage(out, encoder_checkpoint,
#: encoder_arch, seed, fast) -> {"metric", "value", "metrics", "png", "seconds"}`` (docs/DESIGN.md)
TASK_STAGES = [("detection", "vitdet_eva.toy_stage"), ("segmentation", "mask2former_eva.toy_stage"),
               ("video", "video.toy_stage"), ("clip", "clip.toy_stage")]
#: the MIM encoder's architecture arguments handed to the task stages
ARCH_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
# The paper's probe head (BatchNorm1d without affine + Linear) on the CLS token concatenated with the
# mean patch token: MIM trains only the patch tokens, so the CLS token alone under-reports what the
# encoder learned (measured: CLS 80.8% vs CLS+mean 98.3% for the same seed-0 encoder). Trained with
# SGD, because LARS (no weight decay) moves the head by
# lr * |w| every step, so on these linearly separable features |w| grows geometrically and overflows
# within a few hundred epochs (measured: train loss 1e14 and NaN, top-1 at chance).
PROBE = dict(epochs=200, warmup_epochs=10, lr=1.0, batch_size=64, pool="token_avg", optimizer="sgd",
             use_cache=True)


# ----------------------------------------------------------------------------- 1. toy world
def eval_dataset(root: str, image_size: int):
    """Class-folder split with the eval transform (CLIP normalisation, no crop) for the probe."""
    from eva_core.data import CLIP_MEAN, CLIP_STD, ImageFolderDataset, build_transform

    return ImageFolderDataset(root, transform=build_transform(False, image_size, crop_pct=1.0, mean=CLIP_MEAN,
                                                              std=CLIP_STD, interpolation="bilinear"))


# ----------------------------------------------------------------------------- 2. teacher
def teacher_config(mim_cfg, world: dict, out_dir: Path, steps: int, seed: int):
    """The toy EVA-CLIP recipe with the MIM encoder's architecture as vision tower (the CLIP teacher).

    The captions train it; the colour val set scores it zero-shot. ``clip.toy_stage.toy_clip_config``
    gives it CLIP normalisation, because the MIM recipe feeds the teacher the student's
    (CLIP-normalised) crops.
    """
    from clip.toy_stage import toy_clip_config

    arch = {k: mim_cfg.model.encoder[k] for k in ARCH_KEYS}
    cfg = toy_clip_config(world, out_dir, arch, steps=steps, seed=seed)
    cfg.train.device = mim_cfg.train.device
    return cfg


def teacher_model_overrides(clip_model) -> dict:
    """``EvaTeacher`` arguments that rebuild the CLIP vision tower (CLS -> norm -> projection) exactly,
    so that its state dict loads strictly."""
    return {k: clip_model.vision_cfg[k] for k in ARCH_KEYS} | dict(
        num_classes=clip_model.embed_dim, global_pool="token", use_fc_norm=False,
        use_post_transformer_norm=True)


def train_teacher(cfg, progress):
    """Contrastive training of the CLIP teacher through the shared engine -> (EvaCLIP, zero-shot top-1 %)."""
    from clip.toy_stage import train_toy_clip
    from eva_core.engine.hooks import CallbackHook

    task = progress.add_task("teacher (CLIP)", total=int(cfg.train.max_iter))

    def after_step(trainer):
        latest = trainer.storage.latest()
        if "loss_clip" in latest:
            loss = latest["loss_clip"][0]
            progress.update(task, advance=1, description=f"teacher (CLIP) loss {loss:.3f}")

    run = train_toy_clip(cfg, extra_hooks=[CallbackHook(after_step=after_step)])
    return run.model.model.eval(), float(run.results["top1"])


# ----------------------------------------------------------------------------- 4. probe
def probe_accuracy(encoder, train_set, val_set, seed: int = 0) -> float:
    """Val top-1 (fraction) of the linear probe (frozen CLS -> BatchNorm -> Linear) of ``encoder``."""
    from eva_core.classification.linear_probe import linear_probe

    result = linear_probe(encoder, train_set, val_set, **PROBE, topk=(1,), seed=seed)
    return result["top1"] / 100.0


# ----------------------------------------------------------------------------- 3. MIM
def run_mim(cfg, progress, losses: list):
    from eva_core.engine.defaults import seed_all_rng, train_from_config
    from eva_core.engine.hooks import CallbackHook

    task = progress.add_task("MIM pre-training", total=int(cfg.train.max_iter))

    def after_step(trainer):
        latest = trainer.storage.latest()
        if "loss_mim" in latest:
            losses.append(float(latest["loss_mim"][0]))
            progress.update(task, advance=1, description=f"MIM pre-training loss {losses[-1]:+.3f}")

    hook = CallbackHook(after_step=after_step)
    seed_all_rng(int(cfg.train.seed))
    return train_from_config(cfg, extra_hooks=[hook], tensorboard=False).model


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
def run_pipeline(out: Path, fast: bool = False, threads: int = 1, seed: int = 0,
                 stages: Sequence[str] | None = None) -> dict:
    """Run the pipeline and the task ``stages`` (names of ``TASK_STAGES``; None: all of them);
    returns (and writes to ``out/results.json``) the summary."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from eva_core.checkpoint import save_atomic
    from eva_core.config import LazyConfig, instantiate
    from eva_core.data.toy_world import make_captions, make_imagefolder

    known = [name for name, _ in TASK_STAGES]
    selected = known if stages is None else list(stages)
    unknown = [name for name in selected if name not in known]
    if unknown:
        raise ValueError(f"--stages: unknown stage(s) {unknown}; expected names among {known}")
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
    # drawn at 64 px (shapes of 6-13 px) and resized to the towers' 32 by the transform
    world.update(make_captions(out / "toy_world", num_images=sizes["num_captions"], img_size=64, seed=seed))
    train_set = eval_dataset(world["imagefolder_color_train"], image_size)
    val_set = eval_dataset(world["imagefolder_color_val"], image_size)
    classes = list(train_set.classes)
    num_classes = len(classes)
    timings["data_s"] = time.perf_counter() - t0

    losses: list = []
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        t = time.perf_counter()
        teacher_cfg = teacher_config(cfg, world, out / "teacher", sizes["teacher_steps"], seed)
        teacher_clip, teacher_top1 = train_teacher(teacher_cfg, progress)
        # the vision tower alone, as a plain eva_core Eva state dict: EvaTeacher loads it strictly
        teacher_path = save_atomic(teacher_clip.visual.state_dict(), out / "teacher.safetensors")
        timings["teacher_s"] = time.perf_counter() - t

        t = time.perf_counter()
        cfg.model.teacher.model_overrides = teacher_model_overrides(teacher_clip)
        cfg.dataloader.train.dataset.dataset.root = world["imagefolder_color_train"]
        cfg.dataloader.train.seed = seed
        cfg.model.teacher.checkpoint = str(teacher_path)
        cfg.train.output_dir = str(out / "mim")
        cfg.train.max_iter = sizes["mim_steps"]
        cfg.train.checkpointer.period = sizes["mim_steps"]
        cfg.train.seed = seed
        mim = run_mim(cfg, progress, losses)
        timings["mim_s"] = time.perf_counter() - t

    # the encoder alone (Eva keys, no MIM-only mask_token): what the task stages start from
    encoder_path = save_atomic({k: v for k, v in mim.encoder.state_dict().items() if k != "mask_token"},
                               out / "mim_encoder.safetensors")
    t = time.perf_counter()
    torch.manual_seed(seed + 1)
    random_encoder = instantiate(cfg.model.encoder)
    accuracy = {}
    for name, encoder in (("mim", mim.encoder), ("random_init", random_encoder),
                          ("teacher", teacher_clip.visual)):
        accuracy[name] = probe_accuracy(encoder, train_set, val_set, seed=seed)
    timings["probe_s"] = time.perf_counter() - t

    arch = {k: cfg.model.encoder[k] for k in ARCH_KEYS}
    stage_results = {}
    for name, module in TASK_STAGES:
        if name not in selected:
            continue
        t = time.perf_counter()
        stage = importlib.import_module(module)
        stage_results[name] = stage.run_toy_stage(out / "stages" / name, encoder_path, dict(arch), seed=seed,
                                           fast=fast)
        timings[f"stage_{name}_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    save_loss_curve(losses, out / "loss_curve.png")
    k = max(1, min(20, len(losses) // 5))
    results = {
        "probe_accuracy": accuracy,
        "loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])),
        "losses": losses, "num_classes": num_classes, "classes": classes,
        "num_train": len(train_set), "num_val": len(val_set), "num_captions": sizes["num_captions"],
        "teacher_zero_shot_top1": teacher_top1 / 100.0,
        "teacher_steps": sizes["teacher_steps"], "mim_steps": sizes["mim_steps"], "fast": fast,
        "stages": stage_results, "encoder_checkpoint": str(encoder_path), "encoder_arch": arch,
        "timings": timings, "loss_curve": str(out / "loss_curve.png"),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))

    table = Table(title=f"Linear probe on toy-world colours ({num_classes} classes, "
                        f"{len(val_set)} val images)")
    table.add_column("encoder")
    table.add_column("probe top-1", justify="right")
    for name, label in (("mim", "EVA MIM pre-trained"), ("random_init", "random init"),
                        ("teacher", "teacher (CLIP vision tower)")):
        table.add_row(label, f"{100 * accuracy[name]:.1f}%")
    console.print(table)
    stage_table = Table(title="Task stages (initialised from the MIM encoder)")
    for column in ("task", "metric", "value", "seconds", "picture"):
        stage_table.add_column(column, justify="right" if column in ("value", "seconds") else "left")
    for name, stage in stage_results.items():
        picture = os.path.relpath(stage["png"], out) if stage.get("png") else "-"
        stage_table.add_row(name, stage["metric"], f"{stage['value']:.3f}", f"{stage['seconds']:.0f}",
                            picture)
    console.print(stage_table)
    console.print(f"teacher (CLIP) zero-shot top-1 {teacher_top1:.1f}%; MIM loss "
                  f"{results['loss_first']:+.3f} -> {results['loss_last']:+.3f}; "
                  f"total {timings['total_s']:.0f} s; outputs in {out}")
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="output/eva_toy_pipeline", help="output folder")
    parser.add_argument("--fast", action="store_true", help="smaller data and fewer steps (tests)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", nargs="*", default=None, metavar="NAME",
                        help=f"task stages to run (default: all of {[name for name, _ in TASK_STAGES]})")
    args = parser.parse_args(argv)
    return run_pipeline(Path(args.out), fast=args.fast, threads=args.threads, seed=args.seed,
                        stages=args.stages)


if __name__ == "__main__":
    main()
