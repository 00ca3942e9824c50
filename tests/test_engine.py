"""The training engine: a real (tiny) training for every capability of the trainers and hooks.

The toy regression task (model, dataset, evaluator) and the toy run composed from engine parts
live in ``tests/helpers.py``.
"""
from __future__ import annotations

import json
import math
import fractions

import pytest
import torch
from torch import nn

from eva_core.checkpoint import CheckpointFormatError, load_file, save_atomic
from eva_core.engine import CallbackHook
from eva_core.optim import LRMultiplier, cosine_with_warmup
from helpers import (FixedBatches, MSEEvaluator, ToyDataset, ToyRegressor, make_trainer, toy_batches,
                     toy_test_loader, weights)

# --------------------------------------------------------------------------- learning
def test_trainer_learns_toy_regression_and_evaluates(tmp_path):
    t = make_trainer(tmp_path, batches=toy_batches(8, 8), max_iter=60, lr=0.02,
                     evaluator=MSEEvaluator(), test_loader=toy_test_loader(), eval_period=30,
                     lr_scheduler=cosine_with_warmup(max_iter=60, warmup_iters=5))
    before = t.test()["mse"]
    results = t.train()
    assert results["mse"] < 0.2 * before
    assert t.unwrapped_model.training


def test_lr_multiplier_sets_base_lr_times_schedule_times_lr_scale():
    p1, p2 = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1], "lr": 0.1, "lr_scale": 0.25}, {"params": [p2], "lr": 0.2}],
                          lr=0.1)
    sched = LRMultiplier(opt, cosine_with_warmup(max_iter=10, warmup_iters=2, min_ratio=0.1), max_iter=10)
    for it in range(10):
        m = sched.multiplier_at(it)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * m * 0.25)
        assert opt.param_groups[1]["lr"] == pytest.approx(0.2 * m)
        opt.step()
        sched.step()
    assert sched.multiplier_at(2) == pytest.approx(1.0, rel=1e-6)  # warmup ends at peak
    assert sched.multiplier_at(0) == pytest.approx(1e-3)
    assert sched.multiplier_at(9) < 0.15


# --------------------------------------------------------------------------- optimization
def test_two_micro_batches_of_4_equal_one_batch_of_8():
    big = toy_batches(3, 8)
    small = [{k: v[s] for k, v in b.items()} for b in big for s in (slice(0, 4), slice(4, 8))]
    t1 = make_trainer(batches=big, max_iter=3)
    t1.train()
    t2 = make_trainer(batches=small, max_iter=3, grad_accum_steps=2)
    t2.train()
    for k, v in weights(t1.unwrapped_model).items():
        torch.testing.assert_close(weights(t2.unwrapped_model)[k], v, rtol=1e-5, atol=1e-6)


def test_clip_grad_bounds_the_global_gradient_norm():
    norms = []

    def record(trainer):
        ps = [p.grad for p in trainer.unwrapped_model.parameters() if p.grad is not None]
        norms.append(torch.nn.utils.get_total_norm(ps).item())

    t = make_trainer(max_iter=3, lr=1.0, clip_grad=0.01)
    # capture the gradient after clipping, right before the optimizer applies it
    orig_step = t.optimizer.step

    def step(*a, **k):
        record(t)
        return orig_step(*a, **k)

    t.optimizer.step = step
    t.train()
    logged = t.storage.median("grad_norm")
    assert logged > 0.01  # the raw norm is larger than the bound ...
    assert all(n <= 0.01 * (1 + 1e-4) for n in norms)  # ... but applied gradients are clipped


def test_ema_weights_differ_from_model_and_track_it(tmp_path):
    t = make_trainer(tmp_path, max_iter=30, ema_decay=0.8)
    init = weights(t.unwrapped_model)
    t.train()
    final, ema = weights(t.unwrapped_model), weights(t.ema.module)
    for k in final:
        assert not torch.equal(final[k], ema[k])
        # the EMA moved from the initial weights towards the trained ones
        assert (ema[k] - final[k]).norm() < (init[k] - final[k]).norm()
    ck = load_file(tmp_path / "model_final.pth")
    assert set(ck["ema"]) and torch.equal(ck["ema"]["module.net.0.weight"], ema["net.0.weight"])


