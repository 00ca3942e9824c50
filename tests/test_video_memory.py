"""The memory planner on the video model (``video.memory``, docs/recipes/video.md#memory).

``import video`` registers the planner's example batch for ``VideoClassifier`` (a clip
``[B, T, 3, S, S]`` of the config's frames and size). At toy size the estimate is checked against the
peak of live tensors measured while the real model trains two steps on CPU (the profiler's allocator
events, as ``tests/test_memory_planner.py`` does for the image models), with and without activation
checkpointing; the EVA-g stage-2 figure of the recipe page is checked on fake tensors.
"""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import video  # noqa: F401  (registers the video example batch)
from helpers import measure_peak_training_memory_cpu
from eva_core.config import LazyConfig
from eva_core.memory import build_meta_model, estimate_training_memory, example_batch
from video.memory import clip_geometry

REPO = Path(__file__).resolve().parents[1]
MiB = 2 ** 20
# toy_video.py at 8 frames x 16 tokens, 4 blocks, 4 clips per step (fp32 on CPU)
TOY = ["model.net.depth=4", "dataloader.train.total_batch_size=4"]


def load_config(path: str, overrides: list[str]):
    cfg = LazyConfig.load(str(REPO / path))
    LazyConfig.apply_overrides(cfg, overrides)
    return cfg


def test_video_example_batch_takes_frames_and_size_from_the_train_dataset():
    cfg = load_config("video/configs/toy_video.py", ["dataloader.train.dataset.num_frames=4",
                                                     "model.net.num_frames=4"])
    model = build_meta_model(cfg.model)
    batch = example_batch(model, cfg, 3)
    assert clip_geometry(model, cfg) == (4, 32)
    assert tuple(batch["video"].shape) == (3, 4, 3, 32, 32) and tuple(batch["label"].shape) == (3,)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "activation_checkpointing"])
def test_toy_video_estimate_is_within_20_percent_of_the_measured_cpu_peak(checkpointing):
    cfg = load_config("video/configs/toy_video.py", [*TOY, f"+model.net.grad_checkpointing={checkpointing}"])
    report = estimate_training_memory(cfg, num_gpus=1, device_type="cpu")
    measured = measure_peak_training_memory_cpu(cfg)
    ratio = report.peak_bytes / measured
    print(f"toy video, checkpointing {checkpointing}: measured {measured / MiB:.2f} MiB, "
          f"estimated {report.peak_bytes / MiB:.2f} MiB, ratio {ratio:.3f}")
    assert report.grad_checkpointing == checkpointing
    assert 0.8 <= ratio <= 1.2, (measured, report.peak_bytes)


def test_activation_checkpointing_lowers_the_planned_video_peak():
    plain = estimate_training_memory(load_config("video/configs/toy_video.py", TOY), 1, "cpu")
    ckpt = estimate_training_memory(
        load_config("video/configs/toy_video.py", [*TOY, "+model.net.grad_checkpointing=True"]), 1, "cpu")
    assert ckpt.activation_peak_bytes < 0.8 * plain.activation_peak_bytes
    assert ckpt.peak_bytes < plain.peak_bytes


# EVA-g stage 2 on K-400 (16 frames x 256 tokens, width 1408, depth 40, bf16 autocast), 8 GPUs x 4 clips
# with 8 accumulation steps (the recipe's 32 x 8); the head-init files are not needed to count memory
STAGE2 = ["model.head_init_checkpoint=null", "model.head_init_rows=null"]


def test_eva_g_16_frame_stage2_with_activation_checkpointing_fits_a_40_gib_gpu():
    # without checkpointing the planner gives 53.4 GiB (docs/recipes/video.md#memory); not re-run here:
    # each EVA-g estimate costs ~15 s of CPU, and the toy tests above check what checkpointing changes
    report = estimate_training_memory(load_config("video/configs/k400_stage2.py", STAGE2), num_gpus=8)
    print(f"EVA-g stage 2, {report.setup.batch_per_gpu} clips per GPU, activation checkpointing: "
          f"{report.peak_gib:.2f} GiB (activations {report.breakdown['activations'] / 2 ** 30:.2f} GiB)")
    assert report.setup.batch_per_gpu == 4 and report.grad_checkpointing
    assert report.setup.amp_dtype == torch.bfloat16
    assert report.num_params > 1.0e9  # EVA-g: 1.017B parameters with the 400-class head
    assert report.peak_gib < 40
