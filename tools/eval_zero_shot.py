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

    # the paper's Table 10 suite (any subset) and COCO retrieval; prints the table with the paper's row
    python tools/eval_zero_shot.py --model eva_clip_g14 --checkpoint eva_clip_psz14.pt --img-size 224 \\
        --clip-norm --benchmarks imagenet=/data/imagenet/val cifar100=/data/cifar-100-python \\
        ucf101=/data/ucf101 --retrieval coco=/data/coco/dataset_coco.json --output zero_shot.json

``--benchmarks`` takes ``key=root`` pairs (keys of ``clip.benchmarks.BENCHMARKS``) or
``--benchmarks-file`` a JSON / YAML mapping ``key: root`` or ``key: {root: ..., adapter options}``;
each set uses its own class names and templates unless ``--templates`` / ``--template`` is given.
``--retrieval name=caption_file.json`` (Karpathy layout; images under the file's folder or
``--retrieval-image-root name=DIR``). Layouts: ``docs/recipes/clip.md#zero-shot-benchmarks``.

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
    parser.add_argument("--data", default=None, help="class-folder dataset (root/<class>/<image>)")
    parser.add_argument("--benchmarks", nargs="*", default=[], metavar="KEY=ROOT",
                        help="Table 10 benchmarks (imagenet, imagenet_v2, ..., cifar10, ucf101, kinetics400)")
    parser.add_argument("--benchmarks-file", default=None, help="JSON / YAML mapping key -> root or options")
    parser.add_argument("--retrieval", nargs="*", default=[], metavar="NAME=JSON",
                        help="Karpathy caption files (dataset_coco.json, dataset_flickr30k.json)")
    parser.add_argument("--retrieval-image-root", nargs="*", default=[], metavar="NAME=DIR")
    parser.add_argument("--retrieval-split", default="test")
    parser.add_argument("--video-frames", type=int, default=1,
                        help="frames per video for ucf101 / kinetics* (1: the middle frame; T: the mean "
                             "embedding of T segment centres)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
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
    if args.data is None and not (args.benchmarks or args.benchmarks_file or args.retrieval):
        parser.error("give --data, --benchmarks / --benchmarks-file or --retrieval")
    if args.data is None:
        return run_suite(args)

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


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{flag}: expected NAME=PATH, got {item!r}")
        if key in out:
            raise ValueError(f"{flag}: {key!r} given twice")
        out[key] = value
    return out


def _read_mapping(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not YAML ({e})") from e
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping benchmark -> root (or options), "
                         f"got {type(data).__name__}")
    return data


def _templates(args: argparse.Namespace) -> list | None:
    """The user's templates for every set, or None: each set's own."""
    from clip.zero_shot import OPENAI_IMAGENET_TEMPLATES

    if args.templates == "openai":
        return list(OPENAI_IMAGENET_TEMPLATES)
    if args.templates is not None:
        return json.loads(args.templates)
    return args.template or None


def run_suite(args: argparse.Namespace) -> int:
    """``--benchmarks`` / ``--retrieval``: Table 10's sets and caption retrieval; prints the table."""
    from clip.benchmarks import BENCHMARKS, TABLE10_ORDER, evaluate_benchmarks, format_table10
    from clip.model import create_eva_clip
    from clip.retrieval import evaluate_retrieval
    from eva_core.checkpoint import CheckpointMismatchError
    from eva_core.classification.datasets import EvalSetLayoutError
    from eva_core.data import build_transform
    from eva_core.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

    try:
        roots: dict[str, Any] = _read_mapping(args.benchmarks_file) if args.benchmarks_file else {}
        for key, root in _pairs(args.benchmarks, "--benchmarks").items():
            roots[key] = root
        unknown = sorted(set(roots) - set(BENCHMARKS))
        if unknown:
            raise ValueError(f"unknown benchmark(s) {unknown}; expected keys of {list(BENCHMARKS)}")
        if args.video_frames < 1:
            raise ValueError(f"--video-frames must be >= 1, got {args.video_frames}")
        for key in [k for k in roots if k == "ucf101" or k.startswith("kinetics")]:
            spec = dict(roots[key]) if isinstance(roots[key], dict) else {"root": roots[key]}
            spec.setdefault("num_frames", args.video_frames)
            roots[key] = spec
        captions = _pairs(args.retrieval, "--retrieval")
        image_roots = _pairs(args.retrieval_image_root, "--retrieval-image-root")
        stray = sorted(set(image_roots) - set(captions))
        if stray:
            raise ValueError(f"--retrieval-image-root names {stray}, which no --retrieval gives")
        mean, std = (CLIP_MEAN, CLIP_STD) if args.clip_norm else (IMAGENET_MEAN, IMAGENET_STD)
        transform = build_transform(is_train=False, img_size=args.img_size, crop_pct=args.crop_pct, mean=mean,
                                    std=std, interpolation=args.interpolation)
        model = create_eva_clip(args.model, vision_cfg=_parse_kv(args.vision_cfg))
        logger.info("weights: %s", load_clip_weights(model, args.checkpoint, allow_pickle=args.allow_pickle))
        model = model.to(args.device).eval()
        results: dict[str, Any] = {"benchmarks": {}, "retrieval": {}}
        if roots:
            results["benchmarks"] = evaluate_benchmarks(model, roots, transform, templates=_templates(args),
                                                        batch_size=args.batch_size)
        for name, path in captions.items():
            results["retrieval"][name] = evaluate_retrieval(model, path, transform,
                                                            image_root=image_roots.get(name),
                                                            split=args.retrieval_split,
                                                            batch_size=args.batch_size)
    except (OSError, ValueError, KeyError, CheckpointMismatchError, EvalSetLayoutError) as e:
        print(f"eval_zero_shot: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    top1 = {k: v["top1"] for k, v in results["benchmarks"].items()}
    ran = [k for k in TABLE10_ORDER if k in top1]
    results["table10_top1"] = top1
    results["average_top1"] = sum(top1[k] for k in ran) / len(ran) if ran else None
    if top1:
        print(f"Zero-shot top-1 (paper Table 10 layout; average over {len(ran)} of 12 sets):")
        print(format_table10(top1, label=args.model))
    for name, r in results["retrieval"].items():
        print(f"retrieval {name} ({r['num_images']} images, {r['num_texts']} captions): " + ", ".join(
            f"{k} {v:.1f}" for k, v in r.items() if "R@" in k))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    print("results: " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
