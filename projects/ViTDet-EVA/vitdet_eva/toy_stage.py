"""The main job's toy detection stage: a tiny ViTDet-EVA, its backbone from the toy MIM encoder, on toy COCO.

``run_toy_stage`` (the stage contract of ``tools/eva_toy_pipeline.py``) writes the toy world's COCO
instances set (``eva_core.data.toy_world.make_coco``: 1-4 shapes per 128 px image, class = shape),
builds ``configs/toy/cascade_mask_rcnn_toy_coco.py`` with the MIM encoder's width, depth and heads,
initialises ``backbone.net`` from the encoder checkpoint, trains through the shared engine
(``train_from_config``) and reports the val box and mask AP50 (pycocotools, in percent) under EVA's
evaluation settings (soft-NMS linear 0.6, score override 0, maskness 0.5), with one PNG of
detections on a val image.

Geometry: the detector keeps ViTDet's patch 16 (its pyramid has strides 4-64) on 128 px images, an
8 x 8 token grid like the MIM encoder's 32 px / patch 4. eva_core's loader resamples the encoder's
4 x 4 patch kernel to 16 x 16 (the FlexiViT resize used for EVA's 14 -> 16 conversion), and its 8 x 8
(+ CLS) position table is the backbone's ``pretrain_img_size = 128`` table as it is. The relative
position tables are new (zero-initialised, as in ViTDet), so the init checkpoint fills every encoder
tensor but those (``train.min_loaded.init`` is set to that share).
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

__all__ = ["CONFIGS", "toy_detection_config", "train_toy_detector", "run_toy_stage", "ARCH_KEYS",
           "PRETRAINED_LAYER_DECAY"]

PROJECT = Path(__file__).resolve().parents[1]
CONFIGS = {name: PROJECT / "configs" / "toy" / f"cascade_mask_rcnn_toy_{name}.py"
           for name in ("coco", "lvis")}
ARCH_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
#: the detector's input: toy images of 128 px at patch 16 (an 8 x 8 token grid)
IMAGE_SIZE, DET_PATCH = 128, 16
#: EVA-01's evaluation options (its README's overrides of ``model.roi_heads``)
EVA_EVAL = dict(use_soft_nms=True, method="linear", iou_threshold=0.6, override_score_thresh=0.0,
                maskness_thresh=0.5)
#: optimizer steps of 8 images: full run / fast=True (about 0.5 s of one core per step); at 200 steps
#: the toy config reaches box AP50 ~25 from random init (docs/recipes/detection.md#toy-world-proof)
STEPS = {False: 200, True: 100}
#: layer-wise lr decay for a pre-trained backbone (ViTDet-B's 0.7; ``optimizer.params.layer_decay``):
#: heads at lr, block 1 at 0.7 lr, block 0 at 0.49, patch / position embedding at 0.34. Measured
#: from the toy MIM encoder (200 steps, training seeds 0-3): box AP50 25.3 on average vs 22.9 without
#: decay, better on 3 of 4 seeds but within the seed spread; it does not make MIM init beat random init
#: (docs/recipes/detection.md#toy-world-proof). Random init keeps the config's 1.0.
PRETRAINED_LAYER_DECAY = 0.7


def _data_keys(cfg: Any, kind: str) -> tuple[Any, Any]:
    train_set = cfg.dataloader.train.dataset
    if kind == "lvis":  # the LVIS loader wraps the dataset in RepeatFactorDataset
        train_set = train_set.dataset
    return train_set, cfg.dataloader.test.dataset


def toy_detection_config(kind: str, paths: dict, output_dir: str | Path, max_iter: int, *,
                         encoder_arch: dict | None = None, encoder_checkpoint: str | Path | None = None,
                         seed: int = 0) -> Any:
    """The toy COCO / LVIS ViTDet-EVA config on the given toy-world paths.

    Args:
        kind: ``"coco"`` or ``"lvis"`` (``configs/toy/cascade_mask_rcnn_toy_{kind}.py``).
        paths: ``make_coco`` / ``make_lvis``'s result (``{kind}_{train,val}_{json,images}``).
        output_dir: the run's folder.
        max_iter: optimizer steps (evaluation and the final checkpoint at the end).
        encoder_arch: the MIM encoder's ``dict(img_size, patch_size, embed_dim, depth, num_heads,
            mlp_ratio)``: the backbone takes its width, depth, heads and MLP ratio, and a position
            table for its token grid; None keeps the config's (which is the toy MIM encoder's).
        encoder_checkpoint: eva_core ``Eva`` state dict loaded into ``backbone.net`` and fine-tuned with
            layer-wise lr decay ``PRETRAINED_LAYER_DECAY``; None: random init (no decay, the config's).
        seed: training seed.

    Raises:
        ValueError: unknown ``kind``, missing paths, or ``encoder_arch`` missing / adding a key.
    """
    from eva_core.config import LazyConfig

    if kind not in CONFIGS:
        raise ValueError(f"toy detection kind={kind!r}: expected one of {sorted(CONFIGS)}")
    needed = [f"{kind}_{split}_{what}" for split in ("train", "val") for what in ("json", "images")]
    missing = [k for k in needed if k not in paths]
    if missing:
        raise ValueError(f"toy detection paths miss {missing} (give make_{kind}'s result)")
    cfg = LazyConfig.load(str(CONFIGS[kind]))
    train_set, test_set = _data_keys(cfg, kind)
    train_set.dicts.json_file = paths[f"{kind}_train_json"]
    train_set.dicts.image_root = paths[f"{kind}_train_images"]
    test_set.dicts.json_file = paths[f"{kind}_val_json"]
    test_set.dicts.image_root = paths[f"{kind}_val_images"]
    net = cfg.model.backbone.net
    if encoder_arch is not None:
        wrong = sorted(set(encoder_arch) ^ set(ARCH_KEYS))
        if wrong:
            raise ValueError(f"encoder_arch: expected exactly the keys {list(ARCH_KEYS)}; wrong: {wrong}")
        grid = int(encoder_arch["img_size"]) // int(encoder_arch["patch_size"])
        net.embed_dim, net.depth = int(encoder_arch["embed_dim"]), int(encoder_arch["depth"])
        net.num_heads, net.mlp_ratio = int(encoder_arch["num_heads"]), float(encoder_arch["mlp_ratio"])
        net.pretrain_img_size = grid * DET_PATCH  # the encoder's position grid, at the detector's patch
        # ViTDet's pattern: blocks 3, 7, 11, ... and the last block global, the others windowed
        net.window_block_indexes = [i for i in range(net.depth) if i % 4 != 3 and i != net.depth - 1]
    cfg.train.init_checkpoint = str(encoder_checkpoint) if encoder_checkpoint is not None else ""
    if encoder_checkpoint is not None:
        # a floor, not "encoder": the relative-position tables (2 per block) are new; the encoder's
        # other tensors are about a fifth of the toy detector's (the run logs the exact count)
        cfg.train.min_loaded.init = 0.15
        cfg.optimizer.params.layer_decay = PRETRAINED_LAYER_DECAY
    cfg.train.output_dir = str(output_dir)
    cfg.train.max_iter = int(max_iter)
    cfg.train.eval_period = int(max_iter)
    cfg.train.checkpointer.period = int(max_iter)
    cfg.train.log_period = max(1, int(max_iter) // 5)
    cfg.train.seed = int(seed)
    return cfg


def train_toy_detector(cfg: Any, seed: int) -> dict[str, float]:
    """Seeded training (``train_from_config_seeded``: the pyramid's and heads' init and the LSJ crops
    do not depend on what ran before, and the MIM / random-init arms of a comparison share them) ->
    ``{"bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50"}`` of the final evaluation (percent)."""
    from eva_core.engine.defaults import train_from_config_seeded

    results = train_from_config_seeded(cfg, seed, tensorboard=False).results
    return {f"{task}/{m}": float(results[task][m]) for task in ("bbox", "segm") for m in ("AP", "AP50")}


def _demo_module():
    """``projects/ViTDet-EVA/demo.py``: the one place detections are drawn (a script, loaded by path)."""
    spec = importlib.util.spec_from_file_location("vitdet_eva_demo", PROJECT / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_toy_stage(out: Path, encoder_checkpoint: Path | None, encoder_arch: dict, seed: int = 0,
                  fast: bool = False) -> dict:
    """Toy detection stage of the main job: box / mask AP50 of a tiny ViTDet-EVA on the toy COCO val split.

    Args:
        out: folder for the toy data (``toy_world/``), the run (``run/``) and the PNG (``demo/``).
        encoder_checkpoint: safetensors (or ``.pth``) state dict of the MIM encoder (eva_core ``Eva``
            keys); None: random initialisation.
        encoder_arch: the encoder's ``dict(img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio)``.
        seed: toy-world and training seed.
        fast: half the steps (the fast main job).

    Returns:
        ``{"metric": "bbox/AP50", "value": box AP50 (percent), "metrics": {"bbox/AP", "bbox/AP50",
        "segm/AP", "segm/AP50", "steps", "num_train", "num_val"}, "png": detections drawn on the first
        val image, "seconds": wall time}``.
    """
    from eva_core.data.toy_world import make_coco

    start = time.perf_counter()
    out = Path(out)
    paths = make_coco(out / "toy_world", seed=seed)
    steps = STEPS[bool(fast)]
    cfg = toy_detection_config("coco", paths, out / "run", steps, encoder_arch=encoder_arch,
                               encoder_checkpoint=encoder_checkpoint, seed=seed)
    # EVA's evaluation settings (docs/recipes/detection.md#inference-options-evas-names); the score
    # override 0 also keeps the low-confidence detections of a detector this short-trained (at the
    # toy config's 0.05 a 100-step run has none and every AP is NaN)
    cfg.model.roi_heads.update(EVA_EVAL)
    metrics = train_toy_detector(cfg, seed)
    metrics.update(steps=steps, num_train=len(_images(paths["coco_train_images"])),
                   num_val=len(_images(paths["coco_val_images"])))
    # the PNG: the trained model (the run's last checkpoint) through the demo on the first val image
    cfg.train.init_checkpoint = ""
    demo = _demo_module().run_demo(cfg, [str(_images(paths["coco_val_images"])[0])], out / "demo",
                                   categories_json=paths["coco_val_json"],
                                   # the 5 best: a 100-step toy detector scores ~0.1, under the demo's 0.5
                                   confidence_threshold=0.0, max_drawn=5)
    return {"metric": "bbox/AP50", "value": metrics["bbox/AP50"], "metrics": metrics, "png": demo["pngs"][0],
            "seconds": time.perf_counter() - start}


def _images(folder: str) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix == ".jpg")