def test_eval_reports_model_and_ema_results():
    ds = ToyDataset(16)
    loader = [{"x": ds.x, "y": (ds.x * ds.w).sum(-1)}]
    t = make_trainer(max_iter=5, ema_decay=0.5, evaluator=MSEEvaluator(), test_loader=loader)
    res = t.train()
    assert set(res) == {"mse", "ema/mse"} and res["mse"] != res["ema/mse"]


def test_bf16_autocast_trains():
    t = make_trainer(max_iter=40, lr=0.02, precision="bf16")
    seen = []
    t.register_hooks([CallbackHook(after_step=lambda tr: seen.append(tr.storage.latest()["total_loss"][0]))])
    t.train()
    assert t.grad_scaler.is_enabled() is False
    assert sum(seen[-5:]) < 0.3 * sum(seen[:5])


def test_fp16_grad_scaler_skips_overflow_and_still_trains():
    t = make_trainer(max_iter=60, lr=0.02, precision="fp16",
                     loss_scale={"init_scale": 2.0**24, "growth_interval": 1000})
    assert t.grad_scaler.is_enabled()
    seen, scales, taken = [], [], []
    t.register_hooks([CallbackHook(after_step=lambda tr: (seen.append(tr.storage.latest()["total_loss"][0]),
                                                          scales.append(tr.grad_scaler.get_scale()),
                                                          taken.append(tr.step_taken)))])
    t.train()
    # 2^24 overflows fp16 gradients: the scaler halves until they fit, skipping those steps,
    # which are not counted as non-finite losses
    assert scales[-1] < 2.0**24 and not all(taken) and sum(taken) > 30 and t.nonfinite_total == 0
    assert sum(seen[-5:]) < 0.3 * sum(seen[:5])


# --------------------------------------------------------------------------- non-finite
def test_nan_loss_skips_the_step_and_leaves_weights_unchanged():
    batches = toy_batches(4, 8)
    bad = dict(batches[2], x=torch.full_like(batches[2]["x"], float("nan")))
    snap = {}

    def before(tr):
        snap[tr.iter] = weights(tr.unwrapped_model)

    t = make_trainer(batches=batches[:2] + [bad] + batches[3:], max_iter=4)
    t.register_hooks([CallbackHook(before_step=before)])
    t.train()
    assert t.nonfinite_total == 1
    for k, v in snap[2].items():
        assert torch.equal(snap[3][k], v)  # iteration 2 (the NaN batch) changed nothing
    assert not torch.equal(snap[2]["net.0.weight"], snap[1]["net.0.weight"])
    assert all(torch.isfinite(v).all() for v in weights(t.unwrapped_model).values())


def test_consecutive_nan_losses_stop_training_naming_the_iteration_and_keep_last_good_checkpoint(tmp_path):
    good = toy_batches(8, 8)
    bad = dict(good[0], x=torch.full_like(good[0]["x"], float("inf")))
    t = make_trainer(tmp_path, batches=good + [bad] * 8, max_iter=16, checkpoint_period=4,
                     max_nonfinite_steps=3)
    with pytest.raises(FloatingPointError, match=r"iteration 10\b.*model_0000007\.pth"):
        t.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000007.pth"
    assert not (tmp_path / "model_0000011.pth").exists() and not (tmp_path / "model_final.pth").exists()
    ck = load_file(tmp_path / "model_0000007.pth")
    assert ck["iteration"] == 7
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


