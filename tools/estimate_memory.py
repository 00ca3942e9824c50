#!/usr/bin/env python
"""Peak training memory per GPU of any LazyConfig, estimated on a CPU without allocating.

Examples::

    python tools/estimate_memory.py --config-file configs/pretrain/eva_g_merged30m.py \\
        --num-gpus 128 --gpu-mem 40
    python tools/estimate_memory.py --config-file configs/classification/in1k_ft_560.py --num-gpus 8 \\
        model.net.grad_checkpointing=False
    python tools/estimate_memory.py --eval --config-file \\
        projects/ViTDet-EVA/configs/COCO/cascade_mask_rcnn_vitdet_eva_1536.py

The model is built on the meta device and one training step (forward, backward, clipping,
optimizer step) runs on fake tensors while every tensor's storage is followed
(``eva_core.memory``; docs/memory_planner.md). Prints the memory per component at the peak,
the peak against ``--gpu-mem`` (GiB) and, when it does not fit, switches that would make it fit as
ready-to-paste ``key=value`` overrides, each with its own estimate.

``--eval`` estimates one evaluation forward pass instead (``no_grad``, the test loader's input size,
``--eval-batch`` images). Steps whose sizes depend on values (a detector's NMS and RoI sampling)
take their largest size; the output then says UPPER BOUND.

Exit status 2: the config, an override or ``--num-gpus`` is invalid (the message names it).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

#: Published memory figures of the settings our configs reproduce, printed beside the estimate.
PAPER_FIGURES = {
    os.path.join("pretrain", "eva_g_merged30m.py"):
        "paper (Table: pre-training statistics): 26.5 GB max memory on A100-40GB "
        "(batch 32 per GPU, fp16, ZeRO-1, 128 GPUs, no activation checkpointing)",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="LazyConfig file (.py or .yaml)")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="data-parallel GPUs (total batch and ZeRO shards)")
    parser.add_argument("--gpu-mem", type=float, default=80.0, help="memory of one GPU in GiB (default 80)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="whose optimizer defaults to simulate (cuda: foreach AdamW)")
    parser.add_argument("--eval", action="store_true",
                        help="estimate one evaluation forward pass (no_grad) instead of a training step")
    parser.add_argument("--eval-batch", type=int, default=1, help="images per evaluation pass (default 1)")
    parser.add_argument("--no-suggestions", action="store_true", help="do not search for switches that fit")
    parser.add_argument("overrides", nargs="*",
                        help="config overrides key=value (as lazyconfig_train_net.py)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from eva_core.config import LazyConfig
    from eva_core import memory

    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that the teacher has no weights
    if args.gpu_mem <= 0:
        print(f"error: --gpu-mem={args.gpu_mem}: expected a positive number of GiB", file=sys.stderr)
        return 2
    try:
        cfg = LazyConfig.load(args.config_file)
        LazyConfig.apply_overrides(cfg, args.overrides)
        if not args.eval:
            memory.read_training_setup(cfg, args.num_gpus)
    except (KeyError, ValueError, TypeError) as e:
        print(f"error: {args.config_file}: {e}", file=sys.stderr)
        return 2
    if args.eval:
        try:
            report = memory.estimate_inference_memory(cfg, args.eval_batch)
        except (KeyError, ValueError, TypeError) as e:
            print(f"error: cannot build one evaluation pass of {args.config_file}: {e}", file=sys.stderr)
            return 2
        print(f"config: {args.config_file} {' '.join(args.overrides)}".rstrip())
        print(report.format_table(gpu_mem_gib=args.gpu_mem))
        print("not included: CUDA context, kernel workspaces and allocator fragmentation (about 0.5-2 GiB)")
        return 0
    try:
        report = memory.estimate_training_memory(cfg, args.num_gpus, args.device)
    except (KeyError, ValueError, TypeError) as e:
        print(f"error: cannot build one training step of {args.config_file} "
              f"(overrides: {' '.join(args.overrides) or 'none'}): {e}", file=sys.stderr)
        return 2
    print(f"config: {args.config_file} {' '.join(args.overrides)}".rstrip())
    print(report.format_table(gpu_mem_gib=args.gpu_mem))
    for suffix, text in PAPER_FIGURES.items():
        if os.path.normpath(args.config_file).endswith(suffix):
            print(f"{text}; our estimate: {report.peak_bytes / 1e9:.1f} GB ({report.peak_gib:.1f} GiB)")
    if report.peak_gib > args.gpu_mem and not args.no_suggestions:
        suggestions = memory.suggest_fixes(cfg, report, args.gpu_mem, args.device)
        print(memory.format_suggestions(suggestions, args.gpu_mem))
    print("not included: CUDA context, kernel workspaces and allocator fragmentation (about 0.5-2 GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
