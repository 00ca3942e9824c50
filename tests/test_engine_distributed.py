"""Multi-process training on CPU over gloo: DDP, torch ZeRO-1 and DeepSpeed ZeRO-1."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
MAX_ITER = 12


def _init(rank: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)


class _Interrupted(Exception):
    """Stands in for a killed process in the resume tests (torch ZeRO-1 and DeepSpeed)."""


def _toy_run(out: Path, *, hooks=(), resume: bool = False, poison_iter: int | None = None, **trainer_kw):
    """Train the toy regressor for MAX_ITER iterations; ``poison_iter`` makes that iteration's loss NaN."""
    from helpers import ToyDataset, ToyRegressor, ToyRun

    from eva_core.data import build_train_loader
    from eva_core.engine import CallbackHook
    from eva_core.optim import cosine_with_warmup

    torch.manual_seed(0)
    model = ToyRegressor(hidden=32)
    loader = build_train_loader(ToyDataset(64, noise=0.05), total_batch_size=16, num_workers=0, seed=1)
    # two groups, one with a layer-decay style lr_scale, to check ZeRO keeps group settings
    net = model.net
    opt = torch.optim.AdamW([{"params": net[0].parameters(), "lr": 3e-2, "lr_scale": 0.5},
                             {"params": net[3].parameters(), "lr": 3e-2}], lr=3e-2, weight_decay=0.05)
    trainer = ToyRun(out, model=model, data_loader=loader, optimizer=opt,
                     lr_scheduler=cosine_with_warmup(max_iter=MAX_ITER, warmup_iters=2), max_iter=MAX_ITER,
                     checkpoint_period=6, log_period=6, tensorboard=False, **trainer_kw)
    losses = []
    if poison_iter is not None:
        # a NaN weight on the input poisons this iteration's loss and gradients on every rank
        poison = lambda t: net[0].register_forward_pre_hook(  # noqa: E731
            lambda m, args: (args[0] * float("nan"),)) if t.iter == poison_iter else None
        handles = []
        trainer.register_hooks([CallbackHook(before_step=lambda t: handles.append(poison(t)),
                                             after_step=lambda t: [h.remove() for h in handles if h]
                                             and handles.clear())])
    record_loss = CallbackHook(after_step=lambda t: losses.append(t.storage.latest()["total_loss"][0]))
    trainer.register_hooks([record_loss,
                            *hooks])
    trainer.resume_or_load(resume=resume)
    try:
        trainer.train()
    except _Interrupted:
        pass
    return trainer, losses


