#!/usr/bin/env python
"""Train or evaluate any recipe in ``configs/`` (detectron2's ``lazyconfig_train_net.py``).

    python tools/lazyconfig_train_net.py --config-file configs/classification/toy_imagefolder.py \
        --num-gpus 2 train.output_dir=output/toy train.max_iter=300
    python tools/lazyconfig_train_net.py --config-file output/toy/config.yaml --eval-only \
        train.init_checkpoint=output/toy/model_final.pth

The model, data, optimizer and schedule all come from the config; ``key=value`` words at the end
override entries. An unknown key stops the command (exit status 2) before anything is created.

Every checkpoint load logs one line (file, layout, tensors loaded / total, missing, unexpected,
shape-mismatched). These refuse the run with exit status 2 and a message naming the file or key:
an ``--eval-only`` checkpoint that fills less than ``train.min_loaded.eval`` of the model (default
every tensor), an init checkpoint that fills less than ``train.min_loaded.init`` (default every
encoder tensor), and a ``--resume`` override the checkpoint's state supersedes (batch size, seeds;
see :mod:`eva_core.engine.resume`). ``config.yaml`` records the training run; ``--eval-only``
writes ``config_eval.yaml`` and ``--resume`` ``config_resume_<n>.yaml`` next to it.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from eva_core.checkpoint import CheckpointMismatchError
from eva_core.config import ConfigFileError, LazyConfig, UnknownConfigKeyError
from eva_core.engine.defaults import default_argument_parser, default_setup
from eva_core.engine.launch import launch
from eva_core.engine.resume import ResumeConfigError
from eva_core.utils import comm

logger = logging.getLogger("eva_core")

#: errors that refuse a run for a reason the user can fix: exit status 2 with the message
REFUSALS = (CheckpointMismatchError, ResumeConfigError, FileNotFoundError)


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
    """One process's run; a refusal (a checkpoint that does not fit the model, a resume override
    the checkpoint supersedes, nothing to evaluate) prints ``error: ...`` and exits with status 2."""
    try:
        return run(args)
    except REFUSALS as e:
        # every rank says it: the launcher stops the others as soon as the first one exits
        where = f" [rank {comm.get_rank()}]" if comm.get_world_size() > 1 else ""
        print(f"error: {e}{where}", file=sys.stderr, flush=True)
        raise SystemExit(2) from e


def run(args: argparse.Namespace) -> dict:
    # engine modules are imported in the worker: keeps --help fast
    from eva_core.engine.config_build import build_model
    from eva_core.engine.defaults import load_weights_for_eval

    cfg = load_config(args)
    if args.eval_only:
        # the model and the test sets only: no train loader, no optimizer; the weights are loaded
        # (and checked) before the output dir is written, so a wrong checkpoint leaves nothing behind
        model = build_model(cfg)
        report = load_weights_for_eval(cfg, model, resume=args.resume)
        default_setup(cfg, args)
        logger.info(f"--eval-only weights: {report}")
        results = do_test(cfg, model)
    else:
        default_setup(cfg, args)
        results = do_train(args, cfg)
    print_results(results)
    return results


def _remove_refused_output_dir(output_dir: Path) -> None:
    """Delete ``output_dir`` of a refused run unless it holds a checkpoint: a refusal comes
    before the first iteration, so only its config record, log and empty metric files are there."""
    if output_dir.is_dir() and not any(p.name.startswith(("model_", "last_checkpoint"))
                                       for p in output_dir.rglob("*")):
        for handler in list(logger.handlers):  # the log file of this run goes with the folder
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == output_dir:
                logger.removeHandler(handler)
                handler.close()
        shutil.rmtree(output_dir, ignore_errors=True)


def invoke_main() -> None:
    from torch.multiprocessing import ProcessExitedException

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
    output_dir = cfg.train.get("output_dir")
    existed = not output_dir or Path(output_dir).exists()
    status = 0
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            timeout=cfg.train.get("dist_timeout"),
        )
    except SystemExit as e:  # one process: main refused the run (it printed why)
        status = e.code if isinstance(e.code, int) else 1
    except ProcessExitedException as e:
        # a spawned rank refused the run (it printed why and exited 2) or died: same status here
        print(f"error: {e}", file=sys.stderr)
        status = e.exit_code if e.exit_code and e.exit_code > 0 else 1
    if status == 2 and not existed:
        _remove_refused_output_dir(Path(output_dir))  # a refused command leaves nothing behind
    if status:
        sys.exit(status)


if __name__ == "__main__":
    invoke_main()
