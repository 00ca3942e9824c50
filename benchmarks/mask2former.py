#!/usr/bin/env python
"""Mask2Former-EVA inference: deformable attention and the whole segmentor, ours vs transformers.

1. Multi-scale deformable attention (``benchmarks/msda.py``'s inputs and timing, forward + backward):
   ours vs transformers' ``multi_scale_deformable_attention`` and our ``torch.compile``'d path on
   the device it runs on (CPU: Inductor's C++ backend; its first, compiling step is timed apart),
   with the ratios transformers / each and ours (pure) / each (> 1: that one is faster).
2. Inference per crop (forward, eval mode, no grad), median time and peak memory
   (``benchmarks/step_memory.py``: the CUDA allocator's peak, on CPU the peak-RSS mark):
   * ours, whole segmentor (EVA encoder + ViT-Adapter + Mask2Former head + semantic scores);
   * ours, head only (``Mask2FormerHead`` + semantic scores) on the backbone's 4 maps;
   * transformers' ``Mask2FormerForUniversalSegmentation`` head (its ``Mask2FormerPixelDecoder``,
     ``Mask2FormerTransformerModule`` and class predictor, with the same semantic-score
     post-processing) at the same width, queries, layers and heads, on the same 4 maps.
   Ratios are transformers / ours (> 1: ours is faster or smaller). All in the same process, the
   implementations alternating step by step (same machine load).

Defaults are CPU-sized (a 64-wide, 2-block encoder at 256 px, head width 64); ``--eva-g`` uses the
release's head (width 1024, 200 queries, 6 + 8 layers, 32 heads) on the EVA-g adapter (GPU).

Examples::

    python benchmarks/mask2former.py
    python benchmarks/mask2former.py --msda-only --crop 512 --width 256 --heads 8 --batch 2
    python benchmarks/mask2former.py --device cuda --crop 896 --eva-g
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import msda as msda_bench  # noqa: E402  (benchmarks/msda.py: inputs and timing of the kernels)
from step_memory import peak_step_memory_mib  # noqa: E402


def msda_section(args: argparse.Namespace, device: torch.device) -> None:
    from mask2former_eva.ms_deform_attn import (compile_failure, compiled_multi_scale_deformable_attention,
                                                fast_path_available, multi_scale_deformable_attention)
    from transformers.models.mask2former.modeling_mask2former import \
        multi_scale_deformable_attention as hf_msda

    ns = argparse.Namespace(img_size=args.crop, strides=[8, 16, 32], d_model=args.width, heads=args.heads,
                            points=4, batch=args.batch)
    inputs, shapes = msda_bench.make_inputs(ns, device)
    impls = {"ours": multi_scale_deformable_attention, "transformers": hf_msda}
    compile_s = None
    if not args.no_compiled:
        # on every device (on CPU: Inductor's C++ backend); the first step compiles forward and backward
        impls["ours_compiled"] = compiled_multi_scale_deformable_attention()
        compile_s = msda_bench.step(impls["ours_compiled"], inputs, shapes, device)
        failure = compile_failure(device, inputs[0].dtype)
        if failure is not None:
            print(f"  (torch.compile failed on {device}, the compiled path fell back to ours: {failure})")
            del impls["ours_compiled"]
    times = {name: [] for name in impls}
    for i in range(args.warmup + args.iters):
        for name, fn in impls.items():
            t = msda_bench.step(fn, inputs, shapes, device)
            if i >= args.warmup:
                times[name].append(t)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"[deformable attention] levels {shapes}, d_model {args.width}, heads {args.heads}, 4 points, "
          f"batch {args.batch}, forward + backward, device {device}, torch threads {torch.get_num_threads()}")
    for name, med in median.items():
        print(f"  {name:>14}: {med * 1e3:8.1f} ms   transformers / {name} = "
              f"{median['transformers'] / med:.2f}x   ours / {name} = {median['ours'] / med:.2f}x")
    if compile_s is not None and "ours_compiled" in median:
        print(f"  ours_compiled: first step (compiles forward + backward) {compile_s:.1f} s; selected "
              f"automatically (fast_path=None) on {device}: {fast_path_available(device)}")


def build_models(args: argparse.Namespace):
    from transformers import Mask2FormerConfig
    from transformers.models.mask2former import modeling_mask2former as hf

    from eva_core.models import create_model
    from mask2former_eva.mask2former_head import Mask2FormerHead
    from mask2former_eva.segmentor import EncoderDecoderMask2Former
    from mask2former_eva.vit_adapter import EVAAdapter

    if args.eva_g:
        encoder = create_model("eva_giant_patch16_224", num_classes=0, global_pool="", img_size=args.crop,
                               use_post_transformer_norm=False)
        backbone = EVAAdapter(encoder, conv_inplane=64, deform_num_heads=16, deform_ratio=0.5,
                              cffn_ratio=0.25)
    else:
        encoder = create_model("eva_tiny_patch16_224", num_classes=0, global_pool="", img_size=args.crop,
                               use_post_transformer_norm=False, embed_dim=64, depth=2, num_heads=4,
                               mlp_ratio=2.0)
        backbone = EVAAdapter(encoder, interaction_indexes=[[0, 0], [1, 1]], add_vit_feature=False,
                              conv_inplane=16, deform_num_heads=4, deform_ratio=0.5, cffn_ratio=0.25)
    channels = backbone.embed_dim if hasattr(backbone, "embed_dim") else encoder.embed_dim
    w, heads, ffn = args.width, args.heads, args.ffn
    head = Mask2FormerHead([channels] * 4, args.num_classes, w, w, num_queries=args.queries,
                           pixel_decoder_layers=args.encoder_layers, pixel_decoder_heads=heads,
                           pixel_decoder_ffn=ffn, decoder_layers=args.decoder_layers, decoder_heads=heads,
                           decoder_ffn=ffn)
    ours = EncoderDecoderMask2Former(backbone, head, test_mode="whole")
    # transformers counts the decoder's first prediction as a layer: ours + 1 (tests/test_mask2former_head.py)
    config = Mask2FormerConfig(feature_size=w, mask_feature_size=w, hidden_dim=w, encoder_feedforward_dim=ffn,
                               encoder_layers=args.encoder_layers, decoder_layers=args.decoder_layers + 1,
                               num_attention_heads=heads, dim_feedforward=ffn, num_queries=args.queries,
                               num_labels=args.num_classes, dropout=0.0, pre_norm=False,
                               enforce_input_projection=False, common_stride=4,
                               feature_strides=[4, 8, 16, 32])
    pixel_decoder = hf.Mask2FormerPixelDecoder(config, feature_channels=[channels] * 4)
    transformer = hf.Mask2FormerTransformerModule(in_features=w, config=config)
    class_predictor = torch.nn.Linear(w, args.num_classes + 1)
    return ours, (pixel_decoder, transformer, class_predictor)


def hf_semantic_scores(hf_head, features, size):
    """transformers' head on the 4 maps, then the semantic scores ours computes (class x mask)."""
    from mask2former_eva.mask2former_head import semantic_inference

    pixel_decoder, transformer, class_predictor = hf_head
    decoded = pixel_decoder(features, return_dict=True)
    out = transformer(list(decoded.multi_scale_features), decoded.mask_features)
    logits = class_predictor(out.intermediate_hidden_states[-1].transpose(0, 1))
    scores = semantic_inference(logits, out.masks_queries_logits[-1])
    return torch.nn.functional.interpolate(scores, size=size, mode="bilinear", align_corners=False)


