#!/usr/bin/env python
"""Paired comparison on the toy world: a task trained from the toy MIM encoder vs from random init.

Each training seed trains the task twice, the same steps, data, heads' initialisation and augmentation
order (the global RNGs are seeded per run), once with ``backbone`` initialised from ``--encoder``
(the main job's ``mim_encoder.safetensors``) and once at random. It prints one row per seed, the mean of
each arm, the paired differences and how many seeds the MIM arm wins, and writes ``results.json``::

    python tools/toy_mim_vs_random.py --task detection \\
        --encoder output/toy_pipeline/mim_encoder.safetensors --label color --seeds 0 1 2 3 \\
        --steps 200 --out output/mim_vs_random/detection_color
    python tools/toy_mim_vs_random.py --task segmentation \\
        --encoder output/toy_pipeline/mim_encoder.safetensors --label color --img-size 128 \\
        --num-train 500 --steps 120 --seeds 0 1 2 3 \\
        --out output/mim_vs_random/segmentation_color

Tasks: ``detection`` (``vitdet_eva.toy_stage.toy_detection_config`` on ``make_coco``, EVA's evaluation
settings, box / mask AP50; a pre-trained backbone gets the stage's layer decay) and ``segmentation``
(``mask2former_eva.toy_stage.toy_segmentation_config`` on ``make_ade20k``, mIoU). ``--label``: the toy
classes, ``shape`` (what the task stages use) or ``color`` (what the toy CLIP teacher, and so the MIM
encoder, knows). The data are drawn once (``--data-seed``); the seeds vary the training only. Numbers
measured with it: docs/recipes/detection.md#toy-world-proof, docs/recipes/segmentation.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "projects" / "ViTDet-EVA", REPO / "projects" / "Mask2Former-EVA"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from vitdet_eva.toy_stage import ARCH_KEYS  # noqa: E402  (the encoder arguments every toy stage takes)

#: per task: the metrics reported (the first is the headline) and the defaults of the CLI
TASKS = {"detection": dict(metrics=("bbox/AP50", "segm/AP50"), img_size=128, num_train=160, num_val=40,
                           steps=200),
         "segmentation": dict(metrics=("mIoU",), img_size=64, num_train=1000, num_val=50, steps=300)}


def encoder_arch(encoder: Path | None) -> dict:
    """The encoder's architecture: ``encoder_arch`` of the pipeline's ``results.json`` beside the
    checkpoint, else the toy MIM recipe's (``configs/pretrain/toy.py``)."""
    if encoder is not None:
        results = Path(encoder).parent / "results.json"
        if results.is_file():
            arch = json.loads(results.read_text()).get("encoder_arch")
            if arch:
                return {k: arch[k] for k in ARCH_KEYS}
    from eva_core.config import LazyConfig

    cfg = LazyConfig.load(str(REPO / "configs" / "pretrain" / "toy.py"))
    return {k: cfg.model.encoder[k] for k in ARCH_KEYS}


def run_detection(paths: dict, out: Path, arch: dict, checkpoint: Path | None, steps: int, seed: int) -> dict:
    from vitdet_eva.toy_stage import EVA_EVAL, toy_detection_config, train_toy_detector

    cfg = toy_detection_config("coco", paths, out, steps, encoder_arch=arch, encoder_checkpoint=checkpoint,
                               seed=seed)
    cfg.model.roi_heads.update(EVA_EVAL)
    return train_toy_detector(cfg, seed)


