"""Proof on the toy world: a tiny MIM-initialised Mask2Former-EVA learns toy ADE20K on CPU.

The runs are the toy recipe (``projects/Mask2Former-EVA/configs/toy/mask2former_toy.py``) through the
shared engine, driven by the main job's stage (``mask2former_eva.toy_stage.run_toy_stage``): toy-world
ADE20K-format data written per run (``make_ade20k``, seed 0, 1000 train / 50 val images of 64 px,
class = shape type of 5, background ignored), 300 steps of batch 16, the encoder the toy MIM
encoder's shape (64 wide, 2 blocks, 4 heads) with patch 16, loaded from the encoder of the toy EVA
pipeline (``toy_pipeline_run``, shared with the other toy proofs), its 4-px patch kernel resampled to
16 px. Thresholds come from measured numbers (docs/recipes/segmentation.md#toy-world-proof) with
margin. MIM init against random init is measured there but not asserted (not established yet).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eva_core.data.toy_world import make_ade20k
from mask2former_eva.toy_stage import run_toy_stage

ROOT = Path(__file__).resolve().parents[1]
ARCH = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0)

pytestmark = pytest.mark.slow


def test_toy_recipe_trains_and_evaluates_through_lazyconfig_train_net(tmp_path):
    paths = make_ade20k(tmp_path / "data", num_train=8, num_val=4, img_size=64)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools/lazyconfig_train_net.py"), "--config-file",
         str(ROOT / "projects/Mask2Former-EVA/configs/toy/mask2former_toy.py"),
         f"dataloader.train.dataset.root={paths['ade20k_root']}",
         f"dataloader.test.dataset.root={paths['ade20k_root']}", "model.backbone.encoder.img_size=64",
         "dataloader.train.dataset.transform.crop_size=[64,64]",
         "dataloader.train.dataset.transform.scale=[256,64]", "lr_multiplier.warmup_iters=1",
         "dataloader.train.total_batch_size=4", "train.max_iter=3", "train.eval_period=3",
         "train.checkpointer.period=3", "train.log_period=1", f"train.output_dir={out}"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    evaluated = [r for r in records if "eval/sem_seg/mIoU" in r]
    assert evaluated and 0.0 <= evaluated[-1]["eval/sem_seg/mIoU"] <= 100.0
    assert any("loss_ce" in r and "loss_dice" in r for r in records)
    assert (out / "sem_seg_per_class.md").read_text().startswith("| Class | IoU | Acc |")
    assert (out / "model_final.safetensors").is_file()


# measured (docs/recipes/segmentation.md#toy-world-proof), 300 steps: MIM init mIoU 15.7 / 15.4 (aAcc
# 30.5 / 31.2) in two runs; an untrained model is at chance (aAcc ~20, mIoU ~8-10). Random init gave 9.4
# and 15.0 in two runs (the stage does not seed the head's init), so "MIM beats random" is not
# established at this budget and is not asserted here.
MIOU_LEARNED = 12.0
AACC_LEARNED = 25.0


@pytest.fixture(scope="module")
def mim_stage(toy_pipeline_run, tmp_path_factory):
    out, _ = toy_pipeline_run
    checkpoint = out / "mim_encoder.safetensors"
    assert checkpoint.is_file()
    return run_toy_stage(tmp_path_factory.mktemp("seg_mim"), checkpoint, ARCH, seed=0)


@pytest.mark.xdist_group("toy_pipeline")
def test_mim_initialised_toy_mask2former_learns_shape_classes_on_toy_ade20k(mim_stage):
    r = mim_stage["metrics"]
    print(f"toy ADE20K, MIM init, 300 steps: mIoU {r['mIoU']:.1f}, mAcc {r['mAcc']:.1f}, "
          f"aAcc {r['aAcc']:.1f} ({mim_stage['seconds']:.0f} s)")
    assert mim_stage["metric"] == "mIoU" and mim_stage["value"] == r["mIoU"]
    assert Path(mim_stage["png"]).is_file()
    assert r["mIoU"] > MIOU_LEARNED and r["aAcc"] > AACC_LEARNED