def model_section(args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    ours, hf_head = build_models(args)
    ours = ours.to(device).eval()
    hf_head = tuple(m.to(device).eval() for m in hf_head)
    images = torch.randn(args.batch, 3, args.crop, args.crop, device=device)
    with torch.no_grad():
        features = ours.backbone(images)
    size = images.shape[-2:]
    runs = {
        "ours (whole segmentor)": lambda: ours({"image": images}),
        "ours (head)": lambda: ours.decode_head.semantic_scores(features, size=size),
        "transformers (head)": lambda: hf_semantic_scores(hf_head, features, size),
    }
    times = {name: [] for name in runs}
    memory = {}

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.no_grad():
        for name, fn in runs.items():
            fn()  # first call: lazy allocations and caches do not count as the step's peak
            memory[name] = peak_step_memory_mib(fn, str(device))
        for i in range(args.warmup + args.iters):
            for name, fn in runs.items():
                t = timed(fn)
                if i >= args.warmup:
                    times[name].append(t / args.batch)
    params = {"ours (whole segmentor)": sum(p.numel() for p in ours.parameters()),
              "ours (head)": sum(p.numel() for p in ours.decode_head.parameters()),
              "transformers (head)": sum(p.numel() for m in hf_head for p in m.parameters())}
    print(f"[inference per crop] {args.crop}x{args.crop}, batch {args.batch}, head width {args.width}, "
          f"{args.queries} queries, {args.encoder_layers} + {args.decoder_layers} layers, "
          f"{args.heads} heads, "
          f"{args.num_classes} classes, device {device}, torch threads {torch.get_num_threads()}")
    for name in runs:
        print(f"  {name:>24}: {statistics.median(times[name]) * 1e3:8.1f} ms / crop, "
              f"peak +{memory[name]:8.1f} MiB, {params[name] / 1e6:.2f}M params")
    t_ratio = statistics.median(times["transformers (head)"]) / statistics.median(times["ours (head)"])
    m_ratio = memory["transformers (head)"] / max(memory["ours (head)"], 1e-6)
    print(f"  head: transformers / ours time = {t_ratio:.2f}x, peak memory = {m_ratio:.2f}x")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--width", type=int, default=64, help="head width (1024 in the release)")
    parser.add_argument("--ffn", type=int, default=256, help="FFN width (4096 in the release)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (32 in the release)")
    parser.add_argument("--queries", type=int, default=100, help="queries (200 in the release)")
    parser.add_argument("--encoder-layers", type=int, default=6, help="pixel-decoder layers")
    parser.add_argument("--decoder-layers", type=int, default=8, help="masked-attention decoder layers")
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--eva-g", action="store_true", help="EVA-g adapter and the release's head sizes")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--skip-msda", action="store_true")
    parser.add_argument("--msda-only", action="store_true", help="only the deformable-attention section")
    parser.add_argument("--no-compiled", action="store_true", help="do not time the torch.compile'd path")
    args = parser.parse_args(argv)
    if args.eva_g:
        args.width, args.ffn, args.heads, args.queries = 1024, 4096, 32, 200
    device = torch.device(args.device)
    if not args.skip_msda:
        msda_section(args, device)
    if not args.msda_only:
        model_section(args, device)


if __name__ == "__main__":
    main()
