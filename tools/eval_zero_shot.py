#!/usr/bin/env python
"""Zero-shot top-1/top-5 of an EVA-CLIP checkpoint on a class-folder dataset.

Examples::

    # the toy recipe's weights on the toy colour set (class names = folder names)
    python tools/eval_zero_shot.py --model eva_clip_tiny --vision-cfg img_size=32 patch_size=8 \\
        --checkpoint output/toy_clip/model_final.pth --data datasets/toy_world/imagefolder_color/val \\
        --img-size 32 --template "a photo of a {} shape."

    # a released EVA-CLIP file on ImageNet-1K val folders: open_clip's 1000 names, 80 OpenAI templates
    python tools/eval_zero_shot.py --model eva_clip_g14 --checkpoint eva_clip_psz14.pt \\
        --data /data/imagenet/val --classnames imagenet --templates openai --img-size 224 --clip-norm

Checkpoints: any layout ``clip/layouts.py`` registers (released EVA-CLIP, ours, open_clip's), or a
training checkpoint of a ``ZeroShotClassifier`` config (keys under ``model.``); every tensor of the
model must load. Prints one ``results: {json}`` line; exit status 2 on bad input.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

import torch

from eva_core.checkpoint import load_file, unwrap_state_dict

logger = logging.getLogger("eval_zero_shot")


def _parse_kv(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--vision-cfg: expected key=value, got {item!r}")
        out[key] = json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
    return out


def load_clip_weights(model: torch.nn.Module, path: str, *, allow_pickle: bool = False):
    """Load every tensor of ``model`` from ``path``; a ``ZeroShotClassifier`` run's ``model.`` prefix
    is removed first (its training checkpoints wrap the CLIP model)."""
    import eva_core

    sd = unwrap_state_dict(load_file(path, allow_pickle=allow_pickle), source=path)
    if sd and all(k.startswith("model.") for k in sd):
        sd = {k[len("model."):]: v for k, v in sd.items()}
    return eva_core.load_checkpoint(model, sd, min_loaded=1.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="eva_clip_tiny", help="clip.model.create_eva_clip name")
    parser.add_argument("--vision-cfg", nargs="*", default=[], metavar="KEY=VALUE",
                        help="vision tower overrides (img_size=32 patch_size=8)")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="class-folder dataset (root/<class>/<image>)")
    parser.add_argument("--classnames", default=None,
                        help="'imagenet' (open_clip's 1000 names), a text file (one name per line), or "
                             "omitted: the folder names")
    parser.add_argument("--templates", default=None, help="'openai' (80 templates) or a JSON list of strings")
    parser.add_argument("--template", action="append", default=[], help="one template with {} (repeatable)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--crop-pct", type=float, default=1.0)
    parser.add_argument("--interpolation", default="bicubic", help="eval resize (the toy recipe: bilinear)")
    parser.add_argument("--clip-norm", action="store_true", help="CLIP mean/std instead of ImageNet's")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--allow-pickle", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from clip.model import create_eva_clip
    from clip.zero_shot import (IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, ZeroShotClassifier,
                                read_classnames)
    from eva_core.checkpoint import CheckpointMismatchError
    from eva_core.data import ImageFolderDataset, build_test_loader, build_transform
    from eva_core.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
    from eva_core.evaluation import ClassificationEvaluator, inference_on_dataset

    try:
        mean, std = (CLIP_MEAN, CLIP_STD) if args.clip_norm else (IMAGENET_MEAN, IMAGENET_STD)
        data = ImageFolderDataset(args.data, build_transform(is_train=False, img_size=args.img_size,
                                                             crop_pct=args.crop_pct, mean=mean, std=std,
                                                             interpolation=args.interpolation))
        if args.classnames is None:
            classnames = list(data.classes)
        elif args.classnames == "imagenet":
            classnames = list(IMAGENET_CLASSNAMES)
        else:
            classnames = read_classnames(args.classnames)
        if len(classnames) < data.num_classes:
            raise ValueError(f"{len(classnames)} class names for {data.num_classes} class folders in "
                             f"{args.data}")
        if args.templates == "openai":
            templates = list(OPENAI_IMAGENET_TEMPLATES)
        elif args.templates is not None:
            templates = json.loads(args.templates)
        else:
            templates = args.template or ["a photo of a {}."]
        model = create_eva_clip(args.model, vision_cfg=_parse_kv(args.vision_cfg))
        logger.info("weights: %s", load_clip_weights(model, args.checkpoint, allow_pickle=args.allow_pickle))
        classifier = ZeroShotClassifier(model, classnames, templates).to(args.device)
    except (OSError, ValueError, KeyError, CheckpointMismatchError) as e:
        print(f"eval_zero_shot: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    topk = (1, 5) if len(classnames) >= 5 else (1,)
    results = inference_on_dataset(classifier, build_test_loader(data, batch_size=args.batch_size),
                                   ClassificationEvaluator(topk=topk))
    print("results: " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
