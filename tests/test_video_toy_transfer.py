"""Proof on the toy world: a tiny video EVA inflated from an image checkpoint learns the toy motions,
which a single-frame model trained with the same budget cannot (docs/recipes/video.md#toy-world-proof).

The toy clips (``eva_core.data.toy_world.make_kinetics``) show one shape crossing the frame; the class
is the direction. A single frame (T=1) shows a shape somewhere on the track, equally likely for every
direction, so it cannot beat chance; 8 frames show where it goes. Both runs go through the engine
(``train_from_config``) with ``video/configs/toy_video.py``. The clips are decoded once by
``video.data.DecodedClips`` (PyAV, TSN sampling) and served from memory: decoding per step costs ~0.3 s per
batch of 16 on one CPU core, which would not fit the test budget.
"""
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import eva_core
from eva_core.checkpoint import save_atomic
from eva_core.config import LazyCall as L
from eva_core.config import LazyConfig
from eva_core.data.toy_world import MOTIONS, make_kinetics
from eva_core.engine.defaults import train_from_config
from video import create_video_model
from video.data import DecodedClips, OneFrameClips

torch.set_num_threads(1)
CONFIG = Path(__file__).resolve().parents[1] / "video" / "configs" / "toy_video.py"
TRAIN_PER_CLASS, VAL_PER_CLASS, SIZE, FRAMES = 160, 32, 32, 8
# the tiny image EVA the video model is inflated from (configs/classification/toy_imagefolder.py)
ARCH = dict(img_size=SIZE, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0)


@pytest.fixture(scope="module")
def toy_kinetics(tmp_path_factory):
    paths = make_kinetics(tmp_path_factory.mktemp("toy_world"), train_per_class=TRAIN_PER_CLASS,
                          val_per_class=VAL_PER_CLASS, img_size=SIZE, num_frames=FRAMES, seed=0)
    root = paths["kinetics_root"]
    clips = (DecodedClips(paths["kinetics_train_list"], root, FRAMES, SIZE),
             DecodedClips(paths["kinetics_val_list"], root, FRAMES, SIZE))
    return {FRAMES: clips, 1: (OneFrameClips(clips[0], train=True), OneFrameClips(clips[1], train=False))}


@pytest.fixture(scope="module")
def image_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    image_model = eva_core.create_model("eva_tiny_patch16_224", num_classes=4, **ARCH)
    return str(save_atomic({"model": image_model.state_dict()}, tmp_path_factory.mktemp("img") / "image.pth"))


def _train(data, image_checkpoint, num_frames, out_dir):
    cfg = LazyConfig.load(CONFIG)
    train_set, val_set = data[num_frames]
    cfg.dataloader.train.dataset = L(lambda: train_set)()
    cfg.dataloader.test.dataset = L(lambda: val_set)()
    net = cfg.model.net
    net.num_frames, net.checkpoint_path = num_frames, image_checkpoint
    # the recipe's tubelet 2 (a displacement inside one token) needs two frames; one frame: tubelet 1
    net.tubelet_size = net.tubelet_size if num_frames > 1 else 1
    cfg.train.output_dir = str(out_dir)
    result = train_from_config(cfg, tensorboard=False)
    report = result.model.net.load_report
    return result.results["top1"] / 100.0, report


def test_video_eva_inflated_from_an_image_checkpoint_learns_motion_a_single_frame_cannot(
        toy_kinetics, image_checkpoint, tmp_path):
    n_val = VAL_PER_CLASS * len(MOTIONS)
    chance = 1.0 / len(MOTIONS)
    # chance + 3 binomial standard deviations on the val set: a model at chance stays below it
    bound = chance + 3 * math.sqrt(chance * (1 - chance) / n_val)
    video_top1, report = _train(toy_kinetics, image_checkpoint, FRAMES, tmp_path / "video")
    frame_top1, _ = _train(toy_kinetics, image_checkpoint, 1, tmp_path / "frame")
    numbers = (f"val top-1 over {n_val} clips: {FRAMES} frames {video_top1:.3f}, single frame "
               f"{frame_top1:.3f}; chance {chance:.3f}, chance + 3 sigma {bound:.3f}")
    assert not report.missing or all(k.startswith("head") for k in report.missing), report
    assert video_top1 > bound, numbers
    assert frame_top1 < bound, numbers
    print(numbers)


def test_inflated_tubelet_1_model_cannot_tell_a_clip_from_its_time_reversal_until_frames_get_a_temporal_code(
        image_checkpoint):
    """Why tubelet 1 stays near chance at toy scale (docs/recipes/video.md#toy-world-proof).

    The inflated table is the image table repeated per frame: at tubelet 1 a clip and its time reversal
    give the same set of tokens, and joint attention + mean pooling give the same logits, so moving left
    and moving right are the same input until training separates the frames' positions.
    ``temporal_pos_init`` adds a sin-cos code of the frame and breaks that symmetry from the start.
    """
    clip = torch.randn(2, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    kwargs = dict(num_classes=4, num_frames=FRAMES, tubelet_size=1, **{**ARCH, "img_size": SIZE})
    inflated = create_video_model("eva_video_tiny_patch14_224_f8", checkpoint_path=image_checkpoint,
                                  **kwargs).eval()
    coded = create_video_model("eva_video_tiny_patch14_224_f8", checkpoint_path=image_checkpoint,
                               temporal_pos_init=1.0, **kwargs).eval()

    def pooled(model, x):  # the head's input: the head itself starts at 0.001 scale
        return model.forward_head(model.forward_features(x), pre_logits=True)

    with torch.no_grad():
        same = (pooled(inflated, clip), pooled(inflated, clip.flip(1)))
        differ = (pooled(coded, clip), pooled(coded, clip.flip(1)))
    gap_same, gap_coded = (same[0] - same[1]).abs().max(), (differ[0] - differ[1]).abs().max()
    # float summation order only (~1e-7) against a real difference (~1e-3 at the 0.02-scale init)
    assert gap_same < 1e-5 and gap_coded > 100 * max(gap_same, 1e-6), (gap_same, gap_coded)
    torch.testing.assert_close(coded.pos_embed[:, 0], inflated.pos_embed[:, 0])  # CLS position untouched
