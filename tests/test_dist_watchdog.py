"""A stalled rank (alive, not progressing) is named by the heartbeat and ends the job after
``train.dist_timeout``, instead of holding the other ranks silently for 30 minutes.

The two-process run is a subprocess (``launch`` over gloo, as ``--num-gpus 2`` on CPU does) whose
rank 1 sleeps inside a training loop while rank 0 waits in the iteration's all-reduce.
"""
import importlib.util
import logging
import os
import re
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from eva_core.engine import launch as launch_module
from eva_core.engine.heartbeat import HeartbeatHook
from eva_core.engine.hooks import CallbackHook
from eva_core.engine.launch import collective_timeout, launch
from eva_core.engine.train_loop import TrainerBase
from eva_core.utils import comm

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "lazyconfig_train_net.py"
TOY_CONFIG = REPO / "configs" / "classification" / "toy_imagefolder.py"

STALL_ITER = 3
HEARTBEAT_TIMEOUT = 2.0
# long enough for the heartbeat to warn first, and for both spawned processes to finish importing
# torch and meet at the rendezvous (which has the same timeout) on a busy machine
DIST_TIMEOUT = 15.0
# an "it ended" bound, not a speed check: without train.dist_timeout gloo would wait 30 minutes
JOB_BOUND_S = 180

STALLED_RANK_JOB = f"""
import sys
import time

import torch
import torch.distributed as dist

from eva_core.engine.heartbeat import HeartbeatHook
from eva_core.engine.launch import launch
from eva_core.engine.train_loop import TrainerBase
from eva_core.utils import comm
from eva_core.utils.logging import setup_logger


class AllReduceEveryStep(TrainerBase):
    # each iteration all-reduces, as DDP's gradient all-reduce does
    def run_step(self):
        if comm.get_rank() == 1 and self.iter == {STALL_ITER}:
            time.sleep(600)  # stalled, not dead
        dist.all_reduce(torch.ones(1))


def main(heartbeat_timeout):
    setup_logger()  # rank 0 logs to stdout
    trainer = AllReduceEveryStep()
    trainer.register_hooks([HeartbeatHook(heartbeat_timeout)])
    trainer.train(0, 10)


if __name__ == "__main__":
    launch(main, 2, args=(float(sys.argv[2]),), timeout=float(sys.argv[1]))
"""


@pytest.fixture(scope="module")
def stalled_rank_job(tmp_path_factory):
    """The two-process job with rank 1 stalled at iteration STALL_ITER: ``CompletedProcess``."""
    script = tmp_path_factory.mktemp("stall") / "stalled_rank_job.py"
    script.write_text(STALLED_RANK_JOB)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        return subprocess.run([sys.executable, str(script), str(DIST_TIMEOUT), str(HEARTBEAT_TIMEOUT)],
                              env=env, capture_output=True, text=True, timeout=JOB_BOUND_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the job with a stalled rank did not end within {JOB_BOUND_S} s although "
                    f"train.dist_timeout={DIST_TIMEOUT}:\n{e.stdout}\n{e.stderr}")


def _heartbeat_warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if "made no progress" in line and "WARNING" in line]


def test_stalled_rank_is_named_by_the_heartbeat(stalled_rank_job):
    warnings = _heartbeat_warnings(stalled_rank_job.stdout)
    assert warnings, f"no heartbeat warning on rank 0's console:\n{stalled_rank_job.stdout[-3000:]}"
    first = warnings[0]
    # rank 1 is named first, with its last finished iteration and the line it is stuck at
    assert re.search(rf"rank 1 made no progress for [\d.]+ s \(last iteration {STALL_ITER - 1}, in "
                     rf"stalled_rank_job\.py:\d+ run_step\)", first), first
    assert f"[train.heartbeat_timeout={HEARTBEAT_TIMEOUT:g} s]" in first
    # rank 0 is blocked in the all-reduce, waiting for rank 1: named as waiting, after rank 1 (it may
    # join the warnings one poll later than rank 1; the stall is reported again when it doubles)
    with_rank0 = [w for w in warnings if "rank 0 made no progress" in w]
    assert with_rank0, warnings
    for line in with_rank0:
        assert re.search(r"rank 0 made no progress for [\d.]+ s \(last iteration \d+, waiting in "
                         r"distributed_c10d\.py:\d+ all_reduce\)", line), line
        assert line.index("rank 1 made") < line.index("rank 0 made")


