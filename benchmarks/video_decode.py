#!/usr/bin/env python
"""Decode throughput of the video train loader against the video model's training throughput.

Writes toy-world Kinetics mp4s (``eva_core.data.toy_world.make_kinetics``), then reports

* ``loader``: clips/s of eva_core's train loader over :class:`video.data.KineticsListDataset`
  (PyAV decode, TSN sampling, :class:`video.data.VideoTrainTransform`), after one warm-up batch;
* ``model``: clips/s of one training step (forward + backward) of a registered video model at the same
  frames and size (``--model``; median over ``--iters`` steps),

so one can see whether decoding or the model bounds a run (the loader needs ``model / loader`` workers
to keep up). The numbers are machine-dependent; nothing is asserted.

Examples::

    python benchmarks/video_decode.py                                  # CPU: 8 frames at 112, tiny model
    python benchmarks/video_decode.py --img-size 224 --device cuda --workers 8 --batch 16
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from eva_core.data.toy_world import make_kinetics
from video import create_video_model
from video.data import KineticsListDataset, VideoTrainTransform, measure_decode_throughput


def model_clips_per_s(name: str, num_frames: int, img_size: int, batch: int, iters: int, device: str,
                      depth: int | None) -> float:
    overrides = dict(num_frames=num_frames, img_size=img_size, num_classes=4)
    if depth is not None:
        overrides["depth"] = depth
    model = create_video_model(name, **overrides).to(device).train()
    clips = torch.randn(batch, num_frames, 3, img_size, img_size, device=device)
    times = []
    for step in range(iters + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(clips).sum().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step:  # the first step warms up kernels and allocator
            times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return batch / statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8, help="T, frames per clip")
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--video-size", type=int, default=64, help="side of the toy mp4s")
    parser.add_argument("--video-frames", type=int, default=32, help="frames of each toy mp4")
    parser.add_argument("--per-class", type=int, default=4, help="toy videos per class (4 classes)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=4, help="timed loader batches")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--model", default="eva_video_tiny_patch14_224_f8")
    parser.add_argument("--depth", type=int, default=None, help="override the model depth")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_kinetics(tmp, train_per_class=args.per_class, val_per_class=1, img_size=args.video_size,
                              num_frames=args.video_frames)
        dataset = KineticsListDataset(paths["kinetics_train_list"], paths["kinetics_root"],
                                      num_frames=args.frames, transform=VideoTrainTransform(args.img_size))
        loader = measure_decode_throughput(dataset, batch_size=args.batch, num_batches=args.batches,
                                           num_workers=args.workers)
    model = model_clips_per_s(args.model, args.frames, args.img_size, args.batch, args.iters, args.device,
                              args.depth)
    result = {"frames": args.frames, "img_size": args.img_size, "workers": args.workers,
              "loader_clips_per_s": round(loader["clips_per_s"], 2), "model": args.model,
              "model_train_clips_per_s": round(model, 2),
              "workers_needed": round(model / loader["clips_per_s"] * max(args.workers, 1), 2)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
