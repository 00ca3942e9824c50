"""What every training script shares (detectron2's ``engine/defaults.py``): command-line flags,
per-process setup, DDP / ZeRO wrapping (from :mod:`.parallel`), the default hooks, and the
composition of a whole run from a LazyConfig (:func:`train_from_config`, :func:`build_eval_function`)."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from eva_core.config import LazyConfig
from eva_core.utils import comm
from eva_core.utils.logging import setup_logger

from .parallel import build_zero_optimizer, create_ddp_model

__all__ = ["default_argument_parser", "default_setup", "config_record_name", "seed_all_rng",
           "set_deterministic", "create_ddp_model", "build_zero_optimizer", "default_hooks",
           "build_eval_function", "train_from_config", "train_from_config_seeded", "load_weights_for_eval",
           "TrainResult"]


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
                        help="allow fully unpickling checkpoints (runs code stored in them: "
                        "trusted files only)")
    parser.add_argument("opts", default=[], nargs=argparse.REMAINDER,
                        help="config overrides as key=value pairs at the end of the command")
    return parser


def seed_all_rng(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_from_config_seeded(cfg: Any, seed: int, **kwargs: Any) -> "TrainResult":
    """:func:`train_from_config` with python / numpy / torch seeded to ``seed`` inside a fork of the
    caller's RNG state (restored afterwards).

    Model initialisation and augmentations draw from the global RNGs, which ``train_from_config`` does
    not seed (the CLI's :func:`default_setup` does): runs made this way inside one process (toy stages,
    paired comparisons) give the same result whatever ran before them, and leave the caller's RNGs as
    they were. ``kwargs`` go to ``train_from_config``.
    """
    with torch.random.fork_rng(devices=[]):
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            seed_all_rng(seed)
            return train_from_config(cfg, **kwargs)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def set_deterministic(enabled: bool) -> None:
    """Ask torch for deterministic kernels (slower); ``False`` leaves torch's defaults alone."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def config_record_name(cfg: Any, args: argparse.Namespace) -> str:
    """The file in ``train.output_dir`` that records the config of this invocation.

    ``config.yaml`` is the record of the training run and is written only by a run that trains
    from the start. ``--eval-only`` writes ``config_eval.yaml``; ``--resume`` of a run that has a
    checkpoint writes ``config_resume_<n>.yaml`` (n = 1, 2, ...), so the training record keeps
    saying what trained the model (and re-training from it never starts from ``model_final.pth``).
    """
    from .checkpointer import Checkpointer
    from .resume import next_resume_record_name

    output_dir = cfg.train.get("output_dir")
    if getattr(args, "eval_only", False):
        return "config_eval.yaml"
    if getattr(args, "resume", False) and output_dir and Checkpointer(None, output_dir).has_checkpoint():
        return next_resume_record_name(output_dir)
    return "config.yaml"


def default_setup(cfg: Any, args: argparse.Namespace) -> logging.Logger:
    """Prepare this process for a run described by ``cfg``.

    With ``args.resume`` and a checkpoint in ``train.output_dir``, first compares ``cfg`` with
    the run's config record (:func:`eva_core.engine.resume.check_resume_config`): a change the
    checkpoint's state supersedes is refused before anything is written, every other change is
    logged with how it is applied. Then creates ``train.output_dir``; rank 0 saves the full config
    there (``config.yaml``, ``config_eval.yaml`` or ``config_resume_<n>.yaml``:
    :func:`config_record_name`); logs to the console (rank 0) and to ``log.txt`` in the output
    dir (``log.txt.rank{r}`` on other ranks); seeds python, numpy and torch with
    ``train.seed + rank`` (a negative or missing seed draws a random one, which is logged); asks
    for deterministic kernels when ``train.deterministic`` is true; sets
    ``torch.backends.cudnn.benchmark`` to ``train.cudnn_benchmark`` (default False, as detectron2).

    Raises:
        ValueError: ``train.deterministic`` and ``train.cudnn_benchmark`` are both true.
        ResumeConfigError: ``--resume`` with a change the checkpoint supersedes (batch size, seed...).

    Returns:
        the ``eva_core`` logger.
    """
    from .resume import check_resume_config, config_record, log_resume_changes

    train = cfg.train
    deterministic = bool(train.get("deterministic", False))
    benchmark = bool(train.get("cudnn_benchmark", False))
    if deterministic and benchmark:
        raise ValueError("train.cudnn_benchmark=True conflicts with train.deterministic=True: "
                         "cuDNN autotuning picks kernels by timing; set one of them to False")
    output_dir = train.get("output_dir")
    record_name = config_record_name(cfg, args)
    resume_changes, resume_record = [], None
    if record_name.startswith("config_resume_"):
        resume_record = config_record(output_dir)
        resume_changes = check_resume_config(cfg, output_dir, log=False)  # raises before any write
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
    log_resume_changes(resume_changes, resume_record)
    if output_dir and comm.is_main_process():
        path = LazyConfig.save(cfg, Path(output_dir) / record_name)
        logger.info("full config saved to %s", path)
    seed = train.get("seed", 0)
    seed = int(seed) if seed is not None and seed >= 0 else random.SystemRandom().randrange(2**31)
    seed_all_rng(seed + rank)
    logger.info("seed %d (+ rank %d)", seed, rank)
    set_deterministic(deterministic)
    # detectron2's default: autotuning pays off only when input shapes repeat
    torch.backends.cudnn.benchmark = benchmark
    return logger


