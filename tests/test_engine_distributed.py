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


def _toy_run(out: Path, **trainer_kw):
    from test_engine import ToyDataset, ToyRegressor

    from eva_core.data import build_train_loader
    from eva_core.engine import Trainer
    from eva_core.optim import cosine_with_warmup

    torch.manual_seed(0)
    model = ToyRegressor(hidden=32)
    loader = build_train_loader(ToyDataset(64, noise=0.05), total_batch_size=16, num_workers=0, seed=1)
    # two groups, one with a layer-decay style lr_scale, to check ZeRO keeps group settings
    net = model.net
    opt = torch.optim.AdamW([{"params": net[0].parameters(), "lr": 3e-2, "lr_scale": 0.5},
                             {"params": net[3].parameters(), "lr": 3e-2}], lr=3e-2, weight_decay=0.05)
    trainer = Trainer(model, loader, opt, lr_scheduler=cosine_with_warmup(max_iter=MAX_ITER, warmup_iters=2),
                      max_iter=MAX_ITER, device="cpu", output_dir=str(out), checkpoint_period=6,
                      log_period=6, tensorboard=False, **trainer_kw)
    losses = []
    from eva_core.engine import CallbackHook

    trainer.register_hooks([CallbackHook(after_step=lambda t: losses.append(t.storage.latest()["total_loss"][0]))])
    trainer.train()
    return trainer, losses


def _ddp_and_zero_worker(rank: int, init_file: str, out: str) -> None:
    _init(rank, init_file)
    report = {}
    for zero in (0, 1):
        trainer, losses = _toy_run(Path(out) / f"zero{zero}", zero_stage=zero, clip_grad=1.0, grad_accum_steps=2)
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
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3])
    ddp, zero = load_file(tmp_path / "zero0/model_final.pth"), load_file(tmp_path / "zero1/model_final.pth")
    for k, v in ddp["model"].items():
        torch.testing.assert_close(zero["model"][k], v, rtol=1e-5, atol=1e-6)
    # the ZeRO checkpoint holds the consolidated state of every parameter, loadable by plain AdamW
    assert len(zero["optimizer"]["state"]) == 4
    for i, st in ddp["optimizer"]["state"].items():
        torch.testing.assert_close(zero["optimizer"]["state"][i]["exp_avg_sq"], st["exp_avg_sq"], rtol=1e-4, atol=1e-9)
    assert zero["optimizer"]["param_groups"][0]["lr_scale"] == 0.5


def _deepspeed_worker(rank: int, init_file: str, out: str) -> None:
    import deepspeed.ops

    from eva_core.utils import comm

    _init(rank, init_file)
    comm.set_local_rank(rank)
    # DeepSpeed JIT-compiles a shared-memory all-reduce for CPU (minutes on a busy 2-core box);
    # it only speeds up communication, so this test runs ZeRO-1 over plain gloo instead
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    ds_config = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1,
                 "zero_optimization": {"stage": 1}, "zero_allow_untested_optimizer": True,
                 "steps_per_print": 10**9}
    trainer, losses = _toy_run(Path(out), deepspeed_config=ds_config, clip_grad=1.0)
    Path(out, f"report{rank}.json").write_text(json.dumps(
        {"engine": type(trainer.model).__name__, "losses": losses,
         "lr": trainer.optimizer.param_groups[1]["lr"]}))
    dist.destroy_process_group()


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")
def test_deepspeed_zero1_with_two_processes_trains(tmp_path, monkeypatch):
    from eva_core.checkpoint import load_file

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    mp.spawn(_deepspeed_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    reports = [json.loads((tmp_path / f"report{r}.json").read_text()) for r in range(WORLD)]
    assert reports[0]["engine"] == "DeepSpeedEngine"
    losses = reports[0]["losses"]
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3])
    assert reports[0]["lr"] < 3e-2  # our cosine schedule drove DeepSpeed's param groups
    final = load_file(tmp_path / "model_final.pth")
    assert final["iteration"] == MAX_ITER - 1
    assert all(torch.isfinite(v).all() for v in final["model"].values())
