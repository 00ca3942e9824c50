#!/usr/bin/env python
"""Export an EVA-CLIP checkpoint to open_clip's layout (``open_clip.create_model(name)`` loads it strictly).

Examples::

    # a released EVA-CLIP file (visual.* + OpenAI text names) or our training checkpoint -> EVA01-g-14
    python tools/export_open_clip.py eva_clip_psz14.pt EVA01-g-14.safetensors --verify
    # then, in open_clip:  m = open_clip.create_model("EVA01-g-14", pretrained="EVA01-g-14.safetensors")

    # another size: also writes the open_clip config json (and needs its timm trunk registered at load
    # time: clip.model.register_open_clip_config does both)
    python tools/export_open_clip.py tiny.pth tiny_open_clip.pt --model eva_clip_tiny \\
        --open-clip-name EvaCLIP-tiny --config-dir configs/open_clip --verify

Input layouts: every one ``eva_core.load_checkpoint`` reads for a whole EVA-CLIP (``clip/layouts.py``,
``docs/recipes/clip.md#checkpoint-layouts``). The load is strict: a file that does not fill the model
exactly stops with exit status 2 naming the keys.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from typing import Sequence

import eva_core
from clip.model import (
    create_eva_clip,
    list_eva_clip_models,
    register_open_clip_config,
    to_open_clip_state_dict,
)
from eva_core.checkpoint import save_atomic
from eva_core.checkpoint.loader import CheckpointMismatchError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("input", help="EVA-CLIP checkpoint (released, open_clip or ours)")
    p.add_argument("output", help="file to write: .safetensors or a torch file")
    p.add_argument("--model", default="eva_clip_g14", choices=list_eva_clip_models(), help="EVA-CLIP config")
    p.add_argument("--attn-inner-norm", action="store_true",
                   help="vision tower with inner_attn_ln (later EVA-CLIP releases)")
    p.add_argument("--open-clip-name", default=None,
                   help="open_clip model name (default: EVA01-g-14 for eva_clip_g14; required otherwise)")
    p.add_argument("--config-dir", default=None,
                   help="where to write <open-clip-name>.json (non-EVA-g models)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="fully unpickle the input (trusted files only)")
    p.add_argument("--verify", action="store_true",
                   help="build the open_clip model, load the output strictly and report")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    vision = {"attn_inner_norm": True} if args.attn_inner_norm else {}
    model = create_eva_clip(args.model, vision_cfg=vision)
    try:
        report = eva_core.load_checkpoint(model, args.input, strict=True, allow_pickle=args.allow_pickle)
    except (CheckpointMismatchError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report)
    name = args.open_clip_name
    if name is None:
        if args.model != "eva_clip_g14":
            print("error: --open-clip-name is required for models other than eva_clip_g14", file=sys.stderr)
            return 2
        name = "EVA01-g-14"
    if name == "EVA01-g-14" and args.attn_inner_norm:
        print("error: open_clip's EVA01-g-14 has no inner_attn_ln; pass --open-clip-name for a config of "
              "its own", file=sys.stderr)
        return 2
    if name != "EVA01-g-14":
        path = register_open_clip_config(name, model, args.config_dir or tempfile.mkdtemp())
        print(f"open_clip config: {path}")
    sd = to_open_clip_state_dict(model)
    out = save_atomic(sd, args.output)
    print(f"{len(sd)} tensors -> {out} (open_clip model {name!r})")
    if args.verify:
        import open_clip

        oc = open_clip.create_model(name, load_weights=False)
        result = oc.load_state_dict(sd, strict=True)
        print(f"open_clip {name}: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