def test_blocked_collective_fails_after_train_dist_timeout_and_the_launcher_exits_nonzero(stalled_rank_job):
    assert stalled_rank_job.returncode != 0
    # rank 0's error, reported by the launcher, names the setting and the cause
    assert "CollectiveTimeoutError" in stalled_rank_job.stderr, stalled_rank_job.stderr[-3000:]
    named = rf"rank 0: a collective operation waited more than {DIST_TIMEOUT:g} s \(train\.dist_timeout\)"
    assert re.search(named, stalled_rank_job.stderr), stalled_rank_job.stderr[-3000:]
    assert "Timed out waiting" in stalled_rank_job.stderr, "the backend's own error is kept"


class _InitCalled(Exception):
    """Raised by the recording init_process_group: the test needs nothing after it."""


@pytest.fixture
def recorded_init(monkeypatch):
    """Make ``launch`` run rank 0's worker in this process and record ``init_process_group``'s
    arguments instead of creating a group; returns the list of recorded keyword arguments."""
    calls = []

    def init_process_group(*args, **kwargs):
        calls.append(kwargs)
        raise _InitCalled

    def start_processes(fn, nprocs, args, **kwargs):
        fn(0, *args)

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(launch_module, "mp", SimpleNamespace(start_processes=start_processes))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(comm, "_LOCAL_RANK", comm.get_local_rank())
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    return calls