def _ddp_and_zero_worker(rank: int, init_file: str, out: str) -> None:
    _init(rank, init_file)
    report = {}
    for zero in (0, 1):
        trainer, losses = _toy_run(Path(out) / f"zero{zero}", zero_stage=zero, clip_grad=1.0,
                                   grad_accum_steps=2)
        report[f"zero{zero}"] = {
            "optimizer": type(trainer.optimizer).__name__,
            "local_state_params": len(getattr(trainer.optimizer, "optim", trainer.optimizer).state),
            "losses": losses,
        }
    Path(out, f"report{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


def test_zero1_with_two_gloo_processes_trains_and_matches_ddp(tmp_path):
    from eva_core.checkpoint import load_file

    mp.spawn(_ddp_and_zero_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    reports = [json.loads((tmp_path / f"report{r}.json").read_text()) for r in range(WORLD)]
    assert reports[0]["zero1"]["optimizer"] == "ZeroRedundancyOptimizer"
    # ZeRO-1: each rank keeps optimizer state for its shard only (4 parameter tensors in all)
    assert [r["zero1"]["local_state_params"] for r in reports] in ([2, 2], [1, 3], [3, 1])
    assert reports[0]["zero0"]["local_state_params"] == 4
    losses = reports[0]["zero1"]["losses"]
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses  # ZeRO-1 training learns
    ddp, zero = load_file(tmp_path / "zero0/model_final.pth"), load_file(tmp_path / "zero1/model_final.pth")
    for k, v in ddp["model"].items():
        torch.testing.assert_close(zero["model"][k], v, rtol=1e-5, atol=1e-6)
    # the ZeRO checkpoint holds the consolidated state of every parameter, loadable by plain AdamW
    assert len(zero["optimizer"]["state"]) == 4
    for i, st in ddp["optimizer"]["state"].items():
        torch.testing.assert_close(zero["optimizer"]["state"][i]["exp_avg_sq"], st["exp_avg_sq"],
                                   rtol=1e-4, atol=1e-9)
    assert zero["optimizer"]["param_groups"][0]["lr_scale"] == 0.5


def _deepspeed_worker(rank: int, init_file: str, out: str) -> None:
    import deepspeed.ops

    from eva_core.engine import CallbackHook
    from eva_core.utils import comm

    _init(rank, init_file)
    comm.set_local_rank(rank)
    # DeepSpeed JIT-compiles a shared-memory all-reduce for CPU (minutes on a busy 2-core box);
    # it only speeds up communication, so this test runs ZeRO-1 over plain gloo instead
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    ds_config = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1,
                 "zero_optimization": {"stage": 1}, "zero_allow_untested_optimizer": True,
                 "steps_per_print": 10**9}
    snapshots = {}

    def snapshot(t):
        if t.iter in (POISON_ITER, POISON_ITER + 1):
            snapshots[t.iter] = {k: v.clone() for k, v in t.unwrapped_model.state_dict().items()}

    full, losses = _toy_run(Path(out, "full"), deepspeed_config=ds_config, clip_grad=1.0,
                            poison_iter=POISON_ITER, hooks=[CallbackHook(before_step=snapshot)])
    _toy_run(Path(out, "split"), deepspeed_config=ds_config, clip_grad=1.0, poison_iter=POISON_ITER,
             hooks=[CallbackHook(before_step=lambda t: t.iter == MAX_ITER // 2 and _raise(_Interrupted()))])
    resumed, _ = _toy_run(Path(out, "split"), deepspeed_config=ds_config, clip_grad=1.0, resume=True)
    Path(out, f"report{rank}.json").write_text(json.dumps(
        {"engine": type(full.model).__name__, "losses": losses,
         "lr": full.optimizer.param_groups[1]["lr"], "nonfinite_total": full.nonfinite_total,
         "poisoned_step_changed_nothing": all(torch.equal(v, snapshots[POISON_ITER + 1][k])
                                              for k, v in snapshots[POISON_ITER].items()),
         "resumed_start_iter": resumed.start_iter,
         "skipped_steps": [full.engine.skipped_steps, resumed.engine.skipped_steps]}))
    dist.destroy_process_group()


def _raise(exc: BaseException):
    raise exc


POISON_ITER = 3


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")
def test_deepspeed_zero1_trains_skips_nan_steps_and_resumes_exactly(tmp_path, monkeypatch):
    from eva_core.checkpoint import load_file

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    mp.spawn(_deepspeed_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    reports = [json.loads((tmp_path / f"report{r}.json").read_text()) for r in range(WORLD)]
    assert reports[0]["engine"] == "DeepSpeedEngine"
    losses = reports[0]["losses"]
    # 12 noisy iterations, one of them skipped
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])
    assert reports[0]["lr"] < 3e-2  # our cosine schedule drove DeepSpeed's param groups
    # the NaN iteration is counted and leaves the weights (and DeepSpeed's optimizer) untouched
    assert all(r["nonfinite_total"] == 1 and r["poisoned_step_changed_nothing"] for r in reports)
    assert all(r["skipped_steps"] == [1, 1] for r in reports)  # the counter survives the resume
    full = load_file(tmp_path / "full/model_final.pth")
    assert full["iteration"] == MAX_ITER - 1
    assert all(torch.isfinite(v).all() for v in full["model"].values())
    # next to each checkpoint: DeepSpeed's own state, one optimizer partition per rank
    ds_state = tmp_path / "full/model_0000005.deepspeed/state"
    assert len(list(ds_state.glob("*optim_states.pt"))) == WORLD
    assert not list((tmp_path / "full").glob(".*.tmp"))
    # MAX_ITER/2 iterations, a "kill", then resume: bitwise the uninterrupted run's weights
    assert reports[0]["resumed_start_iter"] == MAX_ITER // 2
    split = load_file(tmp_path / "split/model_final.pth")
    for k, v in full["model"].items():
        assert torch.equal(split["model"][k], v), k


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_deepspeed_resume_reads_files_without_running_pickled_code(tmp_path):
    import fractions
    from types import SimpleNamespace

    from deepspeed.runtime.fp16.loss_scaler import LossScaler

    from eva_core.checkpoint import CheckpointFormatError
    from eva_core.engine.checkpointer import _safe_deepspeed_reads

    def unsafe_load(path, map_location=None):
        return torch.load(path, map_location=map_location, weights_only=False)

    engine = SimpleNamespace(checkpoint_engine=SimpleNamespace(load=unsafe_load))
    ds_file, evil_file = tmp_path / "optim_states.pt", tmp_path / "evil.pt"
    torch.save({"loss_scaler": LossScaler(4.0), "w": torch.ones(2)}, ds_file)
    torch.save({"payload": fractions.Fraction(1, 3)}, evil_file)
    with _safe_deepspeed_reads(engine, allow_pickle=False):
        state = engine.checkpoint_engine.load(str(ds_file))  # DeepSpeed's own types are allowlisted
        assert state["loss_scaler"].cur_scale == 4.0 and torch.equal(state["w"], torch.ones(2))
        with pytest.raises(CheckpointFormatError, match="allow_pickle"):
            engine.checkpoint_engine.load(str(evil_file))
    assert engine.checkpoint_engine.load is unsafe_load  # DeepSpeed's loader is put back
    with _safe_deepspeed_reads(engine, allow_pickle=True):
        assert engine.checkpoint_engine.load(str(evil_file))["payload"] == fractions.Fraction(1, 3)


def _zero1_resume_worker(rank: int, init_file: str, out: str) -> None:
    from eva_core.engine import CallbackHook

    _init(rank, init_file)
    kw = dict(zero_stage=1, clip_grad=1.0, grad_accum_steps=2)
    full, full_losses = _toy_run(Path(out, "full"), **kw)
    interrupted, _ = _toy_run(Path(out, "split"), **kw, hooks=[CallbackHook(
        before_step=lambda t: t.iter == MAX_ITER // 2 and _raise(_Interrupted()))])
    resumed, resumed_losses = _toy_run(Path(out, "split"), **kw, resume=True)
    runs = {"full": full, "resumed": resumed}
    # this rank's shard: the AdamW state of the parameters it owns, in order
    local = {name: {str(i): dict(t.optimizer.optim.state[p]) for i, p in enumerate(
        p for g in t.optimizer.optim.param_groups for p in g["params"])} for name, t in runs.items()}
    groups = {name: [{k: v for k, v in g.items() if k != "params"} for g in t.optimizer.param_groups]
              for name, t in runs.items()}
    torch.save({"local_state": local, "groups": groups,
                "interrupted_at": interrupted.iter, "resumed_start_iter": resumed.start_iter,
                "optimizer": type(resumed.optimizer).__name__,
                "losses": {"full": full_losses, "resumed": resumed_losses}},
               Path(out, f"zero1_resume{rank}.pt"))
    dist.destroy_process_group()


def test_zero1_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    from eva_core.checkpoint import load_file

    mp.spawn(_zero1_resume_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    reports = [torch.load(tmp_path / f"zero1_resume{r}.pt", weights_only=True) for r in range(WORLD)]
    assert reports[0]["optimizer"] == "ZeroRedundancyOptimizer"
    assert [r["interrupted_at"] for r in reports] == [MAX_ITER // 2] * WORLD
    assert [r["resumed_start_iter"] for r in reports] == [MAX_ITER // 2] * WORLD
    # the resumed iterations see the same batches and weights: bitwise the same losses
    assert reports[0]["losses"]["resumed"] == reports[0]["losses"]["full"][MAX_ITER // 2:]
    full, split = load_file(tmp_path / "full/model_final.pth"), load_file(tmp_path / "split/model_final.pth")
    assert full["iteration"] == split["iteration"] == MAX_ITER - 1
    for k, v in full["model"].items():
        assert torch.equal(split["model"][k], v), k
    # the consolidated AdamW state (every parameter's moments and step) and the param groups
    # (lr after the schedule, lr_scale, weight decay) are bitwise the uninterrupted run's
    assert len(full["optimizer"]["state"]) == 4
    assert split["optimizer"]["state"].keys() == full["optimizer"]["state"].keys()
    for i, st in full["optimizer"]["state"].items():
        assert st.keys() == split["optimizer"]["state"][i].keys()
        for k, v in st.items():
            assert torch.equal(split["optimizer"]["state"][i][k], v), (i, k)
    assert split["optimizer"]["param_groups"] == full["optimizer"]["param_groups"]
    assert full["optimizer"]["param_groups"][0]["lr_scale"] == 0.5
    assert full["optimizer"]["param_groups"][0]["lr"] < 3e-2  # the schedule moved the lr
    assert split["scheduler"] == full["scheduler"]
    # every rank's own shard (what steps after a resume use) and its live param groups match too
    for r in reports:
        assert r["groups"]["resumed"] == r["groups"]["full"]
        for i, st in r["local_state"]["full"].items():
            got = r["local_state"]["resumed"][i]
            assert st.keys() == got.keys(), i
            for k, v in st.items():
                assert torch.equal(got[k], v), (i, k)
    assert sum(len(r["local_state"]["full"]) for r in reports) == 4