# --------------------------------------------------------------------------- checkpoints
def test_checkpoints_load_with_weights_only_and_hold_the_full_state(tmp_path):
    t = make_trainer(tmp_path, max_iter=6, checkpoint_period=2, max_to_keep=2, ema_decay=0.9,
                     lr_scheduler=cosine_with_warmup(max_iter=6, warmup_iters=1))
    t.train()
    files = sorted(p.name for p in tmp_path.glob("model_*.pth"))
    assert files == ["model_0000003.pth", "model_0000005.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    ck = torch.load(tmp_path / "model_0000005.pth", weights_only=True)
    assert {"model", "optimizer", "scheduler", "ema", "data_loader", "iteration", "rng_states"} <= set(ck)
    assert ck["data_loader"] == {"batches_yielded": 6} and ck["scheduler"]["last_epoch"] == 6
    assert isinstance(ck["rng_states"][0]["torch"], torch.Tensor)


def test_checkpoint_with_pickled_object_is_refused_unless_allow_pickle(tmp_path):
    t = make_trainer(tmp_path, max_iter=2, checkpoint_period=1)
    t.train()
    ck = load_file(tmp_path / "model_final.pth")
    ck["payload"] = fractions.Fraction(1, 3)  # any class outside the allowlist: unpickling runs its code
    save_atomic(ck, tmp_path / "model_final.pth")
    t2 = make_trainer(tmp_path, max_iter=4)
    with pytest.raises(CheckpointFormatError,
                       match=r"(?s)model_final\.pth.*fractions\.Fraction.*allow_pickle=True"):
        t2.resume_or_load(resume=True)
    t3 = make_trainer(tmp_path, max_iter=4, allow_pickle=True)
    t3.resume_or_load(resume=True)
    assert t3.start_iter == 2
    assert load_file(tmp_path / "model_final.pth", allow_pickle=True)["payload"] == fractions.Fraction(1, 3)


def test_init_checkpoint_loads_weights_when_not_resuming(tmp_path):
    src = ToyRegressor()
    save_atomic({"model": src.state_dict()}, tmp_path / "init.pth")
    t = make_trainer(tmp_path / "run", max_iter=1, init_checkpoint=str(tmp_path / "init.pth"))
    t.resume_or_load(resume=True)  # nothing to resume: falls back to init_checkpoint
    assert t.start_iter == 0
    for k, v in src.state_dict().items():
        assert torch.equal(t.unwrapped_model.state_dict()[k], v)


def test_final_weights_export_as_safetensors(tmp_path):
    t = make_trainer(tmp_path, max_iter=3, ema_decay=0.5, checkpoint_format="safetensors")
    t.train()
    sd = load_file(tmp_path / "model_final.safetensors")
    for k, v in t.unwrapped_model.state_dict().items():
        assert torch.equal(sd[k], v)
    assert set(load_file(tmp_path / "model_final_ema.safetensors")) == set(sd)


# --------------------------------------------------------------------------- metrics
def test_metrics_json_has_one_record_per_log_period_with_expected_keys(tmp_path, caplog):
    t = make_trainer(tmp_path, max_iter=12, log_period=4, tensorboard=True)
    with caplog.at_level("INFO", logger="eva_core.engine"):
        t.train()
    console = [r.getMessage() for r in caplog.records if "iter: 11" in r.getMessage()]
    assert len(console) == 1 and all(s in console[0] for s in ("eta:", "it/s", "lr:", "loss_mse", "max_mem"))
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [3, 7, 11]
    for r in records:
        assert {"iteration", "lr", "total_loss", "loss_mse", "pred_mean", "time", "data_time", "it/s",
                "eta_seconds", "max_mem_mb", "grad_norm"} <= set(r)
        assert math.isfinite(r["total_loss"]) and r["max_mem_mb"] > 0
    assert list(tmp_path.glob("events.out.tfevents.*"))


# --------------------------------------------------------------------------- config
def _toy_config(tmp_path, **train):
    from omegaconf import OmegaConf

    from eva_core.config import LazyCall as L

    cfg = OmegaConf.create({"train": {"max_iter": 20, "output_dir": str(tmp_path), "device": "cpu",
                                      "log_period": 10, "checkpointer": {"period": 10, "max_to_keep": 1},
                                      "ema": {"enabled": True, "decay": 0.9}, "clip_grad": 1.0, **train}},
                           flags={"allow_objects": True})
    cfg.model = L(ToyRegressor)(hidden=8)
    cfg.optimizer = L(torch.optim.AdamW)(params=L(_all_params)(model=None), lr=0.01)
    cfg.dataloader = {"train": L(FixedBatches)(batches=toy_batches(4, 8))}
    cfg.lr_multiplier = L(cosine_with_warmup)(max_iter=20, warmup_iters=2)
    return cfg


def test_config_builders_and_train_from_config_build_and_train_a_lazy_config(tmp_path):
    from eva_core.engine import SimpleTrainer
    from eva_core.engine.config_build import (build_ema, build_lr_scheduler, build_model, build_optimizer,
                                              build_train_loader, build_trainer)
    from eva_core.engine.defaults import train_from_config

    cfg = _toy_config(tmp_path)
    model = build_model(cfg)
    t = build_trainer(cfg, model, build_optimizer(cfg, model), build_train_loader(cfg))
    assert type(t) is SimpleTrainer and t.clip_grad == 1.0
    assert isinstance(build_lr_scheduler(cfg, t.optimizer), LRMultiplier)
    assert build_ema(cfg, model) is not None
    assert t.optimizer.param_groups[0]["params"][0] is next(t.unwrapped_model.parameters())
    run = train_from_config(cfg, tensorboard=False)
    assert run.trainer.iter == 20 and run.results == {}  # no test set: nothing evaluated
    ck = load_file(tmp_path / "model_final.pth")
    assert ck["iteration"] == 19 and {"ema", "scheduler", "optimizer", "data_loader"} <= set(ck)


def test_seeded_training_ignores_and_keeps_the_callers_rng_state(tmp_path):
    import random

    import numpy as np

    from eva_core.engine.defaults import train_from_config_seeded

    def weights(run):
        return [p.detach().clone() for p in run.trainer.unwrapped_model.parameters()]

    torch.manual_seed(1)
    first = weights(train_from_config_seeded(_toy_config(tmp_path / "a", max_iter=5), 7, tensorboard=False))
    torch.manual_seed(2)  # a different caller state: the same model (init and training seeded by 7)
    random.seed(3)
    np.random.seed(4)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    second = weights(train_from_config_seeded(_toy_config(tmp_path / "b", max_iter=5), 7, tensorboard=False))
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])
    other = weights(train_from_config_seeded(_toy_config(tmp_path / "c", max_iter=5), 8, tensorboard=False))
    assert not all(torch.equal(x, y) for x, y in zip(first, other))


