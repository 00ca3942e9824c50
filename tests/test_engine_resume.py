"""Exact resume: a run killed with SIGKILL (mid-training or mid-checkpoint-write) and resumed ends
bitwise identical to an uninterrupted run.

The runs that get killed are subprocesses executing this file (``python test_engine_resume.py
OUT ...``); the uninterrupted and the resuming runs execute in the test process with the same
single-threaded deterministic settings.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

MAX_ITER, PERIOD = 20, 5


def build_trainer(out: str):
    """AdamW + cosine lr + EMA + clipping + grad accumulation + dropout + per-sample noise,
    fed by eva_core's resumable loader: every piece of state a resume must restore."""
    from helpers import ToyDataset, ToyRegressor, ToyRun

    from eva_core.data import build_train_loader
    from eva_core.optim import cosine_with_warmup

    torch.manual_seed(0)
    model = ToyRegressor(hidden=32, dropout=0.2)
    loader = build_train_loader(ToyDataset(64, noise=0.1), total_batch_size=8, num_workers=0, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    return ToyRun(out, model=model, data_loader=loader, optimizer=opt,
                  lr_scheduler=cosine_with_warmup(max_iter=MAX_ITER, warmup_iters=3), max_iter=MAX_ITER,
                  checkpoint_period=PERIOD, max_to_keep=2, ema_decay=0.9, clip_grad=0.5, grad_accum_steps=2,
                  log_period=5, tensorboard=False)


def _die_in_nth_save(n: int) -> None:
    """Make the n-th ``torch.save`` write half of its bytes and then SIGKILL the process."""
    import io

    real_save, calls = torch.save, [0]

    def save(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] < n:
            return real_save(obj, f, *a, **k)
        buf = io.BytesIO()
        real_save(obj, buf, *a, **k)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save


def train_in_this_process(out: Path) -> None:
    """An uninterrupted (or resuming) run without starting a new interpreter."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        worker(str(out), None, None)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def worker(out: str, die_at_iter: int | None, die_in_save: int | None) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    from eva_core.engine import CallbackHook

    trainer = build_trainer(out)
    if die_at_iter is not None:
        trainer.register_hooks([CallbackHook(before_step=lambda t: t.iter == die_at_iter
                                             and os.kill(os.getpid(), signal.SIGKILL))])
    if die_in_save is not None:
        _die_in_nth_save(die_in_save)
    trainer.resume_or_load(resume=True)
    trainer.train()


def run_worker(out: Path, *args: str) -> int:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, __file__, str(out), *args], env=env, capture_output=True,
                          text=True, timeout=120)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"worker failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode


def final_state(out: Path) -> dict:
    from eva_core.checkpoint import load_file

    ck = load_file(out / "model_final.pth")
    return {k: ck[k] for k in ("model", "ema", "optimizer", "scheduler", "data_loader", "iteration")}


def assert_bitwise_equal(a, b, path="") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: keys differ"
        for k in a:
            assert_bitwise_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("uninterrupted")
    train_in_this_process(out)
    return final_state(out)


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, uninterrupted):
    assert run_worker(tmp_path, "--die-at-iter", "13") == -signal.SIGKILL
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert not (tmp_path / "model_final.pth").exists()
    train_in_this_process(tmp_path)
    resumed = final_state(tmp_path)
    assert resumed["iteration"] == MAX_ITER - 1
    assert_bitwise_equal(resumed, uninterrupted)
    # max_to_keep=2 periodic files survive (plus the final one)
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_0000014.pth", "model_0000019.pth", "model_final.pth"]


def test_kill_during_checkpoint_write_keeps_previous_checkpoint_loadable(tmp_path, uninterrupted):
    from eva_core.checkpoint import load_file

    assert run_worker(tmp_path, "--die-in-save", "2") == -signal.SIGKILL  # dies writing model_0000009
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"
    assert not (tmp_path / "model_0000009.pth").exists()
    partial = list(tmp_path.glob(".model_0000009.pth.*.tmp"))
    assert len(partial) == 1  # the half-written temporary never replaced anything
    assert load_file(tmp_path / "model_0000004.pth")["iteration"] == 4
    train_in_this_process(tmp_path)
    assert not partial[0].exists()  # resume cleaned it up
    assert_bitwise_equal(final_state(tmp_path), uninterrupted)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--die-at-iter", type=int)
    parser.add_argument("--die-in-save", type=int)
    a = parser.parse_args()
    worker(a.out, a.die_at_iter, a.die_in_save)
