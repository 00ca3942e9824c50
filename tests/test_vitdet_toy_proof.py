"""Proof on the toy world: a tiny ViTDet-EVA learns boxes and masks on CPU, in COCO and LVIS format.

All runs are the toy recipes (``projects/ViTDet-EVA/configs/toy/cascade_mask_rcnn_toy_{coco,lvis}.py``)
through the shared engine (``train_from_config``), built by ``vitdet_eva.toy_stage.toy_detection_config``
on toy-world data written here (``make_coco`` / ``make_lvis``, seed 0: 160 / 300 train and 40 / 60 val
images of 128 px), with the toy MIM encoder's shape (64 wide, 2 blocks, 4 heads). The main job's
detection stage (``run_toy_stage``, fast) starts from the encoder of the toy EVA pipeline
(``toy_pipeline_run``, shared with the other toy proofs), its 4-px patch kernel resampled to 16 px.
A 2-process gloo run trains and evaluates the toy config. Thresholds come from measured numbers with
margin (docs/recipes/detection.md#toy-world-proof). Not shown here: MIM initialisation beating random
initialisation at the same budget (measured: it does not, at 150 or 200 steps, nor with the
pre-trained-backbone recipe: layer decay 0.7, box AP50 25.3 from MIM vs 26.3 random averaged over four
training seeds, 17.7-37.0 seed to seed; on the teacher's own classes, colours, 14.8 vs 11.7 over eight
seeds but ahead on only five, and at 400 steps 45.5 vs 20.5 with MIM taking off on two seeds of four:
``tools/toy_mim_vs_random.py``, docs/recipes/detection.md#toy-world-proof).
A pre-trained backbone is fine-tuned with layer decay 0.7 (``PRETRAINED_LAYER_DECAY``), random init without.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eva_core.data.toy_world import make_coco, make_lvis
from eva_core.engine.defaults import train_from_config
from vitdet_eva.toy_stage import PRETRAINED_LAYER_DECAY, run_toy_stage, toy_detection_config

STEPS = 200  # toy COCO
LVIS_STEPS = 150
ARCH = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0)
# measured (seed 0, one core; docs/recipes/detection.md#toy-world-proof): COCO random init 200 steps
# (lr 3e-3, jitter 0.8-1.25) box / mask AP50 25.4 / 25.9 (the toy config at lr 1e-3, jitter 0.5-1.5 and
# 150 steps: 7.5-10.2 / 10.8-12.3); an untrained detector scores ~0. Thresholds: about half the
# measured values. LVIS (lr 1e-3 then) at 150 steps measured box AP50 2.2 and 0.6 (two runs): too
# unstable at this budget for a learning threshold; its test checks the LVIS run end to end.
BOX_AP50_COCO, MASK_AP50_COCO = 12.0, 12.0
# the main job's stage, fast (100 steps from the toy MIM encoder, EVA's evaluation settings): measured
# box / mask AP50 0.29 / 0.47 at lr 1e-3 and 0.5 / 0.3 at lr 3e-3 (at 60 steps, and at 100 with the toy
# config's score threshold 0.05, there are no detections at all: NaN); 100 steps is what the fast
# budget (45 s) allows, and it barely moves AP50: these thresholds only show detections that score
# (with the pre-trained backbone's layer decay 0.7, issue 10, and the stage seeding itself: 5.4 / 6.8,
# here and in `eva_toy_pipeline.py --fast --stages detection` alike)
STAGE_BOX_AP50, STAGE_MASK_AP50 = 0.1, 0.1

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_det")
    return {**make_coco(root, seed=0), **make_lvis(root, seed=0)}


def _train(kind: str, data: dict, out: Path, steps: int = STEPS, checkpoint: str | None = None) -> dict:
    cfg = toy_detection_config(kind, data, out, steps, encoder_arch=ARCH, encoder_checkpoint=checkpoint)
    torch.manual_seed(0)
    return train_from_config(cfg, tensorboard=False).results


def test_a_pretrained_backbone_is_fine_tuned_with_layer_decay_and_random_init_without(tmp_path):
    from eva_core.config import instantiate

    data = make_coco(tmp_path / "world", num_train=2, num_val=1, img_size=64, seed=0)
    pretrained = toy_detection_config("coco", data, tmp_path / "a", 1, encoder_arch=ARCH,
                                      encoder_checkpoint=tmp_path / "encoder.safetensors")
    scratch = toy_detection_config("coco", data, tmp_path / "b", 1, encoder_arch=ARCH)
    assert pretrained.optimizer.params.layer_decay == PRETRAINED_LAYER_DECAY == 0.7
    assert scratch.optimizer.params.layer_decay == 1.0
    # the groups the engine builds: heads at lr, block 1 at 0.7, block 0 at 0.49, embeddings at 0.343
    params = dict(pretrained.optimizer.params)
    params["model"] = instantiate(pretrained.model)
    scales = {g["layer_id"]: g["lr_scale"] for g in instantiate(params)}
    assert scales == pytest.approx({0: 0.7 ** 3, 1: 0.7 ** 2, 2: 0.7, 3: 1.0})


@pytest.fixture(scope="module")
def coco_random_init(toy_data, tmp_path_factory):
    return _train("coco", toy_data, tmp_path_factory.mktemp("coco_random"))


def test_toy_vitdet_learns_boxes_and_masks_on_toy_coco(coco_random_init):
    r = coco_random_init
    print(f"toy COCO, random init, {STEPS} steps: box AP50 {r['bbox']['AP50']:.1f}, mask AP50 "
          f"{r['segm']['AP50']:.1f} (AP {r['bbox']['AP']:.1f} / {r['segm']['AP']:.1f})")
    # untrained the detector scores AP50 ~0 (its boxes are anchors with near-uniform class scores)
    assert r["bbox"]["AP50"] > BOX_AP50_COCO
    assert r["segm"]["AP50"] > MASK_AP50_COCO


@pytest.mark.xdist_group("toy_pipeline")
def test_toy_detection_stage_learns_from_the_toy_mim_encoder_in_fast_mode(toy_pipeline_run, tmp_path):
    out, _ = toy_pipeline_run
    checkpoint = out / "mim_encoder.safetensors"
    assert checkpoint.is_file()
    stage = run_toy_stage(tmp_path / "stage", checkpoint, ARCH, seed=0, fast=True)
    m = stage["metrics"]
    print(f"toy detection stage (fast, {m['steps']} steps, MIM init): box AP50 {m['bbox/AP50']:.1f}, "
          f"mask AP50 {m['segm/AP50']:.1f}; {stage['seconds']:.0f} s")
    assert stage["metric"] == "bbox/AP50" and stage["value"] == m["bbox/AP50"]
    assert set(m) >= {"bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50"}
    png = Path(stage["png"])
    assert png.is_file() and png.suffix == ".png"
    json.dumps(stage)  # JSON-able, as the pipeline's results table needs
    assert stage["value"] > STAGE_BOX_AP50
    assert m["segm/AP50"] > STAGE_MASK_AP50


def test_toy_vitdet_trains_on_toy_lvis_with_federated_loss_and_repeat_factor_sampling(toy_data, tmp_path):
    from eva_core.config import instantiate
    from vitdet_eva.data import RepeatFactorDataset

    cfg = toy_detection_config("lvis", toy_data, tmp_path, LVIS_STEPS, encoder_arch=ARCH)
    predictors = cfg.model.roi_heads.box_predictors
    assert all(p.use_fed_loss and p.use_sigmoid_ce for p in predictors)
    train_set = instantiate(cfg.dataloader.train.dataset)
    # t = 0.001: on the toy set every class is in more than 0.1% of the images, so no image repeats
    # (the sampler is on; repeat factors are tested in test_vitdet_data.py)
    assert isinstance(train_set, RepeatFactorDataset) and len(train_set) == 300
    r = _train("lvis", toy_data, tmp_path, LVIS_STEPS)
    print(f"toy LVIS ({LVIS_STEPS} steps): box AP50 {r['bbox']['AP50']:.1f} "
          f"mask AP50 {r['segm']['AP50']:.1f}; "
          f"mask APr/APc/APf {r['segm']['APr']:.1f}/{r['segm']['APc']:.1f}/{r['segm']['APf']:.1f}")
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "APr", "APc", "APf"} <= set(r[task])
        assert math.isfinite(r[task]["AP50"])  # the detector has detections to score


WORLD = 2
GLOO_STEPS = 8


def _gloo_worker(rank: int, init_file: str, data: dict, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    cfg = toy_detection_config("coco", data, out, GLOO_STEPS, encoder_arch=ARCH)
    cfg.lr_multiplier.warmup_iters = 2
    torch.manual_seed(0)
    result = train_from_config(cfg, tensorboard=False)
    losses = result.trainer.storage.latest()
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "results": result.results, "iter": result.trainer.iter,
        "total_loss": float(losses["total_loss"][0])}))
    dist.destroy_process_group()


def test_two_gloo_processes_train_and_evaluate_the_toy_detector(toy_data, tmp_path):
    from eva_core.checkpoint import load_file
    from eva_core.config import instantiate
    from eva_core.evaluation import inference_on_dataset

    mp.spawn(_gloo_worker, args=(str(tmp_path / "init"), toy_data, str(tmp_path / "run")), nprocs=WORLD,
             join=True)
    reports = [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert all(r["iter"] == GLOO_STEPS and math.isfinite(r["total_loss"]) for r in reports)
    assert reports[1]["results"] == {}  # results live on rank 0 (detectron2's evaluator contract)
    # the sharded, gathered evaluation equals one process evaluating the saved weights
    cfg = toy_detection_config("coco", toy_data, tmp_path / "single", GLOO_STEPS, encoder_arch=ARCH)
    model = instantiate(cfg.model)
    model.load_state_dict(load_file(tmp_path / "run" / "model_final.pth")["model"])
    single = inference_on_dataset(model, instantiate(cfg.dataloader.test),
                                  instantiate(cfg.dataloader.evaluator))
    for task in ("bbox", "segm"):
        for metric in ("AP", "AP50"):
            a, b = reports[0]["results"][task][metric], single[task][metric]
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-9), (task, metric, a, b)
