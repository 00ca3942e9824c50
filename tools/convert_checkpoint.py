#!/usr/bin/env python
"""Convert an EVA checkpoint of any supported layout to ours (safetensors or torch file).

Examples::

    # official MIM file -> safetensors in our layout (mask_token / lm_head kept)
    python tools/convert_checkpoint.py eva_psz14.pt eva_psz14.safetensors

    # the eva_psz14to16 layout used by detection / segmentation: kernel 14 -> 16, grid 16x16 -> 14x14
    python tools/convert_checkpoint.py eva_psz14.pt eva_psz14to16.safetensors --patch-size 16 --img-size 224

    # EVA-CLIP vision tower (keys under visual.), fp16 -> fp32
    python tools/convert_checkpoint.py eva_clip_psz14.pt eva_clip_vision.safetensors --dtype float32

    # check the result against a registered model (prints the load report, fails on mismatch)
    python tools/convert_checkpoint.py eva_psz14.pt out.safetensors --verify eva_giant_patch14_mim_224

    # a layout a project registered (importable module that calls eva_core.checkpoint.register_layout)
    python tools/convert_checkpoint.py video.pth image.safetensors \\
        --import my_project.layouts --layout my_video

Layouts read: every registered one (``--list-layouts``): ours / timm ``Eva``, EVA-01 MIM and
fine-tuned files, EVA-CLIP (``visual.``), open_clip timm trunks (``visual.trunk.``), detectron2 ViTDet
(``backbone.net.``), see ``docs/recipes/encoder.md#checkpoint-key-layouts``; wrappers ``model_ema`` /
``model`` / ``module`` / ``state_dict``. Files are read without unpickling code unless
``--allow-pickle`` is given.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

import torch

from eva_core.checkpoint import load_file, save_atomic
from eva_core.checkpoint.layouts import convert_state_dict, get_layout, list_layouts

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("input", nargs="?", help="checkpoint to read (.pt / .pth / .bin / .safetensors)")
    p.add_argument("output", nargs="?", help="file to write; .safetensors or a torch file (.pth / .pt)")
    p.add_argument("--layout", default=None, help="registered layout name (default: detected)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module first (one that registers project layouts)")
    p.add_argument("--list-layouts", action="store_true", help="print the registered layouts and exit")
    p.add_argument("--patch-size", type=int, default=None, help="resample the patch kernel to this size")
    p.add_argument("--img-size", type=int, default=None,
                   help="resample the position grid to img_size // patch_size")
    p.add_argument("--prefix", default=None, help="key prefix to strip (default: detected from the layout)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default=None, help="cast floating tensors")
    p.add_argument("--no-ema", action="store_true", help="take 'model' even if the file also has 'model_ema'")
    p.add_argument("--allow-pickle", action="store_true",
                   help="fully unpickle the input (runs code stored in it: trusted files only)")
    p.add_argument("--verify", metavar="MODEL", default=None,
                   help="load the result into this registered model and fail unless every key matches")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for module in args.imports:
        importlib.import_module(module)
    if args.list_layouts:
        for name in list_layouts():
            lay = get_layout(name)
            print(f"{name:20s} priority {lay.priority:3d}  {lay.description}")
        return 0
    if not args.input or not args.output:
        parser.error("input and output are required (unless --list-layouts)")
    obj = load_file(args.input, allow_pickle=args.allow_pickle)
    sd, layout, notes = convert_state_dict(
        obj, prefix=args.prefix, layout=args.layout, patch_size=args.patch_size, img_size=args.img_size,
        use_ema=not args.no_ema, dtype=_DTYPES[args.dtype] if args.dtype else None)
    out = save_atomic(sd if args.output.endswith(".safetensors") else {"model": sd}, args.output)
    n = sum(v.numel() for v in sd.values())
    print(f"{args.input}: layout {layout}, {len(sd)} tensors, {n:,} values -> {out}")
    for note in notes:
        print(f"  {note}")
    if args.verify:
        import eva_core

        overrides = {}
        w = sd.get("patch_embed.proj.weight")
        if w is not None:
            overrides["patch_size"] = int(w.shape[-1])
        if args.img_size:
            overrides["img_size"] = args.img_size
        with torch.device("meta"):
            model = eva_core.create_model(args.verify, **overrides)
        model.to_empty(device="cpu")
        report = eva_core.load_checkpoint(model, str(out))
        print(report)
        # MIM files verified against a classifier legitimately lack head.* only
        if report.unexpected or report.mismatched or report.missing:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
