"""Build the pieces of a run from a detectron2-style LazyConfig (keys in docs/DESIGN.md).

Each builder instantiates one part; :func:`eva_core.engine.defaults.train_from_config` and
``tools/lazyconfig_train_net.py`` compose them. Nothing here is built that the caller did not ask
for: ``--eval-only`` builds the model and the test sets, never the train loader or optimizer.
"""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..utils import comm
from ..utils.device import default_device

__all__ = ["get_instantiate", "train_setting", "build_model", "build_optimizer", "build_train_loader",
           "build_lr_scheduler", "build_test_loaders", "build_evaluators", "build_ema", "build_trainer",
           "build_checkpointer", "amp_dtype_for_eval"]


def get_instantiate():
    """``eva_core.config.instantiate`` (never deep-copies the live model put into the config)."""
    from ..config import instantiate

    return instantiate


def train_setting(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.train.<key>`` as plain Python data (``default`` when absent or None)."""
    value = OmegaConf.select(cfg, f"train.{key}", default=default)
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return default if value is None else value


def _require(cfg: Any, *keys: str) -> None:
    for key in keys:
        if OmegaConf.select(cfg, key) is None:
            raise KeyError(f"config has no '{key}', which this run needs")


def build_model(cfg: Any) -> torch.nn.Module:
    """Instantiate ``cfg.model`` and move it to ``train.device`` (default: this rank's GPU, else CPU).

    Raises:
        KeyError: the config has no ``model``.
    """
    _require(cfg, "model")
    device = train_setting(cfg, "device") or default_device()
    return get_instantiate()(cfg.model).to(device)


def build_optimizer(cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Instantiate ``cfg.optimizer`` over ``model`` (detectron2's convention: the config leaves
    ``optimizer.params.model`` for the engine; a config without ``params`` gets every parameter).

    Raises:
        KeyError: the config has no ``optimizer``.
    """
    _require(cfg, "optimizer")
    if isinstance(cfg.optimizer, DictConfig) and not cfg.optimizer._get_flag("allow_objects"):
        cfg.optimizer._set_flag("allow_objects", True)  # a live nn.Module goes into the config
    if OmegaConf.select(cfg, "optimizer.params") is None:
        cfg.optimizer.params = list(model.parameters())
    else:
        cfg.optimizer.params.model = model
    return get_instantiate()(cfg.optimizer)


def build_train_loader(cfg: Any) -> Any:
    """Instantiate ``cfg.dataloader.train``."""
    _require(cfg, "dataloader.train")
    return get_instantiate()(cfg.dataloader.train)


def build_lr_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> Any:
    """``cfg.lr_multiplier`` (a fvcore ``ParamScheduler``) as an
    :class:`~eva_core.optim.LRMultiplier` over ``train.max_iter`` for ``optimizer`` (the
    trainer's: ZeRO and DeepSpeed rebuild it); None without ``lr_multiplier``."""
    if OmegaConf.select(cfg, "lr_multiplier") is None:
        return None
    from fvcore.common.param_scheduler import ParamScheduler

    from ..optim.schedulers import LRMultiplier

    sched = get_instantiate()(cfg.lr_multiplier)
    if isinstance(sched, ParamScheduler):
        _require(cfg, "train.max_iter")
        return LRMultiplier(optimizer, sched, int(train_setting(cfg, "max_iter")))
    if getattr(sched, "optimizer", optimizer) is not optimizer:
        raise ValueError("lr_multiplier builds a scheduler over another optimizer than the trainer's: "
                         "give a fvcore ParamScheduler, which the engine applies to the trainer's optimizer")
    return sched


def build_test_loaders(cfg: Any) -> Any:
    """``cfg.dataloader.test``: one loader, or ``{dataset_name: loader}`` when the config names
    several (a dict without ``_target_``); None when the config has none."""
    if OmegaConf.select(cfg, "dataloader.test") is None:
        return None
    return get_instantiate()(cfg.dataloader.test)


def build_evaluators(cfg: Any) -> Any:
    """``cfg.dataloader.evaluator``: one evaluator, or ``{dataset_name: evaluator}``; None when
    the config has none."""
    if OmegaConf.select(cfg, "dataloader.evaluator") is None:
        return None
    return get_instantiate()(cfg.dataloader.evaluator)


def amp_dtype_for_eval(cfg: Any) -> torch.dtype | None:
    """The autocast dtype evaluation runs under: ``train.amp.dtype`` when AMP is enabled."""
    from .amp import resolve_amp_dtype

    if not train_setting(cfg, "amp.enabled", False):
        return None
    return resolve_amp_dtype(train_setting(cfg, "amp.dtype", "fp16"))


def build_ema(cfg: Any, model: torch.nn.Module) -> Any:
    """A ``timm.utils.ModelEmaV3`` of ``model`` with ``train.ema.decay`` when ``train.ema.enabled``
    (else None)."""
    if not train_setting(cfg, "ema.enabled", False):
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=float(train_setting(cfg, "ema.decay", 0.9999)))


def build_trainer(cfg: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, data_loader: Any):
    """The trainer the ``train.*`` keys ask for.

    ``train.deepspeed`` (a DeepSpeed config dict) gives a
    :class:`~eva_core.engine.deepspeed_engine.DeepSpeedTrainer`; otherwise the model is wrapped in
    DDP (``train.ddp`` kwargs) when there are several processes, the optimizer becomes a torch
    ``ZeroRedundancyOptimizer`` with ``train.zero_stage=1``, and ``train.amp.enabled`` gives an
    :class:`~eva_core.engine.train_loop.AMPTrainer` (``train.amp.dtype``, fp16 loss scaler from
    ``train.amp.loss_scale``), else a :class:`~eva_core.engine.train_loop.SimpleTrainer`.

    Raises:
        ValueError: ``train.zero_stage`` is not 0 or 1.
    """
    from .parallel import build_zero_optimizer, create_ddp_model
    from .train_loop import AMPTrainer, SimpleTrainer

    common = dict(grad_accum_steps=int(train_setting(cfg, "grad_accum_steps", 1)),
                  clip_grad=train_setting(cfg, "clip_grad"),
                  max_nonfinite_steps=int(train_setting(cfg, "max_nonfinite_steps", 20)))
    amp_enabled = bool(train_setting(cfg, "amp.enabled", False))
    precision = train_setting(cfg, "amp.dtype", "fp16")
    zero_stage = int(train_setting(cfg, "zero_stage", 0))
    if zero_stage not in (0, 1):
        raise ValueError(f"train.zero_stage must be 0 or 1 (torch ZeroRedundancyOptimizer), got "
                         f"{zero_stage}; use train.deepspeed for stage 2")
    deepspeed_config = train_setting(cfg, "deepspeed")
    if deepspeed_config is not None:
        from .deepspeed_engine import DeepSpeedTrainer

        return DeepSpeedTrainer(model, data_loader, optimizer, deepspeed_config=deepspeed_config,
                                precision=precision if amp_enabled else None, **common)
    if zero_stage == 1 and comm.get_world_size() > 1:
        optimizer = build_zero_optimizer(optimizer)
    model = create_ddp_model(model, **(train_setting(cfg, "ddp") or {}))
    if amp_enabled:
        return AMPTrainer(model, data_loader, optimizer, precision=precision,
                          loss_scale=train_setting(cfg, "amp.loss_scale"), **common)
    return SimpleTrainer(model, data_loader, optimizer, **common)


def build_checkpointer(cfg: Any, trainer: Any, *, lr_scheduler: Any = None, ema: Any = None):
    """A :class:`~eva_core.engine.checkpointer.Checkpointer` of everything a resume restores:
    model, optimizer (or the DeepSpeed engine's state), lr scheduler, fp16 loss scaler, EMA and
    the train loader's position; files go to ``train.output_dir``."""
    from .checkpointer import Checkpointer

    loader = trainer.data_loader
    loader_state = loader if hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict") else None
    engine = getattr(trainer, "engine", None)
    scaler = getattr(trainer, "grad_scaler", None)
    return Checkpointer(
        trainer.unwrapped_model, train_setting(cfg, "output_dir"),
        max_to_keep=train_setting(cfg, "checkpointer.max_to_keep"),
        allow_pickle=bool(train_setting(cfg, "allow_pickle", False)),
        optimizer=trainer.optimizer if engine is None else None, scheduler=lr_scheduler,
        scaler=scaler if scaler is not None and scaler.is_enabled() else None, ema=ema,
        data_loader=loader_state, deepspeed_engine=engine)
