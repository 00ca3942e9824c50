"""No silent wrong run: every checkpoint load is reported and a wrong one refused, a resume applies
or refuses each changed setting, and the training run's config record is never rewritten.

The runs are tools/lazyconfig_train_net.py's ``main`` in this process (single process, the tiny
EVA of the toy classification recipe, a few iterations on the toy world's colour set).
"""
from __future__ import annotations

import importlib.util
import logging
import re
import shutil
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from eva_core.checkpoint import load_file, save_atomic
from eva_core.config import LazyConfig
from eva_core.data.toy_world import make_imagefolder
from eva_core.engine.defaults import default_argument_parser

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "lazyconfig_train_net.py"
TOY_CONFIG = REPO / "configs" / "classification" / "toy_imagefolder.py"
NUM_CLASSES = 4
MAX_ITER = 4


def _load_tool():
    spec = importlib.util.spec_from_file_location("lazyconfig_train_net_semantics", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


class _EvaLoggerRestored:
    """default_setup configures the process-wide ``eva_core`` logger; undo it afterwards."""

    def __enter__(self):
        self.logger = logging.getLogger("eva_core")
        self.state = list(self.logger.handlers), self.logger.propagate, self.logger.level
        return self

    def __exit__(self, *exc):
        handlers, propagate, level = self.state
        for h in self.logger.handlers:
            if h not in handlers:
                h.close()
        self.logger.handlers[:] = handlers
        self.logger.propagate, self.logger.level = propagate, level


@pytest.fixture(scope="module")
def tool():
    return _load_tool()


@pytest.fixture(scope="module")
def data_overrides(tmp_path_factory):
    paths = make_imagefolder(tmp_path_factory.mktemp("toy_world"), num_classes=NUM_CLASSES, train_per_class=8,
                             val_per_class=4, img_size=32, seed=0, label="color")
    return [f"dataloader.train.dataset.root={paths['imagefolder_color_train']}",
            f"dataloader.test.dataset.root={paths['imagefolder_color_val']}",
            f"model.net.num_classes={NUM_CLASSES}", "dataloader.train.total_batch_size=8",
            "train.device=cpu", "train.heartbeat_timeout=0", "train.log_period=1", "train.eval_period=0"]


def _run(tool, *argv, config=TOY_CONFIG):
    """``main`` of the tool on ``--config-file config argv...``; returns its results."""
    args = default_argument_parser().parse_args(["--config-file", str(config), *map(str, argv)])
    with _EvaLoggerRestored():
        return tool.main(args)


def _refused(tool, capsys, *argv, config=TOY_CONFIG) -> str:
    """Run the tool expecting a refusal: exit status 2; returns what it printed on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        _run(tool, *argv, config=config)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(tool, data_overrides, tmp_path_factory):
    """A 4-iteration training run (checkpoints at iterations 1 and 3): its output dir."""
    out = tmp_path_factory.mktemp("trained") / "out"
    _run(tool, *data_overrides, f"train.max_iter={MAX_ITER}", "train.checkpointer.period=2",
         f"train.output_dir={out}")
    assert (out / "model_final.pth").is_file() and (out / "config.yaml").is_file()
    return out


@pytest.fixture
def trained_copy(trained, tmp_path):
    """A copy of the trained run's folder that a test may resume into."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


@pytest.fixture
def unrelated_checkpoint(tmp_path):
    path = tmp_path / "unrelated.pth"
    weights = {"backbone.conv1.weight": torch.randn(8, 3, 3, 3), "fc.bias": torch.randn(5)}
    save_atomic({"model": weights}, path)
    return path


def _load_lines(log: Path, what: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if what in line]


# ------------------------------------------------------------------------ loads are reported / refused
def test_trainer_checkpoint_with_net_prefix_loads_for_eval(tool, trained, data_overrides, tmp_path):
    total = len(load_file(trained / "model_final.pth")["model"])
    assert all(k.startswith("net.") for k in load_file(trained / "model_final.pth")["model"])
    final = trained / "model_final.pth"
    results = _run(tool, "--eval-only", *data_overrides, f"train.init_checkpoint={final}",
                   f"train.output_dir={tmp_path / 'eval'}")
    assert results["num_samples"] == NUM_CLASSES * 4
    (line,) = _load_lines(tmp_path / "eval" / "log.txt", "--eval-only weights:")
    assert f"loaded {total}/{total} tensors" in line and "missing (0)" in line and "mismatched (0)" in line
    assert str(trained / "model_final.pth") in line


def test_eval_only_with_unrelated_checkpoint_fails_naming_file(tool, data_overrides, unrelated_checkpoint,
                                                               tmp_path, capsys):
    out = tmp_path / "eval"
    err = _refused(tool, capsys, "--eval-only", *data_overrides,
                   f"train.init_checkpoint={unrelated_checkpoint}", f"train.output_dir={out}")
    assert str(unrelated_checkpoint) in err and "min_loaded 100.0%" in err
    assert re.search(r"first missing: \['net\.", err), err
    assert not out.exists(), "the weights are checked before the output dir is written"


def test_init_checkpoint_with_unrelated_keys_fails_naming_file_and_missing_keys(
        tool, data_overrides, unrelated_checkpoint, tmp_path, capsys):
    out = tmp_path / "ft"
    err = _refused(tool, capsys, *data_overrides, "train.max_iter=2",
                   f"train.init_checkpoint={unrelated_checkpoint}", f"train.output_dir={out}")
    assert str(unrelated_checkpoint) in err and "min_loaded='encoder'" in err
    assert re.search(r"first missing: \['net\.blocks\.0\.", err), err
    assert not list(out.glob("model_*")), "refused before the first iteration"


def test_init_checkpoint_load_is_logged_in_one_line(tool, trained, data_overrides, tmp_path):
    out = tmp_path / "ft"
    _run(tool, *data_overrides, "train.max_iter=1", f"train.init_checkpoint={trained / 'model_final.pth'}",
         f"train.output_dir={out}")
    total = len(load_file(trained / "model_final.pth")["model"])
    (line,) = _load_lines(out / "log.txt", "Loaded weights")
    assert re.search(rf"{re.escape(str(trained / 'model_final.pth'))}: layout \w+ \(encoder under 'net\.'\), "
                     rf"loaded {total}/{total} tensors, missing \(0\), unexpected \(0\), mismatched \(0\)",
                     line), line


def test_finetune_head_mismatch_is_listed_not_fatal(tool, trained, data_overrides, tmp_path):
    out = tmp_path / "ft5"
    _run(tool, *data_overrides, "model.net.num_classes=5", "train.max_iter=1",
         f"train.init_checkpoint={trained / 'model_final.pth'}", f"train.output_dir={out}")
    (line,) = _load_lines(out / "log.txt", "Loaded weights")
    assert "WARNING" in line
    head = "mismatched (2): [('net.head.weight', (4, 64), (5, 64)), ('net.head.bias', (4,), (5,))]"
    assert head in line, line
    assert load_file(out / "model_final.pth")["model"]["net.head.weight"].shape == (5, 64)


# ------------------------------------------------------------------------ resume semantics
def _lrs_at(cfg, iteration: int, resume: bool) -> list[float]:
    """Every group's lr at ``iteration`` of ``train_from_config(cfg)``."""
    from eva_core.engine import CallbackHook
    from eva_core.engine.defaults import train_from_config

    seen = []
    hook = CallbackHook(before_step=lambda t: t.iter == iteration and seen.append(
        [g["lr"] for g in t.optimizer.param_groups]))
    train_from_config(cfg, resume=resume, extra_hooks=[hook], tensorboard=False)
    assert seen, f"iteration {iteration} never ran"
    return seen[0]


def test_resume_with_new_lr_override_is_applied_or_refused_never_dropped(tool, trained_copy, data_overrides,
                                                                          tmp_path):
    from eva_core.engine.defaults import default_setup

    new = ["optimizer.lr=0.004", "train.max_iter=6"]
    record = trained_copy / "config.yaml"
    assert LazyConfig.load(record).optimizer.lr == 0.002
    resumed = LazyConfig.apply_overrides(LazyConfig.load(record), [*new, f"train.output_dir={trained_copy}"])
    with _EvaLoggerRestored():
        default_setup(resumed, Namespace(config_file=str(record), resume=True))
        resumed_lrs = _lrs_at(resumed, MAX_ITER, resume=True)
    fresh = LazyConfig.apply_overrides(LazyConfig.load(record),
                                       [*new, f"train.output_dir={tmp_path / 'fresh'}"])
    fresh_lrs = _lrs_at(fresh, MAX_ITER, resume=False)
    assert resumed_lrs == pytest.approx(fresh_lrs, rel=1e-12), "the resumed run follows the new config"
    old = LazyConfig.apply_overrides(LazyConfig.load(record), ["train.max_iter=6",
                                                              f"train.output_dir={tmp_path / 'old'}"])
    assert resumed_lrs == pytest.approx([2 * lr for lr in _lrs_at(old, MAX_ITER, resume=False)])
    log = (trained_copy / "log.txt").read_text()
    assert "--resume: optimizer.lr: 0.002 -> 0.004 differs from config.yaml" in log
    assert "--resume: train.max_iter: 4 -> 6 differs from config.yaml: training continues" in log
    assert load_file(trained_copy / "model_final.pth")["iteration"] == 5


def test_resume_falls_back_to_newest_valid_checkpoint_when_last_is_corrupt(tmp_path, caplog):
    from helpers import make_trainer

    make_trainer(tmp_path, max_iter=6, checkpoint_period=2).train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    final = tmp_path / "model_final.pth"
    final.write_bytes(final.read_bytes()[: final.stat().st_size // 2])  # a torn write by another tool
    resumed = make_trainer(tmp_path, max_iter=8)
    with caplog.at_level(logging.WARNING, logger="eva_core.engine"):
        resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 6, "model_0000005.pth holds iteration 5"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{final} is unreadable: resuming from {tmp_path / 'model_0000005.pth'}" in w
               for w in warnings), warnings

    (tmp_path / "last_checkpoint").unlink()  # the record itself lost
    caplog.clear()
    again = make_trainer(tmp_path, max_iter=8)
    with caplog.at_level(logging.WARNING, logger="eva_core.engine"):
        again.resume_or_load(resume=True)
    assert again.start_iter == 6
    assert any("last_checkpoint is missing: resuming from" in r.getMessage() for r in caplog.records)

    for p in tmp_path.glob("model_*.pth"):  # nothing readable left: refuse rather than start over
        p.write_bytes(b"")
    with pytest.raises(ValueError, match="no readable checkpoint"):
        make_trainer(tmp_path, max_iter=8).resume_or_load(resume=True)


def test_resume_with_changed_batch_size_is_refused_naming_key(tool, trained_copy, capsys):
    before = sorted(p.name for p in trained_copy.iterdir())
    err = _refused(tool, capsys, "--resume", "dataloader.train.total_batch_size=16",
                   f"train.output_dir={trained_copy}", config=trained_copy / "config.yaml")
    assert "dataloader.train.total_batch_size: 8 -> 16" in err and "saved data-loader position" in err
    assert sorted(p.name for p in trained_copy.iterdir()) == before, "a refused resume writes nothing"


# ------------------------------------------------------------------------ the training record
def test_eval_only_does_not_rewrite_the_training_config(tool, trained_copy):
    record = (trained_copy / "config.yaml").read_bytes()
    final = trained_copy / "model_final.pth"
    _run(tool, "--eval-only", f"train.init_checkpoint={final}", f"train.output_dir={trained_copy}",
         config=trained_copy / "config.yaml")
    assert (trained_copy / "config.yaml").read_bytes() == record
    assert LazyConfig.load(trained_copy / "config.yaml").train.init_checkpoint == ""
    assert LazyConfig.load(trained_copy / "config_eval.yaml").train.init_checkpoint == str(final)


def test_resume_writes_its_own_config_record(tool, trained_copy):
    record = (trained_copy / "config.yaml").read_bytes()
    _run(tool, "--resume", "train.max_iter=6", f"train.output_dir={trained_copy}",
         config=trained_copy / "config.yaml")
    assert (trained_copy / "config.yaml").read_bytes() == record
    assert LazyConfig.load(trained_copy / "config_resume_1.yaml").train.max_iter == 6
    assert load_file(trained_copy / "model_final.pth")["iteration"] == 5
    _run(tool, "--resume", "train.max_iter=7", config=trained_copy / "config_resume_1.yaml")  # its output_dir
    assert LazyConfig.load(trained_copy / "config_resume_2.yaml").train.max_iter == 7
    log = (trained_copy / "log.txt").read_text()
    assert "train.max_iter: 6 -> 7 differs from config_resume_1.yaml" in log, "compare with the newest record"
