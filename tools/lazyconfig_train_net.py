#!/usr/bin/env python
"""Train or evaluate any recipe in ``configs/`` (detectron2's ``lazyconfig_train_net.py``).

    python tools/lazyconfig_train_net.py --config-file configs/classification/toy_imagefolder.py \
        --num-gpus 2 train.output_dir=output/toy train.max_iter=300
    python tools/lazyconfig_train_net.py --config-file output/toy/config.yaml --eval-only \
        train.init_checkpoint=output/toy/model_final.pth

The model, data, optimizer and schedule all come from the config; ``key=value`` words at the end
override entries. An unknown key stops the command (exit status 2) before anything is created.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from eva_core.config import ConfigFileError, LazyConfig, UnknownConfigKeyError
from eva_core.engine.defaults import default_argument_parser, default_setup
from eva_core.engine.launch import launch
from eva_core.utils import comm

logger = logging.getLogger("eva_core")


def load_config(args: argparse.Namespace):
    """The config file with the command-line overrides applied (``--allow-pickle`` included)."""
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    if args.allow_pickle:
        cfg.train.allow_pickle = True
    return cfg


def print_results(results: dict) -> None:
    """Rank 0 prints the final metrics as one ``results: {json}`` line (for scripts and tests)."""
    if comm.is_main_process():
        print("results: " + json.dumps(results, sort_keys=True, default=float), flush=True)


def do_test(cfg, model) -> dict:
    """Evaluate ``model`` on every set of ``dataloader.test`` with ``dataloader.evaluator``
    (``{dataset_name: results}`` when there are several); rank 0 logs the results table."""
    from eva_core.engine.defaults import build_eval_function
    from eva_core.evaluation import print_csv_format

    eval_fn = build_eval_function(cfg, model)
    if eval_fn is None:
        logger.warning("the config has no dataloader.test or no dataloader.evaluator: nothing to evaluate")
        return {}
    results = eval_fn()
    if comm.is_main_process():
        print_csv_format(results)
    return results


def do_train(args: argparse.Namespace, cfg) -> dict:
    """Train (``--resume``: from the last checkpoint of ``train.output_dir``) with the default
    hooks (:func:`eva_core.engine.defaults.default_hooks`); returns the last evaluation's results
    (the evaluation hook has logged their table)."""
    from eva_core.engine.defaults import train_from_config

    return train_from_config(cfg, resume=args.resume).results


def main(args: argparse.Namespace) -> dict:
    # engine modules are imported in the worker: keeps --help fast
    from eva_core.engine.checkpointer import Checkpointer
    from eva_core.engine.config_build import build_model

    cfg = load_config(args)
    default_setup(cfg, args)
    if args.eval_only:
        # the model and the test sets only: no train loader, no optimizer
        model = build_model(cfg)
        # init_checkpoint when one is given, else the last checkpoint of train.output_dir
        use_last = args.resume or not cfg.train.init_checkpoint
        allow_pickle = bool(cfg.train.get("allow_pickle", False))
        checkpointer = Checkpointer(model, cfg.train.output_dir, allow_pickle=allow_pickle)
        if use_last and not checkpointer.has_checkpoint():
            raise FileNotFoundError(
                f"--eval-only: no train.init_checkpoint given and no checkpoint in "
                f"train.output_dir={cfg.train.output_dir!r}; nothing to evaluate")
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=use_last)
        results = do_test(cfg, model)
    else:
        results = do_train(args, cfg)
    print_results(results)
    return results


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    if not args.config_file:
        print("error: --config-file is required", file=sys.stderr)
        sys.exit(2)
    try:  # validate in the parent: a typo must fail before output dirs or processes exist
        cfg = load_config(args)
    except (UnknownConfigKeyError, ConfigFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    init = cfg.train.get("init_checkpoint")
    if init and not Path(init).is_file():
        print(f"error: train.init_checkpoint={init!r} does not exist", file=sys.stderr)
        sys.exit(2)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        timeout=cfg.train.get("dist_timeout"),
    )


if __name__ == "__main__":
    invoke_main()
