"""Shared test helpers: the toy regression task (model, dataset, evaluator, batch stream) and a
toy run composed from the engine's parts the way ``eva_core.engine.defaults.train_from_config``
composes a configured one. Other test files may append helpers here."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DIM = 8


class ToyRegressor(nn.Module):
    """Tiny MLP following the model contract: loss dict in train mode, predictions in eval."""

    def __init__(self, dim: int = DIM, hidden: int = 16, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, batch):
        pred = self.net(batch["x"]).squeeze(-1)
        if self.training:
            return {"loss_mse": F.mse_loss(pred.float(), batch["y"]), "pred_mean": pred.mean()}
        return pred


class ToyDataset(torch.utils.data.Dataset):
    """y = x . w + noise; ``noise`` is drawn per read, so augmentation randomness is exercised."""

    def __init__(self, n: int = 64, noise: float = 0.0, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, DIM, generator=g)
        self.w = torch.randn(DIM, generator=g)
        self.noise = noise

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i] + self.noise * torch.randn(DIM)
        return {"x": x, "y": (self.x[i] * self.w).sum()}


class MSEEvaluator:
    """detectron2 evaluator interface on the toy task."""

    def reset(self):
        self.sq, self.n = 0.0, 0

    def process(self, batch, outputs):
        self.sq += float(((outputs.float() - batch["y"]) ** 2).sum())
        self.n += len(outputs)

    def evaluate(self):
        return {"mse": self.sq / max(self.n, 1)}


class FixedBatches:
    """Infinite stream cycling over a list of batches, resumable by position."""

    def __init__(self, batches):
        self.batches, self.pos = batches, 0

    def __iter__(self):
        while True:
            b = self.batches[self.pos % len(self.batches)]
            self.pos += 1
            yield b

    def state_dict(self):
        return {"batches_yielded": self.pos}

    def load_state_dict(self, sd):
        self.pos = sd["batches_yielded"]


def toy_batches(n_batches: int, batch_size: int, seed: int = 0):
    ds = ToyDataset(n_batches * batch_size, seed=seed)
    return [{"x": ds.x[i * batch_size:(i + 1) * batch_size],
             "y": (ds.x[i * batch_size:(i + 1) * batch_size] * ds.w).sum(-1)} for i in range(n_batches)]


def toy_test_loader(n: int = 64, batch_size: int = 16, seed: int = 0):
    ds = ToyDataset(n, seed=seed)
    return [{"x": ds.x[i:i + batch_size], "y": (ds.x[i:i + batch_size] * ds.w).sum(-1)}
            for i in range(0, n, batch_size)]


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class ToyRun:
    """A trainer, its checkpointer and its hooks, built from explicit pieces.

    Attribute access falls through to the trainer (``run.unwrapped_model``, ``run.storage``,
    ``run.nonfinite_total``...). :meth:`train` returns the last evaluation's results.

    Args:
        out: checkpoint / metrics folder (None: nothing written).
        model, data_loader, optimizer: the pieces (defaults: ``ToyRegressor()``, the cycling
            ``batches`` and SGD with ``lr`` and momentum 0.9).
        precision: None (fp32 :class:`SimpleTrainer`) or ``"fp16"`` / ``"bf16"`` (:class:`AMPTrainer`).
        loss_scale: fp16 loss-scaler arguments.
        deepspeed_config / zero_stage: train through DeepSpeed / shard with torch ZeRO-1.
        ema_decay: keep a ``timm.utils.ModelEmaV3``.
        lr_scheduler: a fvcore ``ParamScheduler`` (wrapped in an ``LRMultiplier``).
        evaluator / test_loader: evaluation (model, and EMA as ``ema/<metric>``).
        other keyword arguments: the trainer's and hooks' settings.
    """

    def __init__(self, out=None, *, batches=None, data_loader=None, model=None, optimizer=None, lr=0.05,
                 max_iter=10, precision=None, loss_scale=None, grad_accum_steps=1, clip_grad=None,
                 max_nonfinite_steps=20, ema_decay=None, lr_scheduler=None, checkpoint_period=0,
                 max_to_keep=None, checkpoint_format="pth", evaluator=None, test_loader=None,
                 eval_period=0, log_period=5, tensorboard=False, init_checkpoint=None, allow_pickle=False,
                 zero_stage=0, deepspeed_config=None):
        from eva_core.engine import (AMPTrainer, Checkpointer, EMAHook, EvalHook, IterationTimer, LRScheduler,
                                     MetricsWriter, PeriodicCheckpointer, SimpleTrainer)
        from eva_core.engine.defaults import build_zero_optimizer, create_ddp_model
        from eva_core.evaluation import inference_on_dataset
        from eva_core.optim import LRMultiplier
        from eva_core.utils import comm

        torch.manual_seed(0)
        model = model or ToyRegressor()
        if data_loader is None:
            data_loader = FixedBatches(batches if batches is not None else toy_batches(4, 8))
        optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        common = dict(grad_accum_steps=grad_accum_steps, clip_grad=clip_grad,
                      max_nonfinite_steps=max_nonfinite_steps, device="cpu")
        if deepspeed_config is not None:
            from eva_core.engine.deepspeed_engine import DeepSpeedTrainer

            trainer = DeepSpeedTrainer(model, data_loader, optimizer, deepspeed_config=deepspeed_config,
                                       precision=precision, **common)
        else:
            if zero_stage == 1 and comm.get_world_size() > 1:
                optimizer = build_zero_optimizer(optimizer)
            wrapped = create_ddp_model(model)
            if precision is None:
                trainer = SimpleTrainer(wrapped, data_loader, optimizer, **common)
            else:
                trainer = AMPTrainer(wrapped, data_loader, optimizer, precision=precision,
                                     loss_scale=loss_scale, **common)
        self.trainer, self.max_iter = trainer, max_iter
        self.scheduler = (LRMultiplier(trainer.optimizer, lr_scheduler, max_iter) if lr_scheduler is not None
                          else None)
        self.ema = None
        if ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=float(ema_decay))
        scaler = getattr(trainer, "grad_scaler", None)
        engine = getattr(trainer, "engine", None)
        self.checkpointer = Checkpointer(
            model, str(out) if out else None, max_to_keep=max_to_keep, allow_pickle=allow_pickle,
            optimizer=trainer.optimizer if engine is None else None, scheduler=self.scheduler,
            scaler=scaler if scaler is not None and scaler.is_enabled() else None, ema=self.ema,
            data_loader=data_loader if hasattr(data_loader, "state_dict") else None, deepspeed_engine=engine)
        self.init_checkpoint = init_checkpoint
        self.eval_hook = None
        if evaluator is not None and test_loader is not None:
            self.eval_hook = EvalHook(eval_period, lambda: self.test(evaluator, test_loader))
        self._evaluator, self._test_loader = evaluator, test_loader
        trainer.register_hooks([
            IterationTimer(),
            LRScheduler(trainer.optimizer, self.scheduler),
            EMAHook(self.ema, model) if self.ema is not None else None,
            PeriodicCheckpointer(self.checkpointer, checkpoint_period, final_weights_format=checkpoint_format,
                                 ema_model=self.ema.module if self.ema is not None else None),
            self.eval_hook,
            MetricsWriter(log_period, str(out) if out else None, max_iter, tensorboard=tensorboard),
        ])
        self._inference = inference_on_dataset
        self.start_iter = 0

    def __getattr__(self, name: str) -> Any:
        if name == "trainer":  # not built yet
            raise AttributeError(name)
        return getattr(self.trainer, name)

    def resume_or_load(self, resume: bool = True) -> None:
        extra = self.checkpointer.resume_or_load(self.init_checkpoint, resume=resume)
        self.start_iter = int(extra.get("iteration", -1)) + 1

    def test(self, evaluator=None, test_loader=None) -> dict:
        """Evaluate the model (and its EMA as ``ema/<metric>``)."""
        evaluator, test_loader = evaluator or self._evaluator, test_loader or self._test_loader
        results = dict(self._inference(self.trainer.unwrapped_model, test_loader, evaluator))
        if self.ema is not None:
            ema_results = self._inference(self.ema.module, test_loader, evaluator)
            results.update({f"ema/{k}": v for k, v in ema_results.items()})
        return results

    def train(self) -> dict:
        self.trainer.train(self.start_iter, self.max_iter)
        return self.eval_hook.last_results if self.eval_hook is not None else {}


def make_trainer(tmp_path=None, **kw) -> ToyRun:
    """A :class:`ToyRun` writing to ``tmp_path`` (metrics every 5 iterations, no TensorBoard)."""
    return ToyRun(tmp_path, **kw)


def must_not_be_built(**kwargs):
    """A config target that fails when instantiated (proves a code path never builds it)."""
    raise AssertionError(f"must_not_be_built was instantiated with {sorted(kwargs)}")


# --- measured CPU memory: what the memory planner's tests compare its estimates with ---
# The real model is built and run inside ``torch.profiler.profile(profile_memory=True)``; the running sum
# of the CPU allocator's signed ``[memory]`` events is the bytes of live tensors, its maximum the peak.
PIXEL_KEYS = ("image", "video")


def as_real_batch(x, key: str = ""):
    """The planner's example batch as a data loader yields it: random pixels under ``image`` / ``video``,
    every other tensor (labels, masks, boxes, label maps) as the example-batch builder made it."""
    if isinstance(x, torch.Tensor):
        if key not in PIXEL_KEYS:
            return x.clone()
        if x.dtype == torch.uint8:
            return torch.randint(0, 256, x.shape, dtype=torch.uint8)
        return torch.randn(x.shape)
    if isinstance(x, dict):
        return {k: as_real_batch(v, k) for k, v in x.items()}
    if isinstance(x, list):
        return [as_real_batch(v) for v in x]
    return x


def peak_live_bytes(prof) -> int:
    """The largest running sum of a profiler's allocator events (``profile_memory=True``)."""
    import itertools

    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    assert events, "the profiler recorded no allocator events"
    return max(itertools.accumulate(e.nbytes() for e in events))


