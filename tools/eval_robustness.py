#!/usr/bin/env python
"""Evaluate an IN-1K classifier on ImageNet variants and print paper Table 5 (top-1/top-5, avg, gap).

Examples::

    # a fine-tuned EVA-g checkpoint at 560, all Table 5 sets plus ObjectNet
    python tools/eval_robustness.py --model eva_giant_patch14_560 \\
        --checkpoint eva_21k_1k_560px_psz14_ema_89p7.pt \\
        --set imagenet=/data/imagenet/val --set imagenet_v2=/data/imagenetv2-matched-frequency-format-val \\
        --set imagenet_real=/data/imagenet/val --set imagenet_a=/data/imagenet-a \\
        --set imagenet_r=/data/imagenet-r --set imagenet_sketch=/data/sketch \\
        --set objectnet=/data/objectnet-1.0 \\
        --resolutions 560 448 --output-dir out/robustness

    # the model of a fine-tuning recipe (its cfg.model), weights from its output folder
    python tools/eval_robustness.py --config-file configs/classification/in1k_ft_336.py \\
        --checkpoint output/in1k_ft_336/model_final.pth --set imagenet=/data/imagenet/val

Folder layouts per set: see ``eva_core/classification/datasets.py``. ``--resolutions`` evaluates
the same weights at several input sizes (the position embedding is resized at run time).
Writes ``robustness.json`` and ``robustness.md`` to ``--output-dir``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Sequence

import torch

from eva_core.classification.datasets import EVAL_SETS, build_eval_set
from eva_core.classification.robustness import dump_json, evaluate_robustness, format_table
from eva_core.data import build_transform
from eva_core.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger("eval_robustness")


def parse_sets(items: Sequence[str]) -> dict[str, str]:
    """``["name=root", ...]`` -> ``{name: root}`` with clear errors."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, root = item.partition("=")
        if not sep or not root:
            raise SystemExit(f"--set {item!r}: expected NAME=FOLDER with NAME one of {sorted(EVAL_SETS)}")
        if name not in EVAL_SETS:
            raise SystemExit(f"--set {item!r}: unknown set {name!r}; expected one of {sorted(EVAL_SETS)}")
        out[name] = root
    if not out:
        raise SystemExit(f"give at least one --set NAME=FOLDER (NAME in {sorted(EVAL_SETS)})")
    return out


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    """The classifier from ``--config-file`` (its ``model``) or ``--model``, with ``--checkpoint``."""
    import eva_core

    if args.config_file:
        from eva_core.config import LazyConfig, instantiate

        cfg = LazyConfig.load(args.config_file)
        cfg = LazyConfig.apply_overrides(cfg, args.opts)
        model = instantiate(cfg.model)
        if args.checkpoint:
            # ImageClassifier keeps the encoder under .net; the checkpoint may be either layout
            target = getattr(model, "net", model)
            eva_core.load_checkpoint(target, args.checkpoint)
        return model
    if not args.model:
        raise SystemExit("give --model NAME or --config-file FILE")
    kwargs = json.loads(args.model_kwargs)
    return eva_core.create_model(args.model, checkpoint_path=args.checkpoint, **kwargs)


def run(model: torch.nn.Module, set_roots: dict[str, str], resolutions: Sequence[int], *,
        crop_pct: float = 1.0, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
        batch_size: int = 64, num_workers: int = 0, real_json: str | None = None,
        classes: Sequence[str] | None = None, output_dir: str | None = None) -> dict[int, dict[str, Any]]:
    """Evaluate ``model`` on every set at every resolution; write json + markdown table.

    Returns:
        ``{resolution: evaluate_robustness output}``.
    """
    results: dict[int, dict[str, Any]] = {}
    for res in resolutions:
        tf = build_transform(False, int(res), mean=mean, std=std, crop_pct=crop_pct,
                             interpolation="bicubic")
        sets = {}
        for name, root in set_roots.items():
            kw: dict[str, Any] = {}
            if name == "imagenet_real" and real_json:
                kw["real_json"] = real_json
            if classes is not None and name in ("imagenet", "imagenet_real", "imagenet_a", "imagenet_r",
                                                "imagenet_sketch"):
                kw["classes"] = classes
            elif classes is not None and name in ("imagenet_v2", "objectnet"):
                kw["num_classes"] = len(classes)
            sets[name] = build_eval_set(name, root, tf, **kw)
        results[int(res)] = evaluate_robustness(model, sets, batch_size=batch_size, num_workers=num_workers)
    if output_dir and any(results.values()):
        os.makedirs(output_dir, exist_ok=True)
        dump_json(results, os.path.join(output_dir, "robustness.json"))
        with open(os.path.join(output_dir, "robustness.md"), "w") as f:
            f.write(format_table(results) + "\n")
    return results


def main(argv: Sequence[str] | None = None) -> dict[int, dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", default="", help="fine-tuning LazyConfig whose `model` is evaluated")
    ap.add_argument("--model", default="", help="eva_core model name (when no --config-file)")
    ap.add_argument("--model-kwargs", default="{}", help="JSON dict of create_model overrides")
    ap.add_argument("--checkpoint", default=None, help="classifier weights")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=FOLDER",
                    help=f"evaluation set; NAME in {sorted(EVAL_SETS)}")
    ap.add_argument("--real-json", default=None, help="ReaL labels (default FOLDER/real.json or timm's copy)")
    ap.add_argument("--classes-file", default=None,
                    help="wnids in label order, one per line (default: the 1000 IN-1K synsets)")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[224])
    ap.add_argument("--crop-pct", type=float, default=1.0, help="test crop ratio (EVA: 1.0)")
    ap.add_argument("--norm", choices=("clip", "imagenet"), default="clip", help="input mean/std")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-workers", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--output-dir", default="")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value (with --config-file)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    set_roots = parse_sets(args.set)
    classes = None
    if args.classes_file:
        with open(args.classes_file) as f:
            classes = f.read().split()
    model = build_model(args).to(args.device)
    mean, std = (CLIP_MEAN, CLIP_STD) if args.norm == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
    results = run(model, set_roots, args.resolutions, crop_pct=args.crop_pct, mean=mean, std=std,
                  batch_size=args.batch_size, num_workers=args.num_workers, real_json=args.real_json,
                  classes=classes, output_dir=args.output_dir or None)
    print(format_table(results))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