def _run_train_net(monkeypatch, *argv):
    spec = importlib.util.spec_from_file_location("lazyconfig_train_net_under_test", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(sys, "argv", [str(TOOL), "--config-file", str(TOY_CONFIG), *argv])
    with pytest.raises((_InitCalled, RuntimeError)) as info:
        tool.invoke_main()
    # _distributed_worker re-raises an init failure as a RuntimeError naming the address
    assert isinstance(info.value, _InitCalled) or isinstance(info.value.__cause__, _InitCalled), info.value


@pytest.mark.parametrize("overrides, expected_s", [([], 300.0), (["train.dist_timeout=7"], 7.0),
                                                   (["train.dist_timeout=2.5"], 2.5)])
@pytest.mark.parametrize("launcher", ["spawn", "torchrun"])
def test_collective_timeout_comes_from_train_dist_timeout(launcher, overrides, expected_s, recorded_init,
                                                          monkeypatch):
    if launcher == "torchrun":
        monkeypatch.setattr(dist, "is_initialized", lambda: False)
        for var, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
            monkeypatch.setenv(var, value)
    _run_train_net(monkeypatch, "--num-gpus", "2", *overrides)
    assert len(recorded_init) == 1
    assert recorded_init[0]["timeout"] == timedelta(seconds=expected_s)
    assert recorded_init[0]["backend"] == "gloo"


def test_default_collective_timeout_is_short_on_gloo_and_torchs_on_nccl():
    assert collective_timeout(None, "gloo") == timedelta(seconds=300)
    assert collective_timeout(None, "nccl") == timedelta(minutes=30)
    assert collective_timeout(timedelta(seconds=9), "nccl") == timedelta(seconds=9)


@pytest.mark.parametrize("bad", [0, -5, float("nan"), "60", True])
def test_dist_timeout_must_be_a_positive_number_of_seconds(bad):
    with pytest.raises(ValueError, match=r"train\.dist_timeout must be a .*number of seconds"):
        collective_timeout(bad, "gloo")
    with pytest.raises(ValueError, match=r"train\.dist_timeout"):
        launch(print, 2, timeout=bad)  # refused before any process starts


# ---------------------------------------------------------------- the hook in one process
@pytest.fixture
def engine_log():
    """Records of the ``eva_core.engine`` logger at INFO and above (whatever setup_logger did)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    log = logging.getLogger("eva_core.engine")
    old_level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    yield records
    log.removeHandler(handler)
    log.setLevel(old_level)


class _SleepyLoop(TrainerBase):
    """Iterations of ``step_s`` seconds, except iteration ``stall_iter`` which takes ``stall_s``."""

    def __init__(self, stall_iter: int, stall_s: float, step_s: float = 0.01):
        super().__init__()
        self.stall_iter, self.stall_s, self.step_s = stall_iter, stall_s, step_s

    def run_step(self):
        time.sleep(self.stall_s if self.iter == self.stall_iter else self.step_s)


def test_single_process_stall_is_reported_and_recovery_is_logged(engine_log):
    trainer = _SleepyLoop(stall_iter=2, stall_s=3.0, step_s=0.2)
    trainer.register_hooks([HeartbeatHook(0.5, poll_period=0.1)])
    trainer.train(0, 8)
    warnings = [r.getMessage() for r in engine_log if r.levelno == logging.WARNING]
    assert warnings, [r.getMessage() for r in engine_log]
    assert re.match(r"rank 0 made no progress for [\d.]+ s \(last iteration 1, in test_dist_watchdog\.py:\d+ "
                    r"run_step\) \[train\.heartbeat_timeout=0\.5 s\]$", warnings[0]), warnings[0]
    # repeated only when the stall has doubled, not at every poll (3 s / 0.1 s polls)
    assert 1 <= len(warnings) <= 4, warnings
    infos = [r.getMessage() for r in engine_log if r.levelno == logging.INFO]
    assert any(m.startswith("heartbeat: rank 0 is making progress again (iteration ") for m in infos), infos


def test_rank_that_never_reports_is_named_as_not_started(engine_log):
    # rank 1 of a 2-rank store never starts training (stuck before its first hook call)
    store = dist.HashStore()
    trainer = _SleepyLoop(stall_iter=-1, stall_s=0.0, step_s=0.05)
    trainer.register_hooks([HeartbeatHook(1.0, poll_period=0.1, store=store, rank=0, world_size=2)])
    trainer.train(0, 50)
    warnings = [r.getMessage() for r in engine_log if r.levelno == logging.WARNING]
    assert warnings
    assert re.match(r"rank 1 made no progress for [\d.]+ s \(it has not started training\); rank 0 is at "
                    r"iteration \d+ ", warnings[0]), warnings[0]
    assert all("rank 0 made no progress" not in w for w in warnings), "rank 0 kept finishing iterations"


def _heartbeat_threads() -> list[str]:
    return [th.name for th in threading.enumerate() if th.name.startswith("eva-heartbeat")]


def test_heartbeat_timeout_zero_disables_the_watchdog(engine_log):
    seen_threads = []
    trainer = _SleepyLoop(stall_iter=1, stall_s=0.3)
    trainer.register_hooks([HeartbeatHook(0, poll_period=0.05),
                            CallbackHook(after_step=lambda t: seen_threads.extend(_heartbeat_threads()))])
    trainer.train(0, 3)
    assert seen_threads == []
    assert not [r for r in engine_log if r.levelno >= logging.WARNING]


def test_watchdog_thread_runs_only_while_training():
    names = []
    trainer = _SleepyLoop(stall_iter=-1, stall_s=0.0)
    trainer.register_hooks([HeartbeatHook(30.0),
                            CallbackHook(after_step=lambda t: names.extend(_heartbeat_threads()))])
    trainer.train(0, 2)
    assert names == ["eva-heartbeat-rank0"] * 2
    assert _heartbeat_threads() == []


@pytest.mark.parametrize("bad", [-1, "60", None, True, float("inf")])
def test_heartbeat_timeout_must_be_a_non_negative_number(bad):
    with pytest.raises(ValueError, match=r"train\.heartbeat_timeout must be a number of seconds >= 0"):
        HeartbeatHook(bad)
