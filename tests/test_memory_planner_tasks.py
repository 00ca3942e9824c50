"""The memory planner on the task models: ViTDet-EVA's detector and Mask2Former-EVA's segmentor.

Both are measured as ``tests/test_memory_planner.py`` measures its models: the real model is built and
trained two steps on CPU inside ``torch.profiler.profile(profile_memory=True)``; the running sum of the
CPU allocator's signed ``[memory]`` events is the bytes of live tensors and its maximum the real peak.

The detector's NMS and RoI selection depend on values the planner does not have, so its figure is the
step at the LARGEST data-dependent sizes (an upper bound). The real step it is compared with runs under
the same planning context (``vitdet_eva.memory.detection_planning_context``: NMS keeps every box, all
RoIs pooled from one level, the mask head gets the sampler's foreground cap), and with 20 ground-truth
objects per image the samplers fill their quotas (256 anchors, ``batch_size_per_image`` RoIs, the
foreground cap of the mask head), so that real step IS at the maximum sizes and the bound must be tight.
The segmentor's targets come from real label maps and its matching has the real size: its figure is
exact.

Neither test imports ``vitdet_eva.memory`` / ``mask2former_eva.memory``: the planner imports a model
package's ``memory`` module itself (the registration convention), which these tests rely on.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from helpers import measure_peak_inference_memory_cpu, measure_peak_training_memory_cpu
from eva_core.config import LazyConfig
from eva_core.memory import (build_meta_model, checkpointing_overrides, estimate_inference_memory,
                             estimate_training_memory)

REPO = Path(__file__).resolve().parents[1]
MiB = 2 ** 20
DETECTOR = "projects/ViTDet-EVA/configs/toy/cascade_mask_rcnn_toy_coco.py"
SEGMENTOR = "projects/Mask2Former-EVA/configs/toy/mask2former_toy.py"
# the toy configs read the class count from a toy-world json that need not exist here
DETECTOR_OVERRIDES = ["model.roi_heads.num_classes=3", "dataloader.train.total_batch_size=2"]
SEGMENTOR_OVERRIDES = ["dataloader.train.total_batch_size=2"]


def load(path: str, overrides: list[str]):
    cfg = LazyConfig.load(REPO / path)
    return LazyConfig.apply_overrides(cfg, overrides)


def test_detector_estimate_is_an_upper_bound_within_5_percent_of_the_measured_step_at_maximum_sizes():
    cfg = load(DETECTOR, DETECTOR_OVERRIDES)
    report = estimate_training_memory(cfg, device_type="cpu")
    measured = measure_peak_training_memory_cpu(cfg)
    ratio = report.peak_bytes / measured
    print(f"detector: measured {measured / MiB:.2f} MiB, estimated {report.peak_bytes / MiB:.2f} MiB, "
          f"ratio {ratio:.3f}")
    assert 0.99 <= ratio <= 1.05, (measured, report.peak_bytes)
    # the figure says it is a bound: NMS / nonzero took their largest sizes
    assert report.upper_bound_ops and "UPPER BOUND" in report.format_table()
    assert report.breakdown.get("activations", 0) > 0.5 * report.peak_bytes


def test_segmentor_estimate_is_exact_within_2_percent_of_the_measured_cpu_peak():
    cfg = load(SEGMENTOR, SEGMENTOR_OVERRIDES)
    report = estimate_training_memory(cfg, device_type="cpu")
    measured = measure_peak_training_memory_cpu(cfg)
    ratio = report.peak_bytes / measured
    print(f"segmentor: measured {measured / MiB:.2f} MiB, estimated {report.peak_bytes / MiB:.2f} MiB, "
          f"ratio {ratio:.3f}")
    assert 0.98 <= ratio <= 1.02, (measured, report.peak_bytes)
    # targets from real label maps and a matching of the real size: nothing is bounded
    assert not report.upper_bound_ops and "UPPER BOUND" not in report.format_table()


def test_box2box_transform_weights_survive_the_meta_build():
    cfg = load(DETECTOR, DETECTOR_OVERRIDES)
    model = build_meta_model(cfg.model)
    expected = [tuple(OmegaConf.to_container(p.box2box_transform.weights))
                for p in cfg.model.roi_heads.box_predictors]
    assert expected == [(10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)]
    assert [tuple(p.box2box_transform.weights) for p in model.roi_heads.box_predictor] == expected


def test_detector_evaluation_estimate_is_within_5_percent_of_a_measured_pass_keeping_every_candidate():
    # score threshold 0: every candidate passes, so the real pass keeps the largest number of boxes
    thresh = [f"model.roi_heads.box_predictors.{i}.test_score_thresh=0.0" for i in range(3)]
    cfg = load(DETECTOR, DETECTOR_OVERRIDES + thresh)
    report = estimate_inference_memory(cfg, 1)
    measured = measure_peak_inference_memory_cpu(cfg)
    ratio = report.peak_bytes / measured
    print(f"detector eval: measured {measured / MiB:.2f} MiB, estimated {report.peak_bytes / MiB:.2f} MiB, "
          f"ratio {ratio:.3f}")
    assert 0.99 <= ratio <= 1.05, (measured, report.peak_bytes)
    assert report.upper_bound_ops and "UPPER BOUND" in report.format_table()


def test_checkpointing_suggestion_switches_on_the_detector_backbones_use_act_checkpoint():
    cfg = load(DETECTOR, DETECTOR_OVERRIDES)
    assert checkpointing_overrides(cfg) == ["model.backbone.net.use_act_checkpoint=True"]


def test_cli_eval_prints_the_upper_bound_and_rejects_a_zero_batch():
    base = [sys.executable, str(REPO / "tools/estimate_memory.py"), "--eval",
            "--config-file", str(REPO / DETECTOR), "model.roi_heads.num_classes=3"]
    ok = subprocess.run(base, capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "evaluation forward pass, batch 1" in ok.stdout and "UPPER BOUND" in ok.stdout
    bad = subprocess.run(base + ["--eval-batch", "0"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "batch_size=0" in bad.stderr, bad.stderr