def test_train_from_config_names_a_stalled_rank_after_train_heartbeat_timeout(tmp_path, caplog):
    import time

    from eva_core.engine.defaults import default_hooks, train_from_config
    from eva_core.engine.heartbeat import HeartbeatHook

    cfg = _toy_config(tmp_path, max_iter=6, heartbeat_timeout=0.3)
    stall = CallbackHook(before_step=lambda t: t.iter == 3 and time.sleep(1.5))
    with caplog.at_level("INFO", logger="eva_core.engine"):
        train_from_config(cfg, extra_hooks=[stall], tensorboard=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(w.startswith("rank 0 made no progress for ") and "last iteration 2" in w
               and "[train.heartbeat_timeout=0.3 s]" in w for w in warnings), warnings
    off = default_hooks(_toy_config(tmp_path, heartbeat_timeout=0), _StubTrainer(), checkpointer=None)
    assert [h.enabled for h in off if isinstance(h, HeartbeatHook)] == [False]


class _StubTrainer:
    optimizer = None
    unwrapped_model = None


def _all_params(model):
    return list(model.parameters())


# --------------------------------------------------------------------------- fp16 loss scaler
def _scaler_run(overflows, **scaler_kw):
    """Steps of an fp32 model through DynamicLossScaler; ``overflows[i]`` injects inf gradients.

    Returns the scale after each step and whether the step changed the weights."""
    from eva_core.engine.amp import DynamicLossScaler

    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = DynamicLossScaler("cpu", **scaler_kw)
    scales, changed = [], []
    for overflow in overflows:
        before = model.weight.detach().clone()
        scaler.scale(model(torch.randn(2, 4)).sum()).backward()
        if overflow:
            model.weight.grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        scales.append(scaler.get_scale())
        changed.append(not torch.equal(model.weight, before))
        assert scaler.last_step_overflowed == overflow
    return scales, changed, scaler


def test_loss_scaler_hysteresis_2_lowers_the_scale_on_the_second_overflow_and_skips_both():
    seq = [0, 1, 1, 1, 0, 0, 0, 1, 0]
    scales, changed, _ = _scaler_run(seq, init_scale=2.0**16, growth_interval=3, hysteresis=2)
    assert changed == [not o for o in seq]  # every overflow skips its step
    # 1st overflow tolerated, 2nd halves (tolerance refilled), 3rd tolerated again; three good
    # steps double the scale and refill the tolerance, so the next overflow is tolerated
    assert scales == [2.0**16, 2.0**16, 2.0**15, 2.0**15, 2.0**15, 2.0**15, 2.0**16, 2.0**16, 2.0**16]
    torch_like, _, _ = _scaler_run(seq, init_scale=2.0**16, growth_interval=3, hysteresis=1)
    assert torch_like[:4] == [2.0**16, 2.0**15, 2.0**14, 2.0**13]


def test_loss_scaler_never_goes_below_min_scale():
    scales, changed, _ = _scaler_run([1, 1, 1, 1, 0], init_scale=8.0, hysteresis=1, min_scale=2.0)
    assert scales == [4.0, 2.0, 2.0, 2.0, 2.0] and changed == [False] * 4 + [True]
    with pytest.raises(ValueError, match="min_scale"):
        _scaler_run([], init_scale=0.5, min_scale=1.0)


def test_loss_scaler_state_dict_keeps_the_hysteresis_count():
    from eva_core.engine.amp import DynamicLossScaler

    _, _, scaler = _scaler_run([1], init_scale=2.0**10, hysteresis=3)
    restored = DynamicLossScaler("cpu", hysteresis=3)
    restored.load_state_dict(scaler.state_dict())
    assert restored.overflows_left == 2 and restored.get_scale() == 2.0**10


def test_common_train_config_gives_the_papers_fp16_loss_scaling():
    from pathlib import Path

    from eva_core.config import LazyCall as L
    from eva_core.config import LazyConfig
    from eva_core.engine import AMPTrainer
    from eva_core.engine.config_build import build_model, build_optimizer, build_train_loader, build_trainer

    root = Path(__file__).resolve().parents[1]
    cfg = LazyConfig.load(str(root / "configs/common/train.py"))
    # the recipe's values are the paper's (DeepSpeed's dynamic loss scaling) ...
    assert dict(cfg.train.amp.loss_scale) == {"init_scale": 2.0**16, "growth_interval": 500, "hysteresis": 2,
                                              "min_scale": 1.0}
    # ... and whatever the config says reaches the trainer's scaler: values unlike the defaults
    cfg.train.update(device="cpu", output_dir=None, amp={"enabled": True, "dtype": "float16", "loss_scale": {
        "init_scale": 2.0**10, "growth_interval": 7, "hysteresis": 3, "min_scale": 4.0}})
    cfg.model = L(ToyRegressor)(hidden=8)
    cfg.optimizer = L(torch.optim.SGD)(params=L(_all_params)(model=None), lr=0.01)
    cfg.dataloader = {"train": L(FixedBatches)(batches=toy_batches(1, 8))}
    model = build_model(cfg)
    t = build_trainer(cfg, model, build_optimizer(cfg, model), build_train_loader(cfg))
    assert isinstance(t, AMPTrainer) and t.precision == torch.float16
    s = t.grad_scaler
    assert s.is_enabled()
    assert (s.get_scale(), s.get_growth_interval(), s.hysteresis, s.min_scale) == (2.0**10, 7, 3, 4.0)


# --------------------------------------------------------------------------- hooks
class _PublicView:
    """What a hook sees of the trainer: its public attributes only (a private one raises)."""

    def __init__(self, trainer):
        object.__setattr__(self, "_t", trainer)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(f"hook read the trainer's private member {name!r}")
        return getattr(object.__getattribute__(self, "_t"), name)

    def __setattr__(self, name, value):
        if name.startswith("_"):
            raise AttributeError(f"hook wrote the trainer's private member {name!r}")
        setattr(object.__getattribute__(self, "_t"), name, value)


class _BareLoop:
    """A hand-written loop (not an eva_core trainer) with only the documented public state:
    ``iter``, ``start_iter``, ``max_iter``, ``storage``, ``step_taken``, ``nonfinite_streak``."""

    def __init__(self, model, optimizer, batches, hooks):
        from eva_core.utils.events import EventStorage

        self.model, self.optimizer, self.batches = model, optimizer, batches
        self.iter = self.start_iter = 0
        self.max_iter = len(batches)
        self.storage = EventStorage(0)
        self.step_taken, self.nonfinite_streak = False, 0
        self.hooks = hooks
        for h in hooks:
            h.trainer = _PublicView(self)

    def train(self):
        for h in self.hooks:
            h.before_train()
        for self.iter in range(self.max_iter):
            self.storage.iter = self.iter
            for h in self.hooks:
                h.before_step()
            loss = self.model(self.batches[self.iter])["loss_mse"]
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.step_taken = True
            self.storage.put_scalar("total_loss", loss.item())
            for h in self.hooks:
                h.after_step()
        for h in self.hooks:
            h.after_train()


def test_hooks_constructed_with_what_they_act_on_need_no_private_trainer_state(tmp_path):
    from timm.utils import ModelEmaV3

    from eva_core.engine import (Checkpointer, EMAHook, EvalHook, IterationTimer, LRScheduler,
                                 PeriodicCheckpointer, PeriodicWriter)

    torch.manual_seed(0)
    model = ToyRegressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = LRMultiplier(opt, cosine_with_warmup(max_iter=6, warmup_iters=1), max_iter=6)
    ema = ModelEmaV3(model, decay=0.5)
    checkpointer = Checkpointer(model, str(tmp_path), optimizer=opt, scheduler=sched, ema=ema)
    evaluated_at, records = [], []

    def eval_fn():
        evaluated_at.append(loop.iter)
        return {"val": {"bbox": {"AP": 10.0 + loop.iter}, "segm": {"AP": 5.0}}}

    class ListWriter:
        def write(self, record):
            records.append(record)

        def close(self):
            records.append("closed")

    loop = _BareLoop(model, opt, toy_batches(6, 8), [
        IterationTimer(), LRScheduler(opt, sched), EMAHook(ema, model),
        PeriodicCheckpointer(checkpointer, 3, max_iter=6, final_weights_format="safetensors",
                             ema_model=ema.module),
        EvalHook(3, eval_fn), PeriodicWriter([ListWriter()], period=3)])
    loop.train()
    assert evaluated_at == [2, 5]
    assert sorted(p.name for p in tmp_path.glob("model_*")) == [
        "model_0000002.pth", "model_0000005.pth", "model_final.pth", "model_final.safetensors",
        "model_final_ema.safetensors"]
    assert load_file(tmp_path / "model_0000002.pth")["scheduler"]["last_epoch"] == 3
    assert [r["iteration"] for r in records[:-1]] == [2, 5] and records[-1] == "closed"
    assert records[1]["eval/val/bbox/AP"] == 15.0 and records[1]["eval/val/segm/AP"] == 5.0
    assert {"lr", "time", "total_loss"} <= set(records[1])
    assert not torch.equal(ema.module.net[0].weight, model.net[0].weight)


def test_periodic_checkpointer_skips_saving_during_a_nonfinite_streak(tmp_path):
    from eva_core.engine import Checkpointer, PeriodicCheckpointer

    model = ToyRegressor()
    hook = PeriodicCheckpointer(Checkpointer(model, str(tmp_path)), 2, max_iter=4)

    class Loop:  # the public state the hook reads
        iter, max_iter, nonfinite_streak, last_checkpoint = 1, 4, 1, None

    hook.trainer = loop = Loop()
    hook.after_step()
    assert not list(tmp_path.glob("*.pth"))
    loop.nonfinite_streak = 0
    hook.after_step()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert loop.last_checkpoint == str(tmp_path / "model_0000001.pth")


def test_lr_scheduler_hook_refuses_a_scheduler_of_another_optimizer():
    from eva_core.engine import LRScheduler

    model = ToyRegressor()
    a, b = (torch.optim.SGD(model.parameters(), lr=0.1) for _ in range(2))
    with pytest.raises(ValueError, match="another optimizer"):
        LRScheduler(a, LRMultiplier(b, cosine_with_warmup(max_iter=4, warmup_iters=1), max_iter=4))
