"""Fault injection through the real CLI: every bad input is refused before anything is written,
or gives its documented result.

Each case runs ``tools/lazyconfig_train_net.py`` in a subprocess on the toy classification
recipe. A refusal must exit with status 2, name the key, the value and what was expected, and
leave no output directory behind.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eva_core.config import LazyConfig
from eva_core.data.toy_world import make_imagefolder

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "lazyconfig_train_net.py"
TOY_CONFIG = REPO / "configs" / "classification" / "toy_imagefolder.py"
NUM_CLASSES = 4
VAL_PER_CLASS = 4


def _run_tool(*argv, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(TOOL), *map(str, argv)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def toy_paths(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("toy_world"), num_classes=NUM_CLASSES, train_per_class=8,
                            val_per_class=VAL_PER_CLASS, img_size=32, seed=0, label="color")


def _data_overrides(paths):
    return [f"dataloader.train.dataset.root={paths['imagefolder_color_train']}",
            f"dataloader.test.dataset.root={paths['imagefolder_color_val']}",
            f"model.net.num_classes={NUM_CLASSES}", "dataloader.train.total_batch_size=8",
            "train.device=cpu"]


def _assert_refused(proc, out_dir, *fragments):
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, f"{fragment!r} not in:\n{proc.stderr}"
    assert not Path(out_dir).exists(), "a refused command must not create its output directory"


@pytest.mark.parametrize("override, fragments", [
    ("train.max_iter=2.5", ["train.max_iter=2.5", "expected an integer"]),
    ("train.ema.enabled=maybe", ["train.ema.enabled='maybe'", "expected a boolean"]),
])
def test_mistyped_override_exits_2_naming_key_value_and_type(override, fragments, tmp_path):
    out = tmp_path / "out"
    proc = _run_tool("--config-file", TOY_CONFIG, override, f"train.output_dir={out}")
    _assert_refused(proc, out, *fragments)


def test_unknown_key_in_saved_yaml_exits_2_naming_it_and_the_closest_key(tmp_path):
    cfg = LazyConfig.load(TOY_CONFIG)
    path = LazyConfig.save(cfg, tmp_path / "config.yaml")
    path.write_text(path.read_text().replace("  max_iter: 150", "  max_itr: 5"))
    out = tmp_path / "out"
    proc = _run_tool("--config-file", path, f"train.output_dir={out}")
    _assert_refused(proc, out, "'train.max_itr'", str(path), "train.max_iter")


def test_unknown_target_argument_in_python_config_exits_2(tmp_path):
    out = tmp_path / "out"
    recipe = tmp_path / "recipe.py"
    recipe.write_text(textwrap.dedent(f"""
        import torch
        from eva_core.config import LazyCall as L
        model = L(torch.nn.Linear)(in_features=4, out_feature=2)
        train = dict(max_iter=1, output_dir={str(out)!r})
    """))
    proc = _run_tool("--config-file", recipe)
    _assert_refused(proc, out, "'model.out_feature'", "model.out_features", str(recipe))


def test_dict_and_word_boolean_overrides_apply_and_unreadable_val_image_is_counted(toy_paths, tmp_path):
    val_root = Path(toy_paths["imagefolder_color_val"])
    broken = sorted(p for p in val_root.rglob("*") if p.is_file())[0]
    broken.write_bytes(b"not an image")  # one unreadable validation image
    out = tmp_path / "out"
    proc = _run_tool("--config-file", TOY_CONFIG, *_data_overrides(toy_paths),
                     "train.ema={enabled:true,decay:0.5}", "train.amp.enabled=no", "train.max_iter=1e1",
                     "train.eval_period=10", "train.checkpointer.period=10", "train.log_period=5",
                     f"train.output_dir={out}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    saved = LazyConfig.load(out / "config.yaml").train
    assert saved.ema.enabled is True and saved.ema.decay == 0.5
    assert saved.amp.enabled is False
    assert saved.max_iter == 10 and type(saved.max_iter) is int
    (line,) = [text for text in proc.stdout.splitlines() if text.startswith("results: ")]
    results = json.loads(line[len("results: "):])
    assert "ema/top1" in results, f"EMA must be on: {results}"
    assert results["num_skipped"] == 1, results
    assert results["num_samples"] == NUM_CLASSES * VAL_PER_CLASS - 1, "the unreadable image is not replaced"


# ----------------------------------------------------------------------------- checkpoints and resume
@pytest.fixture(scope="module")
def unrelated_checkpoint(tmp_path_factory):
    import torch

    from eva_core.checkpoint import save_atomic

    path = tmp_path_factory.mktemp("unrelated") / "resnet_like.pth"
    weights = {"conv1.weight": torch.randn(8, 3, 7, 7), "fc.weight": torch.randn(5, 8)}
    save_atomic({"state_dict": weights}, path)
    return path


@pytest.mark.parametrize("flags, needed", [
    # evaluation needs every tensor; the two-process run refuses in its spawned workers
    (["--eval-only"], "min_loaded 100.0%"),
    (["--num-gpus", "2", "train.max_iter=2"], "min_loaded='encoder'"),
])
def test_unrelated_checkpoint_exits_2_naming_file_and_missing_keys(flags, needed, toy_paths,
                                                                   unrelated_checkpoint, tmp_path):
    out = tmp_path / "out"
    proc = _run_tool("--config-file", TOY_CONFIG, *flags, *_data_overrides(toy_paths),
                     f"train.init_checkpoint={unrelated_checkpoint}", f"train.output_dir={out}")
    _assert_refused(proc, out, f"error: {unrelated_checkpoint}", needed, "first missing: ['net.")


def test_resume_with_changed_batch_size_exits_2_and_writes_nothing(toy_paths, tmp_path):
    out = tmp_path / "out"
    trained = _run_tool("--config-file", TOY_CONFIG, *_data_overrides(toy_paths), "train.max_iter=2",
                        "train.eval_period=0", "train.checkpointer.period=2", f"train.output_dir={out}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    proc = _run_tool("--config-file", out / "config.yaml", "--resume", "dataloader.train.total_batch_size=16",
                     "train.max_iter=4")
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "dataloader.train.total_batch_size: 8 -> 16" in proc.stderr
    assert str(out / "config.yaml") in proc.stderr, "the message names the record it compared with"
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before, "a refused resume writes nothing"