def measure_peak_training_memory_cpu(cfg, steps: int = 2) -> int:
    """Peak bytes of live tensors while building ``cfg.model`` and training it ``steps`` steps on CPU
    (the second with the optimizer state of the first): the batch, the config's autocast dtype and
    gradient clipping, and the model's registered planning context as the planner assumes them."""
    import copy

    from omegaconf import OmegaConf
    from torch.profiler import ProfilerActivity, profile

    from eva_core.config import instantiate
    from eva_core.memory import build_meta_model, example_batch, planning_context, read_training_setup

    setup = read_training_setup(cfg, 1)
    torch.manual_seed(0)
    spec = example_batch(build_meta_model(cfg.model), cfg, setup.batch_per_gpu)
    clip = OmegaConf.select(cfg, "train.clip_grad")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        batch = as_real_batch(spec)  # live memory of the step, as the batch a data loader yields
        model = instantiate(copy.deepcopy(cfg.model)).train()
        opt_cfg = copy.deepcopy(cfg.optimizer)
        opt_cfg._set_flag("allow_objects", True)
        opt_cfg.params.model = model
        optimizer = instantiate(opt_cfg)
        trainable = [p for p in model.parameters() if p.requires_grad]
        for _ in range(steps):
            with planning_context(model, cfg), torch.autocast(
                    "cpu", dtype=setup.amp_dtype or torch.bfloat16, enabled=setup.amp_dtype is not None):
                out = model(batch)
            loss = sum(v for k, v in out.items() if k.startswith("loss"))
            del out
            loss.backward()
            del loss
            if clip:
                torch.nn.utils.clip_grad_norm_(trainable, clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        del model, optimizer, batch
    return peak_live_bytes(prof)


def measure_peak_inference_memory_cpu(cfg) -> int:
    """Peak bytes of live tensors while building ``cfg.model`` and running one evaluation forward pass
    (``eval()``, ``no_grad``) on CPU, with the model's planning context active."""
    import copy

    from torch.profiler import ProfilerActivity, profile

    from eva_core.config import instantiate
    from eva_core.memory import build_meta_model, inference_batch, planning_context

    torch.manual_seed(0)
    spec = inference_batch(build_meta_model(cfg.model), cfg, 1)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        batch = as_real_batch(spec)
        model = instantiate(copy.deepcopy(cfg.model)).eval()
        with torch.no_grad(), planning_context(model, cfg):
            out = model(batch)
        del out, model, batch
    return peak_live_bytes(prof)
