"""Command-line flags and per-process setup shared by every training script (detectron2 style)."""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eva_core.config import LazyConfig
from eva_core.utils import comm
from eva_core.utils.logging import setup_logger

__all__ = ["default_argument_parser", "default_setup", "seed_all_rng", "set_deterministic"]


def default_argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """The flags of ``tools/lazyconfig_train_net.py``.

    Trailing ``key=value`` words (``opts``) override config entries, e.g.
    ``train.max_iter=100 optimizer.lr=1e-4``.
    """
    parser = argparse.ArgumentParser(
        epilog=epilog or "Example: lazyconfig_train_net.py --config-file configs/x.py --num-gpus 8 "
        "train.max_iter=1000 optimizer.lr=1e-4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to a .py or .yaml config")
    parser.add_argument("--resume", action="store_true",
                        help="resume from the last checkpoint in train.output_dir, if there is one")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate a checkpoint")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="processes per machine (one per GPU; CPU processes without CUDA)")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine")
    parser.add_argument("--dist-url", default="auto",
                        help="tcp://HOST:PORT of machine 0; 'auto' picks a free local port")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow fully unpickling checkpoints (runs code stored in them: trusted files only)")
    parser.add_argument("opts", default=[], nargs=argparse.REMAINDER,
                        help="config overrides as key=value pairs at the end of the command")
    return parser


def seed_all_rng(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Ask torch for deterministic kernels (slower); ``False`` leaves torch's defaults alone."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def default_setup(cfg: Any, args: argparse.Namespace) -> logging.Logger:
    """Prepare this process for a run described by ``cfg``.

    Creates ``train.output_dir``; rank 0 saves the full config there as ``config.yaml``;
    logs to the console (rank 0) and to ``log.txt`` in the output dir (``log.txt.rank{r}`` on
    other ranks); seeds python, numpy and torch with ``train.seed + rank`` (a negative or missing
    seed draws a random one, which is logged); asks for deterministic kernels when
    ``train.deterministic`` is true; sets ``torch.backends.cudnn.benchmark`` to
    ``train.cudnn_benchmark`` (default False, as detectron2).

    Raises:
        ValueError: ``train.deterministic`` and ``train.cudnn_benchmark`` are both true.

    Returns:
        the ``eva_core`` logger.
    """
    train = cfg.train
    deterministic = bool(train.get("deterministic", False))
    benchmark = bool(train.get("cudnn_benchmark", False))
    if deterministic and benchmark:
        raise ValueError("train.cudnn_benchmark=True conflicts with train.deterministic=True: "
                         "cuDNN autotuning picks kernels by timing; set one of them to False")
    output_dir = train.get("output_dir")
    rank = comm.get_rank()
    if output_dir and comm.is_main_process():
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    comm.synchronize()
    logger = setup_logger(output_dir)
    logger.info("rank %d of %d, local rank %d; python %s; torch %s; cuda %s", rank,
                comm.get_world_size(), comm.get_local_rank(), sys.version.split()[0],
                torch.__version__, torch.cuda.is_available())
    logger.info("command line: %s", " ".join(sys.argv))
    if getattr(args, "config_file", ""):
        logger.info("config file %s", args.config_file)
    if output_dir and comm.is_main_process():
        path = LazyConfig.save(cfg, Path(output_dir) / "config.yaml")
        logger.info("full config saved to %s", path)
    seed = train.get("seed", 0)
    seed = int(seed) if seed is not None and seed >= 0 else random.SystemRandom().randrange(2**31)
    seed_all_rng(seed + rank)
    logger.info("seed %d (+ rank %d)", seed, rank)
    set_deterministic(deterministic)
    # detectron2's default: autotuning pays off only when input shapes repeat
    torch.backends.cudnn.benchmark = benchmark
    return logger
