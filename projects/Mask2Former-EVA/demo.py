#!/usr/bin/env python
"""Segment image files with a Mask2Former-EVA config + checkpoint; write label PNGs and overlays.

Examples::

    python projects/Mask2Former-EVA/demo.py \\
        --config-file projects/Mask2Former-EVA/configs/ADE20K/mask2former_eva_g_896.py \\
        --checkpoint output/mask2former_eva_g_ade20k_896/model_final.pth \\
        --input photos/ --output demo_out/
    python projects/Mask2Former-EVA/demo.py --config-file ... --checkpoint ... \\
        --input a.jpg b.jpg --output demo_out/ model.test_mode=whole

For each image ``NAME.ext`` it writes ``NAME.png`` (class ids, 8-bit; ``--reduce-zero-label`` writes
ADE20K's ids, class + 1 with 0 for "other") and ``NAME_overlay.png`` (the image blended with the
classes' palette colours). The image goes through the config's test transform
(``dataloader.test.dataset.transform``: resize and normalise) and the model's test mode (slide /
whole, scales, flip); the prediction is resized back to the image. The checkpoint must fill the
whole model (the engine's ``--eval-only`` rule); ``key=value`` arguments override the config.

Exit status 2: a bad config, checkpoint, override or input (the message names it).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="LazyConfig of the segmentor")
    parser.add_argument("--checkpoint", required=True, help="trained weights (.pth or .safetensors)")
    parser.add_argument("--input", nargs="+", required=True, help="image files and / or folders of images")
    parser.add_argument("--output", required=True, help="folder for NAME.png and NAME_overlay.png")
    parser.add_argument("--opacity", type=float, default=0.5, help="overlay opacity of the colours")
    parser.add_argument("--reduce-zero-label", action="store_true",
                        help="write class + 1 (0 = ignore), ADE20K's submission ids")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--allow-pickle", action="store_true", help="trusted pickled checkpoints only")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    return parser.parse_args(argv)


def list_images(inputs: Sequence[str]) -> list[Path]:
    """Image files named directly or found (not recursively) in the named folders, in order.

    Raises:
        FileNotFoundError: an input does not exist, or a folder holds no image.
    """
    images: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"--input {item}: no image ({', '.join(IMAGE_EXTENSIONS)}) "
                                        "in the folder")
            images += found
        elif item.is_file():
            images.append(item)
        else:
            raise FileNotFoundError(f"--input {item} does not exist")
    return images


def build_segmentor(config_file: str, checkpoint: str, overrides: Sequence[str] = (), *, device: str = "cpu",
                    allow_pickle: bool = False):
    """(model in eval mode with the checkpoint loaded, the config, the test transform or None)."""
    import torch

    from eva_core.checkpoint import load_checkpoint
    from eva_core.config import LazyConfig, instantiate

    cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), list(overrides))
    model = instantiate(cfg.model)
    load_checkpoint(model, checkpoint, min_loaded=1.0, allow_pickle=allow_pickle)
    model.to(torch.device(device)).eval()
    from omegaconf import OmegaConf

    # the config's test transform (resize + normalise); a config without a test set: normalise only
    node = OmegaConf.select(cfg, "dataloader.test.dataset.transform")
    return model, cfg, (instantiate(node) if node is not None else None)


def segment(model, image, transform=None, device: str = "cpu"):
    """Scores ``[K, H, W]`` of one uint8 RGB image ``[H, W, 3]`` at its own size."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from mask2former_eva.data import SegTestTransform

    transform = transform or SegTestTransform(scale=None)
    h, w = image.shape[:2]
    sample = transform({"image": image, "sem_seg": np.zeros((h, w), np.int64), "file_name": ""})
    with torch.no_grad():
        scores = model({"image": sample["image"][None].to(device)})["sem_seg"][0].float()
    if tuple(scores.shape[-2:]) != (h, w):
        scores = F.interpolate(scores[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return scores.cpu()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np
    from PIL import Image

    from mask2former_eva.data import palette_for
    from mask2former_eva.visualize import save_label_png, save_overlay

    try:
        images = list_images(args.input)
        model, cfg, transform = build_segmentor(args.config_file, args.checkpoint, args.overrides,
                                                device=args.device, allow_pickle=args.allow_pickle)
    except Exception as e:  # noqa: BLE001  (every refusal is reported the same way)
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    palette = palette_for(model.num_classes)
    out = Path(args.output)
    for path in images:
        try:
            with Image.open(path) as im:
                image = np.array(im.convert("RGB"))
        except (OSError, SyntaxError, EOFError) as e:
            print(f"error: cannot read image {path}: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        labels = segment(model, image, transform, args.device).argmax(0)
        save_label_png(labels, out / f"{path.stem}.png", reduce_zero_label=args.reduce_zero_label)
        save_overlay(image, labels, out / f"{path.stem}_overlay.png", palette=palette, opacity=args.opacity)
        print(f"{path} -> {out / (path.stem + '.png')}, {out / (path.stem + '_overlay.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
