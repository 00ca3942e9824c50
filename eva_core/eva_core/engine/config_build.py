"""Turn a detectron2-style LazyConfig into :class:`~eva_core.engine.Trainer` arguments."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..utils.device import default_device

__all__ = ["trainer_kwargs_from_config", "get_instantiate"]


def get_instantiate():
    """``eva_core.config.instantiate`` (never deep-copies the live model put into the config)."""
    from ..config import instantiate

    return instantiate


def _select(cfg: Any, key: str, default: Any = None) -> Any:
    value = OmegaConf.select(cfg, key, default=default)
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _set_optimizer_model(cfg: Any, model: Any) -> None:
    """detectron2 convention: the optimizer config has ``params.model`` left for the engine."""
    params = OmegaConf.select(cfg, "optimizer.params")
    if isinstance(cfg.optimizer, DictConfig) and not cfg.optimizer._get_flag("allow_objects"):
        cfg.optimizer._set_flag("allow_objects", True)  # a live nn.Module goes into the config
    if params is None:
        cfg.optimizer.params = list(model.parameters())
    else:
        cfg.optimizer.params.model = model


def trainer_kwargs_from_config(cfg: Any) -> dict[str, Any]:
    """Instantiate model, optimizer, loaders, evaluator and lr multiplier; map ``train.*`` keys.

    Raises:
        KeyError: a required key (``model``, ``optimizer``, ``dataloader.train``,
            ``train.max_iter``) is missing.
    """
    for key in ("model", "optimizer", "dataloader.train", "train.max_iter"):
        if OmegaConf.select(cfg, key) is None:
            raise KeyError(f"config has no '{key}', which the trainer needs")
    instantiate = get_instantiate()
    device = _select(cfg, "train.device") or default_device()
    model = instantiate(cfg.model).to(device)
    _set_optimizer_model(cfg, model)
    optimizer = instantiate(cfg.optimizer)
    has = lambda key: OmegaConf.select(cfg, key) is not None  # noqa: E731
    ema_enabled = bool(_select(cfg, "train.ema.enabled", False))
    return dict(
        model=model,
        data_loader=instantiate(cfg.dataloader.train),
        optimizer=optimizer,
        lr_scheduler=instantiate(cfg.lr_multiplier) if has("lr_multiplier") else None,
        test_loader=instantiate(cfg.dataloader.test) if has("dataloader.test") else None,
        evaluator=instantiate(cfg.dataloader.evaluator) if has("dataloader.evaluator") else None,
        max_iter=int(_select(cfg, "train.max_iter")),
        device=device,
        output_dir=_select(cfg, "train.output_dir"),
        init_checkpoint=_select(cfg, "train.init_checkpoint") or None,
        amp_enabled=bool(_select(cfg, "train.amp.enabled", False)),
        amp_dtype=_select(cfg, "train.amp.dtype", "fp16"),
        grad_scaler_kwargs=_select(cfg, "train.amp.loss_scale", None),
        ddp_kwargs=_select(cfg, "train.ddp", None) or {},
        checkpoint_period=_select(cfg, "train.checkpointer.period", 0),
        max_to_keep=_select(cfg, "train.checkpointer.max_to_keep", None),
        checkpoint_format=_select(cfg, "train.checkpointer.format", "pth"),
        eval_period=_select(cfg, "train.eval_period", 0),
        log_period=_select(cfg, "train.log_period", 20),
        grad_accum_steps=int(_select(cfg, "train.grad_accum_steps", 1)),
        clip_grad=_select(cfg, "train.clip_grad", None),
        ema_decay=float(_select(cfg, "train.ema.decay", 0.9999)) if ema_enabled else None,
        zero_stage=int(_select(cfg, "train.zero_stage", 0) or 0),
        deepspeed_config=_select(cfg, "train.deepspeed", None),
        max_nonfinite_steps=int(_select(cfg, "train.max_nonfinite_steps", 20)),
        allow_pickle=bool(_select(cfg, "train.allow_pickle", False)),
    )
