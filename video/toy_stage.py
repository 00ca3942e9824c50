"""The main job's toy video stage: a tiny video EVA inflated from the toy MIM encoder learns the toy motions.

``run_toy_stage`` (the stage contract of ``tools/eva_toy_pipeline.py``) writes toy Kinetics clips with
``eva_core.data.toy_world.make_kinetics`` (class = motion direction of one shape), inflates the MIM
encoder's image checkpoint (patch 4, 32 px) into a video EVA (``video.load_video_checkpoint``: the 2-D
kernel copied along time and divided by the tubelet, the position table repeated per frame), trains it
through the shared engine (``train_from_config`` on ``video/configs/toy_video.py`` with the encoder's
geometry) and reports val top-1. A one-frame model with the same initialisation and budget is the
baseline: one frame cannot tell the direction (``docs/recipes/video.md#toy-world-proof``).

Geometry: 8 frames at 32 px, tubelet 2 (a displacement is visible inside one token) and patch 8: the
loader resamples the encoder's 4-px kernel to 8 px (FlexiViT resize, as 14 -> 16 for the image models)
and its 8 x 8 position grid to 4 x 4 (bicubic) before inflating. Measured on one CPU core with 32-clip
steps: at patch 4, 8 frames, a step costs 0.17 s (257 tokens) and with 4 frames the model stayed at
chance after 200 steps (val top-1 0.21); at patch 8 with 4 TSN frames of the 8-frame clip a step costs
about 0.04 s (33 tokens) on an idle core. Between two sampled frames the toy shape moves about 6 px,
inside one 8-px patch, where the tubelet kernel sees the edge shift; across 4-px patches it must be read
from neighbouring tokens. Clips are decoded once (:class:`video.data.DecodedClips`) because decoding
costs more than a step. Learning comes as a drop from the ln 4 plateau between 300 and 450 steps
(measured: 0.27 at 300, 0.63 at 450), hence 450 steps for ``fast``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from eva_core.config import LazyCall as L
from eva_core.config import LazyConfig
from eva_core.data.toy_world import MOTIONS, make_kinetics

from .data.decoded import DecodedClips, OneFrameClips

__all__ = ["run_toy_stage", "toy_stage_config", "CONFIG"]

CONFIG = Path(__file__).resolve().parent / "configs" / "toy_video.py"
#: frames written per toy clip and frames the model sees (TSN segments of the clip)
CLIP_FRAMES, NUM_FRAMES, TUBELET, PATCH = 8, 4, 2, 8
TRAIN_PER_CLASS, VAL_PER_CLASS = 120, 32
#: optimizer steps of 32 clips (video model, one-frame baseline): full run / fast=True
STEPS = {False: (900, 200), True: (450, 100)}
_ARCH_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")


def _given(dataset: Any) -> Any:
    """A LazyCall target for a dataset built before the config (decoded once, shared by two runs)."""
    return L(lambda: dataset)()


def toy_stage_config(encoder_arch: dict, encoder_checkpoint: str | None, num_frames: int, max_iter: int,
                     output_dir: str | Path, seed: int = 0) -> Any:
    """``video/configs/toy_video.py`` with the MIM encoder's width, depth and heads, patch 8, the stage's
    clip length and run length.

    Args:
        encoder_arch: the image encoder's ``img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio``
            (other keys are refused: the video model must take the checkpoint key for key; the patch
            kernel is resampled to ``PATCH``).
        encoder_checkpoint: image (or video) checkpoint inflated into the model; None: random init.
        num_frames: clip length (1: the single-frame baseline, tubelet 1).
        max_iter: optimizer steps.
        output_dir: the run's folder.
        seed: training seed.

    Raises:
        ValueError: ``encoder_arch`` misses or adds a key (naming it).
    """
    missing = [k for k in _ARCH_KEYS if k not in encoder_arch]
    extra = [k for k in encoder_arch if k not in _ARCH_KEYS]
    if missing or extra:
        raise ValueError(f"encoder_arch: expected the keys {list(_ARCH_KEYS)}; missing {missing}, unexpected "
                         f"{extra}")
    cfg = LazyConfig.load(str(CONFIG))
    net = cfg.model.net
    for k in _ARCH_KEYS:
        net[k] = encoder_arch[k]
    net.patch_size = PATCH  # the loader resamples the encoder's kernel (module docstring)
    net.num_frames = num_frames
    # a displacement inside one token needs two frames; the one-frame baseline has one
    net.tubelet_size = TUBELET if num_frames > 1 else 1
    net.checkpoint_path = None if encoder_checkpoint is None else str(encoder_checkpoint)
    # EVA's 0.001 head scale (for fine-tuning a trained trunk) sends the tiny trunk almost no gradient;
    # measured at 450 steps: 0.22 top-1 with it, 0.63 / 0.74 (two seeds) with 1.0
    net.head_init_scale = 1.0
    cfg.train.max_iter = max_iter
    cfg.train.eval_period = max_iter
    cfg.train.checkpointer.period = max_iter
    cfg.train.output_dir = str(output_dir)
    cfg.train.seed = seed
    cfg.train.log_period = max(1, max_iter // 5)
    return cfg


def _chance_bound(num_val: int) -> tuple[float, float]:
    chance = 1.0 / len(MOTIONS)
    return chance, chance + 3 * math.sqrt(chance * (1 - chance) / num_val)


def run_toy_stage(out: Path, encoder_checkpoint: Path | None, encoder_arch: dict, seed: int = 0,
                  fast: bool = False) -> dict:
    """Toy video stage of the main job: val top-1 of a tiny video EVA inflated from ``encoder_checkpoint``.

    Args:
        out: folder for the toy clips and the two runs (``video/``, ``one_frame/``).
        encoder_checkpoint: safetensors (or ``.pth``) state dict of the MIM encoder (eva_core ``Eva`` keys);
            None: random initialisation.
        encoder_arch: the encoder's ``dict(img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio)``.
        seed: toy-world and training seed.
        fast: half the steps (the fast main job).

    Returns:
        ``{"metric": "top1", "value": video val top-1 (fraction), "metrics": {...}, "png": None,
        "seconds": wall time}``; ``metrics`` holds ``top1``, ``top1_one_frame`` (the baseline),
        ``chance`` and ``chance_3sigma`` (chance + 3 binomial standard deviations over the val clips),
        the clip counts, frames, tubelet, patch, steps and the seconds of each phase.
    """
    start = time.perf_counter()
    out = Path(out)
    size = int(encoder_arch.get("img_size", 32))
    paths = make_kinetics(out / "toy_world", train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS,
                          img_size=size, num_frames=CLIP_FRAMES, seed=seed)
    root = paths["kinetics_root"]
    train_clips = DecodedClips(paths["kinetics_train_list"], root, NUM_FRAMES, size)
    val_clips = DecodedClips(paths["kinetics_val_list"], root, NUM_FRAMES, size)
    video_steps, frame_steps = STEPS[bool(fast)]
    seconds = {"data": time.perf_counter() - start}

    from eva_core.engine.defaults import train_from_config

    def train(num_frames, train_set, val_set, steps, name):
        cfg = toy_stage_config(encoder_arch, encoder_checkpoint, num_frames, steps, out / name, seed)
        cfg.dataloader.train.dataset = _given(train_set)
        cfg.dataloader.test.dataset = _given(val_set)
        torch.manual_seed(seed)
        result = train_from_config(cfg, tensorboard=False)
        return result.results["top1"] / 100.0

    mark = time.perf_counter()
    top1 = train(NUM_FRAMES, train_clips, val_clips, video_steps, "video")
    seconds["video"], mark = time.perf_counter() - mark, time.perf_counter()
    top1_frame = train(1, OneFrameClips(train_clips, train=True),
                       OneFrameClips(val_clips, train=False, seed=seed), frame_steps, "one_frame")
    seconds["one_frame"] = time.perf_counter() - mark
    chance, bound = _chance_bound(len(val_clips))
    metrics = {"top1": top1, "top1_one_frame": top1_frame, "chance": chance, "chance_3sigma": bound,
               "num_train": len(train_clips), "num_val": len(val_clips), "num_frames": NUM_FRAMES,
               "tubelet": TUBELET, "patch": PATCH, "steps": video_steps, "steps_one_frame": frame_steps,
               **{f"seconds_{k}": round(v, 2) for k, v in seconds.items()}}
    return {"metric": "top1", "value": top1, "metrics": metrics, "png": None,
            "seconds": time.perf_counter() - start}