# ------------------------------------------------------------------------------------- hooks
def default_hooks(cfg: Any, trainer: Any, checkpointer: Any, eval_fn: Callable[[], dict] | None = None, *,
                  lr_scheduler: Any = None, ema: Any = None, tensorboard: bool = True) -> list:
    """The hooks of a run described by ``cfg.train``, in the order they must run.

    Heartbeat (a watchdog thread naming ranks that finished no iteration for
    ``train.heartbeat_timeout`` seconds, default 60, 0: off; in one process it only watches this
    process); iteration timer; lr logging and ``lr_scheduler`` steps; EMA updates (``ema``);
    periodic and final checkpoints (``train.checkpointer.{period,format}``); evaluation with
    ``eval_fn`` every ``train.eval_period`` iterations and after the last (skipped when
    ``eval_fn`` is None); metrics to the console, ``metrics.json`` and TensorBoard every
    ``train.log_period``. Checkpoints come before evaluation so a crash in evaluation never loses
    the weights, and the writer comes last so a record holds the iteration's evaluation results.
    """
    from . import hooks
    from .config_build import train_setting
    from .heartbeat import HeartbeatHook

    max_iter = int(train_setting(cfg, "max_iter"))
    ema_model = ema.module if ema is not None else None
    eval_period = train_setting(cfg, "eval_period", 0)
    return [
        HeartbeatHook(train_setting(cfg, "heartbeat_timeout", 60.0)),
        hooks.IterationTimer(),
        hooks.LRScheduler(trainer.optimizer, lr_scheduler),
        hooks.EMAHook(ema, trainer.unwrapped_model) if ema is not None else None,
        hooks.PeriodicCheckpointer(checkpointer, train_setting(cfg, "checkpointer.period", 0), max_iter,
                                   final_weights_format=train_setting(cfg, "checkpointer.format", "pth"),
                                   ema_model=ema_model),
        hooks.EvalHook(eval_period, eval_fn, max_iter) if eval_fn is not None else None,
        hooks.PeriodicWriter(hooks.default_writers(train_setting(cfg, "output_dir"), max_iter, tensorboard),
                             train_setting(cfg, "log_period", 20)),
    ]


# ------------------------------------------------------------------------------- composition
def build_eval_function(cfg: Any, model: torch.nn.Module, ema: Any = None) -> Callable[[], dict] | None:
    """The evaluation of a run: :func:`~eva_core.evaluation.inference_on_datasets` of ``model``
    on ``dataloader.test`` with ``dataloader.evaluator`` (one set, or ``{name: ...}`` for several),
    plus the EMA weights' results as ``ema/<name>``. The loaders and evaluators are built once,
    here. Returns None when the config has no test loader or no evaluator.
    """
    from ..evaluation import inference_on_datasets
    from .config_build import amp_dtype_for_eval, build_evaluators, build_test_loaders

    loaders, evaluators = build_test_loaders(cfg), build_evaluators(cfg)
    if loaders is None or evaluators is None:
        return None
    amp_dtype = amp_dtype_for_eval(cfg)

    def evaluate() -> dict:
        results = dict(inference_on_datasets(model, loaders, evaluators, amp_dtype=amp_dtype))
        if ema is not None:
            ema_results = inference_on_datasets(ema.module, loaders, evaluators, amp_dtype=amp_dtype)
            results.update({f"ema/{k}": v for k, v in ema_results.items()})
        return results

    return evaluate


