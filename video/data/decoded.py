"""Clips decoded once and served from memory, for toy-scale training on a CPU budget.

Decoding a toy clip with PyAV costs about 0.3 s per batch of 16 clips on one CPU core, more than a
training step of a tiny video EVA, so the toy proof (``tests/test_video_toy_transfer.py``) and the
main job's toy stage (:mod:`video.toy_stage`) decode every clip of a Kinetics list once, through the
package's own reader (:class:`~video.data.KineticsListDataset`: PyAV, TSN centre frames, one centre
crop), and train on the decoded tensors (``docs/recipes/video.md#toy-world-proof``).
"""
from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

from .datasets import KineticsListDataset
from .transforms import VideoTestTransform

__all__ = ["DecodedClips", "OneFrameClips"]


class DecodedClips(Dataset):
    """The clips of a Kinetics ``path label`` list, decoded once at construction and kept in memory.

    Each clip is read by :class:`~video.data.KineticsListDataset` in test mode (TSN segment centres,
    shorter side resized to ``size``, one centre crop, ImageNet normalisation), so every epoch sees
    the same frames: augmentation is not what the toy runs measure.

    Args:
        list_file: Kinetics ``relative/path label`` list.
        root: folder the list's paths are relative to.
        num_frames: frames per clip (TSN segments).
        size: frame side after resize and centre crop.

    Raises:
        CorruptVideoError: a listed clip cannot be decoded (strict: a toy set has no corrupt files, so
            one is a bug, not noise to skip).
    """

    def __init__(self, list_file: str | os.PathLike, root: str | os.PathLike, num_frames: int, size: int):
        reader = KineticsListDataset(list_file, root, num_frames=num_frames, train=False, strict=True,
                                     transform=VideoTestTransform(size=size, num_crops=1, resize_short=size))
        self.num_frames = int(num_frames)
        self.items = [{"video": s["video"], "label": s["label"]}
                      for s in (reader[i] for i in range(len(reader)))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class OneFrameClips(Dataset):
    """One frame of each decoded clip (``video`` ``[1, 3, H, W]``): the single-frame baseline's data.

    In training a fresh frame is drawn uniformly per read (torch's global generator, which eva_core's
    train loader seeds per stream position); in evaluation each clip shows a fixed random frame. The
    clip's centre frame would not do for a motion task: there the moving shape sits mid-track, which
    tells a horizontal from a vertical motion; a uniformly drawn frame shows it anywhere on its track,
    with the same distribution for every direction.

    Args:
        clips: decoded clips (:class:`DecodedClips`).
        train: draw a new frame per read (True) or use the fixed one (False).
        seed: seed of the fixed evaluation frames.
    """

    def __init__(self, clips: DecodedClips, train: bool, seed: int = 0):
        self.clips, self.train = clips, bool(train)
        frames = clips[0]["video"].shape[0] if len(clips) else 1
        self.num_frames = int(frames)
        self.fixed = torch.randint(0, frames, (len(clips),), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        item = self.clips[i]
        k = int(torch.randint(0, self.num_frames, ())) if self.train else int(self.fixed[i])
        return {"video": item["video"][k:k + 1], "label": item["label"]}