def run_segmentation(paths: dict, out: Path, arch: dict, checkpoint: Path | None, steps: int, seed: int,
                     img_size: int) -> dict:
    from mask2former_eva.toy_stage import toy_segmentation_config, train_toy_segmentor

    cfg = toy_segmentation_config(paths, out, arch, checkpoint, img_size=img_size, max_iter=steps, seed=seed)
    _, metrics = train_toy_segmentor(cfg, seed)
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def sign_test_p(wins: int, n: int) -> float:
    """One-sided binomial p-value of at least ``wins`` wins in ``n`` fair coin flips."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def summarize(rows: list[dict], metric: str) -> dict:
    mim = np.array([r["mim"][metric] for r in rows])
    rnd = np.array([r["random"][metric] for r in rows])
    diff = mim - rnd
    wins = int((diff > 0).sum())
    return {"mim_mean": float(mim.mean()), "random_mean": float(rnd.mean()), "diff_mean": float(diff.mean()),
            "diff_sd": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0, "wins": wins, "n": len(diff),
            "sign_test_p": sign_test_p(wins, len(diff))}


def compare(task: str, encoder: Path, out: Path, seeds: Sequence[int], *, label: str = "shape",
            steps: int | None = None, img_size: int | None = None, num_train: int | None = None,
            num_val: int | None = None, data_seed: int = 0, log=print) -> dict:
    """Train ``task`` from ``encoder`` and from random init for every seed; returns (and writes to
    ``out/results.json``) ``{"rows": [{seed, mim, random}], "summary": {metric: ...}, ...}``."""
    from eva_core.data.toy_world import make_ade20k, make_coco

    if task not in TASKS:
        raise ValueError(f"--task {task!r}: expected one of {sorted(TASKS)}")
    encoder = Path(encoder)
    if not encoder.is_file():
        raise FileNotFoundError(f"--encoder {encoder}: no such checkpoint (the main job writes "
                                "output/toy_pipeline/mim_encoder.safetensors)")
    spec = TASKS[task]
    steps = steps or spec["steps"]
    img_size = img_size or spec["img_size"]
    num_train, num_val = num_train or spec["num_train"], num_val or spec["num_val"]
    out = Path(out)
    arch = encoder_arch(encoder)
    if task == "detection":
        paths = make_coco(out / "toy_world", num_train=num_train, num_val=num_val, img_size=img_size,
                          seed=data_seed, label=label)
    else:
        paths = make_ade20k(out / "toy_world", num_train=num_train, num_val=num_val, img_size=img_size,
                            seed=data_seed, label=label)
    rows = []
    for seed in seeds:
        row = {"seed": int(seed)}
        for arm, checkpoint in (("mim", encoder), ("random", None)):
            t = time.perf_counter()
            run_dir = out / f"{arm}_seed{seed}"
            if task == "detection":
                row[arm] = run_detection(paths, run_dir, arch, checkpoint, steps, int(seed))
            else:
                row[arm] = run_segmentation(paths, run_dir, arch, checkpoint, steps, int(seed), img_size)
            row[f"{arm}_seconds"] = time.perf_counter() - t
        rows.append(row)
        log(f"seed {seed}: " + "; ".join(f"{m} MIM {row['mim'][m]:.1f} vs random {row['random'][m]:.1f}"
                                         for m in spec["metrics"]))
    summary = {m: summarize(rows, m) for m in spec["metrics"]}
    for m, s in summary.items():
        log(f"{m}: MIM {s['mim_mean']:.1f} vs random {s['random_mean']:.1f} (mean of {s['n']}); paired "
            f"difference {s['diff_mean']:+.1f} (sd {s['diff_sd']:.1f}); MIM ahead on {s['wins']} of {s['n']} "
            f"seeds (sign test p = {s['sign_test_p']:.3f})")
    results = {"task": task, "label": label, "encoder": str(encoder), "encoder_arch": arch, "steps": steps,
               "img_size": img_size, "num_train": num_train, "num_val": num_val, "data_seed": data_seed,
               "seeds": [int(s) for s in seeds], "rows": rows, "summary": summary}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--encoder", required=True, type=Path, help="the toy MIM encoder (safetensors)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--label", choices=("shape", "color"), default="shape")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (task default)")
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--num-train", type=int, default=None)
    parser.add_argument("--num-val", type=int, default=None)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return compare(args.task, args.encoder, args.out, args.seeds, label=args.label, steps=args.steps,
                   img_size=args.img_size, num_train=args.num_train, num_val=args.num_val,
                   data_seed=args.data_seed)


if __name__ == "__main__":
    main()
