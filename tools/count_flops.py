#!/usr/bin/env python
"""Parameters and GMACs / GFLOPs of any registered EVA model at any resolution.

Examples::

    python tools/count_flops.py eva_giant_patch14_224                 # ~1.01B params, ~267 GMACs
    python tools/count_flops.py eva_giant_patch14_560 --img-size 560
    python tools/count_flops.py eva_base_patch16_224 --fvcore         # also trace with fvcore
    python tools/count_flops.py eva_giant_patch16_vitdet_1280 --img-size 1280
    python tools/count_flops.py eva_tiny_patch16_224 --set depth=6 --set num_classes=0

Parameters are counted on the meta device (no weights are allocated, so EVA-g costs nothing).
MACs come from a closed-form count of every matrix product (patch embedding, qkv, attention
``q @ k^T`` and ``attn @ v`` in global or windowed blocks, decomposed relative positions, proj,
MLP, head) plus LayerNorms as fvcore counts them. ``--fvcore`` also builds the real model and runs
fvcore's ``FlopCountAnalysis`` with the math attention path, because fvcore does not see inside
fused SDPA kernels; the two counts agree (tests/test_encoder_flops.py). fvcore counts one
multiply-add as one "flop", i.e. MACs; GFLOPs = 2 x GMACs.
"""
from __future__ import annotations

import argparse
import ast
import math
import sys
from typing import Any, Sequence

import torch


def build_meta(name: str, **overrides: Any):
    """The registered model on the meta device (shapes only)."""
    import eva_core

    with torch.device("meta"):
        return eva_core.create_model(name, **overrides)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _ln_macs(tokens: int, dim: int) -> int:
    # fvcore's layer_norm handler: 5 ops per element with an affine transform
    return 5 * tokens * dim


def analytic_macs(model: torch.nn.Module, img_size: int | Sequence[int], batch: int = 1) -> int:
    """Closed-form multiply-accumulate count of one forward pass of an :class:`Eva` model."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    ph, pw = model.patch_size
    if h % ph or w % pw:
        raise ValueError(f"image size {(h, w)} is not a multiple of the patch size {(ph, pw)}")
    gh, gw = h // ph, w // pw
    c = model.embed_dim
    in_chans = model.patch_embed.proj.in_channels
    n = gh * gw + model.num_prefix_tokens
    macs = gh * gw * c * in_chans * ph * pw
    for blk in model.blocks:
        attn = blk.attn
        hidden = blk.mlp.fc1.out_features
        macs += _ln_macs(n, c) * 2
        if blk.window_size > 0:
            ws = blk.window_size
            n_win = math.ceil(gh / ws) * math.ceil(gw / ws)
            seqs, length, grid = n_win, ws * ws, (ws, ws)
        else:
            seqs, length, grid = 1, n, (gh, gw)
        attn_tokens = seqs * length  # windowed blocks project the zero-padded grid too
        macs += attn_tokens * c * 4 * c + 2 * n * c * hidden  # qkv + proj, fc1 + fc2
        if not isinstance(attn.norm, torch.nn.Identity):
            macs += _ln_macs(attn_tokens, c)
        if not isinstance(blk.mlp.norm, torch.nn.Identity):
            macs += _ln_macs(n, hidden)
        macs += seqs * 2 * length * length * c  # q @ k^T and attn @ v over all heads
        if attn.use_rel_pos:
            spatial = grid[0] * grid[1]
            macs += seqs * spatial * (grid[0] + grid[1]) * c  # the two decomposed einsums
    if not isinstance(model.norm, torch.nn.Identity):
        macs += _ln_macs(n, c)
    if not isinstance(model.fc_norm, torch.nn.Identity):
        macs += _ln_macs(1 if model.global_pool else n, c)
    if isinstance(model.head, torch.nn.Linear):
        macs += c * model.head.out_features
    return macs * batch


def fvcore_macs(model: torch.nn.Module, img_size: int | Sequence[int]) -> int:
    """fvcore ``FlopCountAnalysis`` total (MACs) for one image, attention on the math path."""
    from fvcore.nn import FlopCountAnalysis

    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    model = model.eval()
    prev = [blk.attn.attn_impl for blk in model.blocks]
    model.set_attn_impl("math")  # fused SDPA is opaque to fvcore; the math path exposes both matmuls
    try:
        with torch.no_grad():
            fca = FlopCountAnalysis(model, torch.zeros(1, model.patch_embed.proj.in_channels, h, w))
            fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return int(fca.total())
    finally:
        for blk, impl in zip(model.blocks, prev):
            blk.attn.attn_impl = impl


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("model", help="registered name (see eva_core.list_models())")
    p.add_argument("--img-size", type=int, nargs="+", default=None,
                   help="input size (H [W]); default: the model's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="constructor override")
    p.add_argument("--fvcore", action="store_true", help="also build the real model and trace it with fvcore")
    args = p.parse_args(argv)
    overrides = _parse_overrides(args.set)
    meta = build_meta(args.model, **overrides)
    size = tuple(args.img_size) if args.img_size else tuple(meta.patch_embed.img_size)
    size = size * 2 if len(size) == 1 else size
    n_params = count_params(meta)
    macs = analytic_macs(meta, size)
    print(f"{args.model} @ {size[0]}x{size[1]}: {n_params:,} params ({n_params / 1e6:.1f}M), "
          f"{macs / 1e9:.2f} GMACs = {2 * macs / 1e9:.2f} GFLOPs (analytic)")
    if args.fvcore:
        import eva_core

        real = eva_core.create_model(args.model, **overrides)
        fv = fvcore_macs(real, size)
        print(f"  fvcore: {fv / 1e9:.2f} GMACs = {2 * fv / 1e9:.2f} GFLOPs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
