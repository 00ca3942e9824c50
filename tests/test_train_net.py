"""tools/lazyconfig_train_net.py end to end (subprocesses), launch() and default_setup()."""
import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from eva_core.config import LazyConfig
from eva_core.data.toy_world import make_imagefolder
from eva_core.engine.defaults import default_argument_parser, default_setup
from eva_core.engine import launch as launch_module
from eva_core.engine.launch import launch
from eva_core.utils import comm

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "lazyconfig_train_net.py"
TOY_CONFIG = REPO / "configs" / "classification" / "toy_imagefolder.py"
NUM_CLASSES = 4


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run_tool(*argv, timeout=240):
    return subprocess.run([sys.executable, str(TOOL), *map(str, argv)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _results(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("results: ")]
    assert len(lines) == 1, f"expected one results line from rank 0, got {lines}"
    return json.loads(lines[0][len("results: "):])


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    # the toy world's colour task (class = colour of the one drawn shape), first 4 colours
    paths = make_imagefolder(tmp_path_factory.mktemp("toy_world"), num_classes=NUM_CLASSES,
                             train_per_class=32, val_per_class=16, img_size=32, seed=0, label="color")
    return [f"dataloader.train.dataset.root={paths['imagefolder_color_train']}",
            f"dataloader.test.dataset.root={paths['imagefolder_color_val']}",
            f"model.net.num_classes={NUM_CLASSES}", "train.max_iter=40", "train.eval_period=40",
            "train.checkpointer.period=40", "train.log_period=20", "train.device=cpu"]


@pytest.fixture(scope="module")
def single_process_run(toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    proc = _run_tool("--config-file", TOY_CONFIG, *toy_data, f"train.output_dir={out}")
    return out, _results(proc)


@pytest.fixture
def tool_without_launch(monkeypatch):
    """tools/lazyconfig_train_net.py imported by path, in this process, with ``launch`` replaced
    by a recorder: the exit-2 checks need no subprocess, and any started run would be seen."""
    spec = importlib.util.spec_from_file_location("lazyconfig_train_net_under_test", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.launched = []
    monkeypatch.setattr(tool, "launch", lambda *a, **k: tool.launched.append((a, k)))
    return tool


def _invoke(tool, monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", [str(TOOL), *map(str, argv)])
    with pytest.raises(SystemExit) as info:
        tool.invoke_main()
    return info.value.code


def test_unknown_override_exits_2_naming_key_before_anything_starts(tool_without_launch, tmp_path,
                                                                    monkeypatch, capsys):
    out = tmp_path / "never_created"
    code = _invoke(tool_without_launch, monkeypatch, "--config-file", TOY_CONFIG, "--num-gpus", 2,
                   "train.max_iters=5", f"train.output_dir={out}")
    err = capsys.readouterr().err
    assert code == 2
    assert "'train.max_iters'" in err and "train.max_iter" in err
    assert not out.exists()
    assert tool_without_launch.launched == []


def test_missing_init_checkpoint_exits_2_before_anything_starts(tool_without_launch, tmp_path,
                                                                monkeypatch, capsys):
    code = _invoke(tool_without_launch, monkeypatch, "--config-file", TOY_CONFIG, "--eval-only",
                   f"train.init_checkpoint={tmp_path / 'nope.pth'}", f"train.output_dir={tmp_path / 'out'}")
    assert code == 2
    assert "nope.pth" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert tool_without_launch.launched == []


def test_valid_command_reaches_launch_with_parsed_arguments(tool_without_launch, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(TOOL), "--config-file", str(TOY_CONFIG), "--num-gpus", "3",
                                      "train.max_iter=5"])
    tool_without_launch.invoke_main()
    [(args, kwargs)] = tool_without_launch.launched
    assert args[0] is tool_without_launch.main and args[1] == 3
    assert kwargs["args"][0].opts == ["train.max_iter=5"]


def test_single_process_training_reaches_high_val_accuracy(single_process_run):
    out, results = single_process_run
    assert results["top1"] >= 90.0, results
    assert (out / "model_final.pth").is_file()
    assert (out / "log.txt").is_file()
    saved = LazyConfig.load(out / "config.yaml")
    assert saved.train.max_iter == 40 and saved.train.output_dir == str(out)


def test_two_gloo_processes_reach_high_val_accuracy(toy_data, tmp_path):
    out = tmp_path / "out"
    results = _results(_run_tool("--config-file", TOY_CONFIG, "--num-gpus", 2, *toy_data,
                                 f"train.output_dir={out}"))
    assert results["top1"] >= 90.0, results
    assert "rank 0 of 2" in (out / "log.txt").read_text()
    assert "rank 1 of 2" in (out / "log.txt.rank1").read_text()


def test_eval_only_with_produced_checkpoint_reproduces_accuracy(single_process_run, tmp_path):
    out, trained = single_process_run
    results = _results(_run_tool("--config-file", out / "config.yaml", "--eval-only",
                                 f"train.init_checkpoint={out / 'model_final.pth'}",
                                 f"train.output_dir={tmp_path / 'eval'}"))
    assert results["top1"] == pytest.approx(trained["top1"])
    assert results["num_samples"] == trained["num_samples"] == 64


def test_eval_only_builds_the_model_and_test_sets_but_no_train_loader_or_optimizer(
        single_process_run, tool_without_launch, tmp_path, restore_eva_logger):
    from eva_core.config import LazyCall as L
    from helpers import must_not_be_built

    out, trained = single_process_run
    cfg = LazyConfig.load(out / "config.yaml")
    # instantiating either of these raises: --eval-only must not build them
    cfg.dataloader.train = L(must_not_be_built)(what="dataloader.train")
    cfg.optimizer = L(must_not_be_built)(what="optimizer")
    LazyConfig.save(cfg, tmp_path / "eval_only.yaml")
    args = default_argument_parser().parse_args([
        "--config-file", str(tmp_path / "eval_only.yaml"), "--eval-only",
        f"train.init_checkpoint={out / 'model_final.pth'}", f"train.output_dir={tmp_path / 'eval'}"])
    results = tool_without_launch.main(args)
    assert results["top1"] == pytest.approx(trained["top1"]) and results["num_samples"] == 64
    with pytest.raises(AssertionError, match="must_not_be_built"):
        tool_without_launch.do_train(args, LazyConfig.load(tmp_path / "eval_only.yaml"))


def test_argument_parser_has_detectron2_flags_and_trailing_overrides():
    args = default_argument_parser().parse_args(
        ["--config-file", "c.py", "--resume", "--eval-only", "--num-gpus", "4", "--num-machines", "2",
         "--machine-rank", "1", "--dist-url", "tcp://10.0.0.1:1234", "--allow-pickle",
         "train.max_iter=10", "optimizer.lr=0.1"])
    assert args.config_file == "c.py" and args.resume and args.eval_only and args.allow_pickle
    assert (args.num_gpus, args.num_machines, args.machine_rank) == (4, 2, 1)
    assert args.dist_url == "tcp://10.0.0.1:1234"
    assert args.opts == ["train.max_iter=10", "optimizer.lr=0.1"]


@pytest.fixture
def restore_eva_logger():
    """default_setup configures the process-wide ``eva_core`` logger; undo it for other tests."""
    logger = logging.getLogger("eva_core")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    for h in logger.handlers:
        if h not in handlers:
            h.close()
    logger.handlers[:] = handlers
    logger.propagate, logger.level = propagate, level


def test_default_setup_creates_output_dir_config_log_and_seeds(tmp_path, restore_eva_logger):
    cfg = LazyConfig.load(TOY_CONFIG)
    LazyConfig.apply_overrides(cfg, [f"train.output_dir={tmp_path / 'run'}", "train.seed=123"])
    default_setup(cfg, Namespace(config_file=str(TOY_CONFIG)))
    first = torch.rand(3)
    assert LazyConfig.load(tmp_path / "run" / "config.yaml") == cfg
    assert "seed 123" in (tmp_path / "run" / "log.txt").read_text()
    torch.manual_seed(123)
    assert torch.equal(first, torch.rand(3))


@pytest.fixture
def restore_cudnn_benchmark():
    flag = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = flag


@pytest.mark.parametrize("benchmark", [False, True])
def test_default_setup_sets_cudnn_benchmark_from_train_config(benchmark, tmp_path, restore_eva_logger,
                                                              restore_cudnn_benchmark):
    cfg = LazyConfig.load(TOY_CONFIG)
    assert cfg.train.cudnn_benchmark is False, "detectron2's default: no autotuning"
    LazyConfig.apply_overrides(cfg, [f"train.output_dir={tmp_path}", f"train.cudnn_benchmark={benchmark}"])
    torch.backends.cudnn.benchmark = not benchmark
    default_setup(cfg, Namespace(config_file=str(TOY_CONFIG)))
    assert torch.backends.cudnn.benchmark is benchmark


def test_default_setup_rejects_deterministic_with_cudnn_benchmark(tmp_path, restore_cudnn_benchmark):
    cfg = LazyConfig.load(TOY_CONFIG)
    LazyConfig.apply_overrides(cfg, [f"train.output_dir={tmp_path / 'run'}", "train.deterministic=True",
                                     "train.cudnn_benchmark=True"])
    with pytest.raises(ValueError, match="train.cudnn_benchmark=True.*train.deterministic=True"):
        default_setup(cfg, Namespace(config_file=str(TOY_CONFIG)))
    assert not (tmp_path / "run").exists()


@pytest.fixture
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("cores, processes, expected", [(8, 2, 4), (8, 3, 2), (2, 4, 1)])
def test_spawned_cpu_worker_gets_its_share_of_the_cores(cores, processes, expected, monkeypatch,
                                                         restore_torch_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kwargs: None)
    monkeypatch.setattr(comm, "_LOCAL_RANK", comm.get_local_rank(), raising=False)
    seen = []
    # the worker body as mp.start_processes runs it, minus the real process group
    launch_module._distributed_worker(0, lambda: seen.append(torch.get_num_threads()), processes * 2,
                                      processes, 0, "tcp://127.0.0.1:1", (), launch_module.DEFAULT_TIMEOUT)
    assert seen == [expected]


def test_omp_num_threads_wins_over_the_core_share(monkeypatch, restore_torch_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert launch_module.share_cpu_threads(2) == 1


def test_launch_validates_its_arguments():
    with pytest.raises(ValueError, match="machine_rank"):
        launch(print, 1, num_machines=2, machine_rank=2)
    with pytest.raises(ValueError, match="auto"):
        launch(print, 2, num_machines=2, machine_rank=0, dist_url="auto")
    calls = []
    launch(calls.append, 1, args=("direct",))
    assert calls == ["direct"], "world size 1 calls main_func in this process"


WORKER = """
import sys, torch, torch.distributed as dist
from eva_core.engine.launch import launch
from eva_core.utils import comm

def main(out):
    total = torch.tensor([comm.get_rank() + 1.0])
    dist.all_reduce(total)
    with open(f"{out}/rank{comm.get_rank()}.txt", "w") as f:
        f.write(f"{comm.get_world_size()} {comm.get_local_rank()} {dist.get_backend()} {total.item()}")

if __name__ == "__main__":
    launch(main, 1, args=(sys.argv[1],))
"""


def test_launch_under_torchrun_initializes_from_environment(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                str(script), str(tmp_path)]
    proc = subprocess.run(torchrun, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        world, local_rank, backend, total = (tmp_path / f"rank{rank}.txt").read_text().split()
        assert (world, local_rank, backend, float(total)) == ("2", str(rank), "gloo", 3.0)
