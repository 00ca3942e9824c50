"""The main job's toy video stage (``video.toy_stage.run_toy_stage``, docs/recipes/video.md#toy-world-proof).

The stage inflates the toy MIM encoder's image checkpoint (safetensors, eva_core ``Eva`` keys, patch 4 at
32 px) into a tiny video EVA, trains it on toy motions through ``train_from_config`` and reports val
top-1 with a one-frame baseline. Here the checkpoint is a random encoder of the stage contract's
architecture, made in the test.
"""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import save_file

import eva_core
from video.toy_stage import run_toy_stage, toy_stage_config

# the toy MIM encoder of configs/pretrain/toy.py (the stage contract's encoder_arch)
ENCODER_ARCH = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0)


@pytest.fixture(scope="module")
def encoder_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    encoder = eva_core.create_model("eva_tiny_patch16_224", num_classes=0, **ENCODER_ARCH)
    path = tmp_path_factory.mktemp("mim") / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
    return path


def test_toy_stage_fast_learns_motion_above_chance_while_one_frame_stays_at_chance(encoder_checkpoint,
                                                                                  tmp_path):
    torch.set_num_threads(1)
    result = run_toy_stage(tmp_path / "stage", encoder_checkpoint, dict(ENCODER_ARCH), seed=0, fast=True)
    json.dumps(result)  # the main job writes it to its results table
    metrics = result["metrics"]
    numbers = (f"val top-1 over {metrics['num_val']} clips: {metrics['num_frames']} frames "
               f"{metrics['top1']:.3f}, "
               f"one frame {metrics['top1_one_frame']:.3f}; chance + 3 sigma {metrics['chance_3sigma']:.3f}; "
               f"{result['seconds']:.1f} s")
    print(numbers)
    assert result["metric"] == "top1" and result["value"] == metrics["top1"] and result["png"] is None
    # chance 0.25 + 3 binomial standard deviations over 128 val clips = 0.365: a model at chance stays below
    assert metrics["top1"] > metrics["chance_3sigma"], numbers
    assert metrics["top1_one_frame"] < metrics["chance_3sigma"], numbers


def test_toy_stage_config_refuses_an_encoder_arch_it_cannot_inflate_key_for_key(tmp_path):
    with pytest.raises(ValueError, match="missing \\['mlp_ratio'\\].*unexpected \\['qkv_bias'\\]"):
        toy_stage_config({**{k: v for k, v in ENCODER_ARCH.items() if k != "mlp_ratio"}, "qkv_bias": False},
                         None, num_frames=4, max_iter=1, output_dir=tmp_path)


def test_toy_stage_config_uses_the_encoder_width_and_a_one_frame_tubelet_for_the_baseline(tmp_path):
    video_cfg = toy_stage_config(ENCODER_ARCH, "enc.safetensors", num_frames=4, max_iter=7,
                                 output_dir=tmp_path)
    frame_cfg = toy_stage_config(ENCODER_ARCH, None, num_frames=1, max_iter=7, output_dir=tmp_path)
    net = video_cfg.model.net
    assert (net.embed_dim, net.depth, net.num_heads, net.mlp_ratio) == (64, 2, 4, 2.0)
    assert (net.num_frames, net.tubelet_size, net.checkpoint_path) == (4, 2, "enc.safetensors")
    assert (frame_cfg.model.net.tubelet_size, frame_cfg.model.net.checkpoint_path) == (1, None)
    assert video_cfg.train.max_iter == video_cfg.train.eval_period == 7
