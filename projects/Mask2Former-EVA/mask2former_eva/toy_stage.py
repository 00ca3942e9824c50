"""The main job's toy segmentation stage: the toy Mask2Former-EVA recipe from a MIM encoder.

``run_toy_stage(out, encoder_checkpoint, encoder_arch)`` writes a toy ADE20K-format set under
``out/data`` (``eva_core.data.toy_world.make_ade20k``), trains the toy recipe
(``projects/Mask2Former-EVA/configs/toy/mask2former_toy.py``) through the shared engine
(``train_from_config``) with the encoder initialised from the MIM checkpoint, evaluates mIoU on the
validation split and writes one PNG: a validation image, its ground truth and the prediction
(ADE20K palette overlays, side by side).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["run_toy_stage", "TOY_CONFIG", "toy_overrides", "toy_segmentation_config", "train_toy_segmentor"]

TOY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "toy" / "mask2former_toy.py"

#: (train images, val images, iterations) of the full and the fast stage. Shape types are told
#: apart only with many distinct shapes: with 80 training images the toy model memorises them and
#: stays at chance on the validation split (mIoU 9.8 after 400 steps); with 1000 it learns.
BUDGETS = {False: (1000, 50, 300), True: (500, 30, 120)}


def toy_overrides(encoder_arch: dict, *, img_size: int, max_iter: int, output_dir: Path,
                  init_checkpoint: Path | None, seed: int) -> list[str]:
    """Config overrides that size the toy recipe's encoder like the MIM encoder (patch 16 instead of
    ``encoder_arch["patch_size"]``: the adapter reads the stride-16 grid; the loader resamples the
    MIM patch kernel) and set the budget, output folder, init and seed."""
    enc = "model.backbone.encoder"
    overrides = [f"{enc}.{k}={encoder_arch[k]}" for k in ("embed_dim", "depth", "num_heads", "mlp_ratio")
                 if k in encoder_arch]
    depth = int(encoder_arch.get("depth", 2))
    groups = [[i, i] for i in range(depth)] if depth < 4 else [
        [g * depth // 4, (g + 1) * depth // 4 - 1] for g in range(4)]
    width = int(encoder_arch.get("embed_dim", 64))
    overrides += [
        f"{enc}.img_size={img_size}", f"model.backbone.interaction_indexes={groups}",
        f"model.backbone.add_vit_feature={depth >= 4}", f"model.decode_head.in_channels={[width] * 4}",
        f"dataloader.train.dataset.transform.crop_size=[{img_size},{img_size}]",
        f"dataloader.train.dataset.transform.scale=[{4 * img_size},{img_size}]",
        "dataloader.train.total_batch_size=16",
        f"train.max_iter={max_iter}", f"train.eval_period={max_iter}",
        f"train.checkpointer.period={max_iter}",
        f"train.output_dir={output_dir}", f"train.seed={seed}", "train.device=cpu",
        f"train.init_checkpoint={init_checkpoint or ''}",
    ]
    return overrides


def toy_segmentation_config(paths: dict, output_dir: Path, encoder_arch: dict,
                            encoder_checkpoint: Path | None, *, img_size: int, max_iter: int, seed: int):
    """The toy recipe on a ``make_ade20k`` set (its classes from the set's ``meta.json``: shapes or
    colours), sized by :func:`toy_overrides`."""
    import json

    from eva_core.config import LazyConfig

    cfg = LazyConfig.load(str(TOY_CONFIG))
    cfg = LazyConfig.apply_overrides(cfg, toy_overrides(
        encoder_arch, img_size=img_size, max_iter=max_iter, output_dir=output_dir,
        init_checkpoint=encoder_checkpoint, seed=seed))
    classes = list(json.loads(Path(paths["ade20k_meta"]).read_text())["classes"])
    for split in ("train", "test"):
        cfg.dataloader[split].dataset.root = paths["ade20k_root"]
        cfg.dataloader[split].dataset.class_names = classes
    cfg.dataloader.evaluator.num_classes, cfg.dataloader.evaluator.class_names = len(classes), classes
    cfg.model.decode_head.num_classes = cfg.model.criterion.num_classes = len(classes)
    return cfg


def train_toy_segmentor(cfg, seed: int):
    """Seeded training (``train_from_config_seeded``: the adapter's and head's init and the crops do not
    depend on what ran before, and the MIM / random-init arms share them) -> (TrainResult, sem_seg
    metrics)."""
    from eva_core.engine.defaults import train_from_config_seeded

    result = train_from_config_seeded(cfg, seed, tensorboard=False)
    metrics = dict(result.results.get("sem_seg", {}))
    if "mIoU" not in metrics:
        raise RuntimeError(f"toy segmentation: the evaluation returned no mIoU ({result.results})")
    return result, metrics


def _side_by_side_png(model: torch.nn.Module, dataset, path: Path, num_classes: int) -> Path:
    from .data import SegTestTransform
    from .visualize import overlay

    sample = dataset.samples[0]
    image = np.array(Image.open(sample[0]).convert("RGB"))
    gt = dataset.read_label(0, (image.shape[1], image.shape[0]))
    inputs = SegTestTransform(scale=None)({"image": image, "sem_seg": gt, "file_name": sample[0]})
    model.eval()
    with torch.no_grad():
        pred = model({"image": inputs["image"][None]})["sem_seg"][0].argmax(0).numpy()
    panels = [image, overlay(image, gt, num_classes=num_classes),
              overlay(image, pred, num_classes=num_classes)]
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)).save(path)
    return path


def run_toy_stage(out: Path, encoder_checkpoint: Path | None, encoder_arch: dict, seed: int = 0,
                  fast: bool = False) -> dict[str, Any]:
    """Train and evaluate the toy segmentor; see the module docstring.

    Args:
        out: stage folder (data, run and PNG go under it).
        encoder_checkpoint: safetensors state dict of the MIM encoder (eva_core ``Eva`` keys), or
            None for a random init.
        encoder_arch: the MIM encoder's ``create_model`` arguments (``embed_dim``, ``depth``,
            ``num_heads``, ``mlp_ratio``, ``patch_size``, ``img_size``).
        seed: data and training seed.
        fast: the smaller budget (fewer images and iterations).

    Returns:
        ``{"metric": "mIoU", "value", "metrics" (all SemSegEvaluator numbers), "png", "seconds"}``.
    """
    from eva_core.data import toy_world

    start = time.perf_counter()
    out = Path(out)
    num_train, num_val, max_iter = BUDGETS[bool(fast)]
    img_size = 64
    paths = toy_world.make_ade20k(out / "data", num_train=num_train, num_val=num_val, img_size=img_size,
                                  seed=seed)
    cfg = toy_segmentation_config(paths, out / "run", encoder_arch, encoder_checkpoint, img_size=img_size,
                                  max_iter=max_iter, seed=seed)
    result, metrics = train_toy_segmentor(cfg, seed)
    from eva_core.config import instantiate

    val = instantiate(cfg.dataloader.test.dataset)
    png = _side_by_side_png(result.model, val, out / "toy_segmentation.png", len(toy_world.SHAPES))
    return {"metric": "mIoU", "value": float(metrics["mIoU"]), "metrics": metrics, "png": str(png),
            "seconds": time.perf_counter() - start}