def load_weights_for_eval(cfg: Any, model: torch.nn.Module, *, resume: bool = False) -> Any:
    """Load the weights ``--eval-only`` evaluates into ``model``: ``train.init_checkpoint`` when
    one is given (and not ``resume``), else the last checkpoint of ``train.output_dir``.

    ``train.init_checkpoint`` must fill at least ``train.min_loaded.eval`` of the model (default
    1.0, every tensor: evaluating a randomly initialised head or block gives a meaningless
    number); a checkpoint of ``train.output_dir`` must fit exactly. The load logs one line.

    Returns:
        the load's :class:`~eva_core.checkpoint.LoadReport`.

    Raises:
        FileNotFoundError: no ``train.init_checkpoint`` and no checkpoint in ``train.output_dir``.
        CheckpointMismatchError: the checkpoint fills too little of the model (the message names
            the file and the first missing keys); nothing is loaded then.
    """
    from .checkpointer import Checkpointer
    from .config_build import train_setting

    output_dir, init = train_setting(cfg, "output_dir"), train_setting(cfg, "init_checkpoint")
    use_last = resume or not init
    allow_pickle = bool(train_setting(cfg, "allow_pickle", False))
    checkpointer = Checkpointer(model, output_dir, allow_pickle=allow_pickle)
    if use_last and not checkpointer.has_checkpoint():
        raise FileNotFoundError(
            f"--eval-only: no train.init_checkpoint given and no checkpoint in "
            f"train.output_dir={output_dir!r}; nothing to evaluate")
    # the last checkpoint is our own and restores exactly; an init checkpoint is checked by share
    checkpointer.resume_or_load(init, resume=use_last, min_loaded=train_setting(cfg, "min_loaded.eval", 1.0))
    return checkpointer.last_load_report


class TrainResult(NamedTuple):
    """What :func:`train_from_config` returns."""

    model: torch.nn.Module  #: the trained model (unwrapped)
    trainer: Any  #: the trainer (its ``storage`` holds the last logged scalars)
    results: dict  #: the last evaluation's results (``{}`` without a test set)


def train_from_config(cfg: Any, *, resume: bool = False, extra_hooks: Sequence[Any] = (),
                      tensorboard: bool = True) -> TrainResult:
    """Train the run ``cfg`` describes, from ``train.init_checkpoint`` or (``resume``) from the
    last checkpoint in ``train.output_dir``, evaluating every ``train.eval_period`` iterations.

    Builds model, optimizer, train loader, trainer, lr schedule, EMA and checkpointer
    (:mod:`eva_core.engine.config_build`), registers :func:`default_hooks` and then
    ``extra_hooks``, and trains up to ``train.max_iter``.

    ``train.init_checkpoint`` must fill at least ``train.min_loaded.init`` of the model (default
    ``"encoder"``: every encoder tensor; a new classifier head is listed in the load's log line,
    not fatal). A resume restores the complete training state, except that the optimizer's group
    hyperparameters and the lr schedule are the config's (:mod:`eva_core.engine.resume`; the
    comparison with the run's config record is :func:`default_setup`'s).

    Raises:
        CheckpointMismatchError: the init checkpoint fills too little of the model, or the resumed
            checkpoint's model differs from the config's; nothing has trained then.
    """
    from .config_build import (build_checkpointer, build_ema, build_lr_scheduler, build_model,
                               build_optimizer, build_train_loader, build_trainer, train_setting)
    from .resume import config_hyperparameters_kept

    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    trainer = build_trainer(cfg, model, optimizer, build_train_loader(cfg))
    lr_scheduler = build_lr_scheduler(cfg, trainer.optimizer)
    ema = build_ema(cfg, model)
    checkpointer = build_checkpointer(cfg, trainer, lr_scheduler=lr_scheduler, ema=ema)
    eval_fn = build_eval_function(cfg, model, ema)
    hooks = default_hooks(cfg, trainer, checkpointer, eval_fn, lr_scheduler=lr_scheduler, ema=ema,
                          tensorboard=tensorboard)
    trainer.register_hooks([*hooks, *extra_hooks])
    keep = (contextlib.nullcontext() if getattr(trainer, "engine", None) is not None  # DeepSpeed's own groups
            else config_hyperparameters_kept(trainer.optimizer, lr_scheduler))
    with keep:
        resumed = checkpointer.resume_or_load(train_setting(cfg, "init_checkpoint") or None, resume=resume,
                                              min_loaded=train_setting(cfg, "min_loaded.init", "encoder"))
    if ema is not None and not resumed:
        ema.set(model)  # the average starts from the loaded init weights, not the random ones
    start_iter = int(resumed.get("iteration", -1)) + 1
    trainer.train(start_iter, int(train_setting(cfg, "max_iter")))
    from .hooks import EvalHook

    eval_hook = next((h for h in hooks if isinstance(h, EvalHook)), None)
    return TrainResult(model, trainer, eval_hook.last_results if eval_hook is not None else {})
