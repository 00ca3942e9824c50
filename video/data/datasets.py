"""Kinetics video datasets: ``path label`` lists and the official csv, decoded with PyAV (decord optional).

``docs/recipes/video.md#sampling-and-augmentation``. Every sample is a dict
``{"video": FloatTensor, "label": int, "path": str, "index": int}``; ``video`` is ``[T, 3, H, W]`` (the
layout :class:`video.EvaVideo` reads per clip) or, for multi-view testing, ``[V, T, 3, H, W]`` with the
views clip-major (view ``v = clip * num_crops + crop``). Without a transform the frames are floats in
[0, 1] at the file's size.

Frames are chosen by TSN segment sampling (:func:`tsn_indices`): the video is cut into ``T`` equal
segments and one frame is taken from each, at a random position in training and at the centre in
testing; ``num_clips`` test clips take, in every segment, the frames at ``(k + 0.5) / num_clips`` of it.
(The EVA-01 release, an X-CLIP fork, draws its test clips as ``num_clips`` random training draws; ours
are fixed so that a test score is reproducible.)

A video that cannot be decoded is handled as eva_core's image datasets handle a corrupt image
(``eva_core.data.datasets``): in training the next readable video replaces it (so the batch keeps its
size); in test mode (``train=False``) and inside ``eva_core.data.exclude_unreadable`` (which
``build_test_loader`` uses) the read raises ``UnreadableSampleError`` and the test loader drops it and
counts it in ``num_skipped``, never replacing it; each skip
increments ``dataset.num_skipped`` and logs the file; ``strict=True`` makes it fatal
(:class:`CorruptVideoError` naming the file).

Randomness (segment offsets here, crop / flip / colour in :mod:`video.data.transforms`) is drawn from
torch's global generator, which eva_core's train loader seeds from (seed, stream position) before each
read, so a resumed run sees the clips an uninterrupted run would.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from eva_core.data.datasets import (CorruptImageError, UnreadableSampleError, _excluding_unreadable,
                                    read_file_list)

from .kinetics722 import read_class_list, read_kinetics_csv

__all__ = ["CorruptVideoError", "VideoDecodeError", "tsn_indices", "decode_frames", "count_frames",
           "VideoClipDataset", "KineticsListDataset", "KineticsCsvDataset", "measure_decode_throughput"]

logger = logging.getLogger(__name__)

BACKENDS = ("pyav", "decord")


class CorruptVideoError(CorruptImageError):
    """A video could not be decoded and the dataset is strict; the message names the file."""


class VideoDecodeError(ValueError):
    """A container opened but holds no decodable video frames."""


def _decode_errors() -> tuple[type[BaseException], ...]:
    import av

    # av.FFmpegError covers InvalidDataError / EOFError of broken streams; OSError a missing file
    return (av.FFmpegError, OSError, ValueError, EOFError, RuntimeError)


# ----------------------------------------------------------------------------- sampling
def tsn_indices(num_video_frames: int, num_segments: int, *, train: bool, clip: int = 0,
                num_clips: int = 1) -> list[int]:
    """TSN segment sampling: one frame from each of ``num_segments`` equal segments.

    Args:
        num_video_frames: frames in the video (> 0).
        num_segments: ``T``, the frames of the clip.
        train: a random frame in each segment (torch's global generator) if True; otherwise the frame
            at ``(clip + 0.5) / num_clips`` of each segment (the centre for one clip).
        clip, num_clips: which of the ``num_clips`` test clips (ignored in training).

    A video shorter than ``T`` frames repeats frames (segments shorter than one frame).
    """
    if num_video_frames <= 0:
        raise ValueError(f"tsn_indices: the video has {num_video_frames} frames")
    if num_segments <= 0:
        raise ValueError(f"tsn_indices: num_segments must be positive, got {num_segments}")
    if not 0 <= clip < num_clips:
        raise ValueError(f"tsn_indices: clip {clip} not in [0, {num_clips})")
    seg = num_video_frames / num_segments
    starts = np.arange(num_segments) * seg
    if train:
        offsets = torch.rand(num_segments, dtype=torch.float64).numpy() * seg
    else:
        offsets = np.full(num_segments, seg * (clip + 0.5) / num_clips)
    idx = np.floor(starts + offsets).astype(np.int64)
    return np.clip(idx, 0, num_video_frames - 1).tolist()


# ----------------------------------------------------------------------------- decoding
def count_frames(path: str, backend: str = "pyav") -> int:
    """Frames of the first video stream (decoded and counted when the container does not say)."""
    if backend == "decord":
        return len(_decord_reader(path))
    with _open_video(path) as (container, stream):
        declared = int(stream.frames)
    return declared if declared > 0 else _count_decoded(path)


def _video_stream(container: Any, path: str) -> Any:
    if not container.streams.video:
        raise VideoDecodeError(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _decord_reader(path: str) -> Any:
    try:
        import decord
    except ImportError as e:
        raise ImportError("backend='decord' needs the optional package decord; use backend='pyav'") from e
    return decord.VideoReader(path, num_threads=1)


def decode_frames(path: str, pick: Callable[[int], Sequence[int]], backend: str = "pyav"
                  ) -> tuple[np.ndarray, list[int]]:
    """Decode the frames ``pick(num_frames)`` of a video as RGB.

    Args:
        path: the video file.
        pick: maps the video's frame count to the frame indices wanted (repeats allowed).
        backend: ``"pyav"`` (sequential decode up to the last wanted frame; the frame count from the
            header, or from a counting pass where the header has none) or ``"decord"``.

    Returns:
        ``(frames uint8 [len(indices), H, W, 3], indices)``.

    Raises:
        VideoDecodeError: no video stream or no frame; PyAV / decord errors for broken files.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "decord":
        vr = _decord_reader(path)
        if len(vr) == 0:
            raise VideoDecodeError(f"{path}: no decodable frame")
        indices = list(pick(len(vr)))
        return vr.get_batch(indices).asnumpy(), indices
    with _open_video(path) as (container, stream):
        declared = int(stream.frames)
    # containers without a frame count in the header (mkv, webm) are counted by one decode pass
    num_frames = declared if declared > 0 else _count_decoded(path)
    if num_frames == 0:
        raise VideoDecodeError(f"{path}: no decodable frame")
    indices = list(pick(num_frames))
    kept = _decode_selected(path, set(indices))
    if len(kept) < len(set(indices)):
        # the header promised frames the stream does not have: pick again from the real count
        num_frames = _count_decoded(path)
        if num_frames == 0:
            raise VideoDecodeError(f"{path}: no decodable frame")
        indices = list(pick(num_frames))
        kept = _decode_selected(path, set(indices))
    return np.stack([kept[i] for i in indices]), indices


@contextmanager
def _open_video(path: str) -> Iterator[tuple[Any, Any]]:
    import av

    with av.open(path) as container:
        yield container, _video_stream(container, path)


def _count_decoded(path: str) -> int:
    with _open_video(path) as (container, stream):
        return sum(1 for _ in container.decode(stream))


def _decode_selected(path: str, wanted: set[int]) -> dict[int, np.ndarray]:
    """RGB arrays of the frames ``wanted``, decoding sequentially up to the last of them."""
    kept: dict[int, np.ndarray] = {}
    last = max(wanted)
    with _open_video(path) as (container, stream):
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                kept[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    return kept


# ----------------------------------------------------------------------------- datasets
class VideoClipDataset(Dataset):
    """Clips of ``(path, label)`` videos by TSN sampling, with skip-and-count handling of broken files.

    Args:
        samples: ``(video path, label)`` pairs.
        num_frames: ``T``, frames per clip (TSN segments).
        transform: maps a clip ``[T, 3, H, W]`` float in [0, 1] to ``[T, 3, S, S]`` (one view) or
            ``[num_crops, T, 3, S, S]`` (spatial test crops), e.g. :mod:`video.data.transforms`.
        train: random frame per segment if True, else centred (``num_clips`` clips).
        num_clips: test clips per video (temporal views); ignored in training.
        strict: make an unreadable video fatal instead of skipped.
        backend: ``"pyav"`` or ``"decord"`` (imported only when chosen).
    """

    def __init__(self, samples: Sequence[tuple[str, int]], num_frames: int = 8,
                 transform: Callable | None = None, *, train: bool = True, num_clips: int = 1,
                 strict: bool = False, backend: str = "pyav"):
        if num_frames <= 0 or num_clips <= 0:
            raise ValueError(f"num_frames and num_clips must be positive, got {num_frames}, {num_clips}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if train and num_clips != 1:
            raise ValueError(f"num_clips={num_clips}: several temporal clips are a test-time setting "
                             "(train=False)")
        self.samples = [(str(p), int(label)) for p, label in samples]
        if not self.samples:
            raise ValueError(f"{type(self).__name__}: no videos given")
        self.targets = [label for _, label in self.samples]
        self.num_frames = int(num_frames)
        self.transform = transform
        self.train = bool(train)
        self.num_clips = int(num_clips)
        self.strict = bool(strict)
        self.backend = backend
        self.num_skipped = 0

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return max(self.targets) + 1

    def sample_path(self, index: int) -> str:
        return self.samples[index][0]

    def clip_indices(self, num_video_frames: int) -> list[list[int]]:
        """Frame indices of every clip of a video with ``num_video_frames`` frames."""
        return [tsn_indices(num_video_frames, self.num_frames, train=self.train, clip=k,
                            num_clips=self.num_clips) for k in range(self.num_clips)]

    def read_clips(self, index: int) -> list[torch.Tensor]:
        """The clips ``[T, 3, H, W]`` (float in [0, 1]) of sample ``index``, untransformed."""
        per_clip: list[list[int]] = []

        def pick(n: int) -> list[int]:
            per_clip[:] = self.clip_indices(n)
            return [i for clip in per_clip for i in clip]

        frames, _ = decode_frames(self.sample_path(index), pick, self.backend)
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
        return list(video.split(self.num_frames))

    def _read_or_skip(self, index: int) -> tuple[int, list[torch.Tensor]]:
        n = len(self)
        errors = _decode_errors()
        for attempt in range(n):
            j = (index + attempt) % n
            try:
                return j, self.read_clips(j)
            except errors as e:
                path = self.sample_path(j)
                if self.strict:
                    raise CorruptVideoError(f"cannot decode video {path}: {type(e).__name__}: {e}") from e
                self.num_skipped += 1
                if _excluding_unreadable() or not self.train:
                    # evaluation never replaces a video: another one would be counted twice
                    logger.warning("excluding unreadable video %s (%s: %s)", path, type(e).__name__, e)
                    raise UnreadableSampleError(path, j, f"{type(e).__name__}: {e}") from e
                logger.warning("skipping unreadable video %s (%s: %s); %d skipped so far", path,
                               type(e).__name__, e, self.num_skipped)
        raise CorruptVideoError(f"no readable video in {type(self).__name__} of {n} samples")

    def __getitem__(self, index: int) -> dict[str, Any]:
        j, clips = self._read_or_skip(int(index))
        if self.transform is not None:
            clips = [self.transform(c) for c in clips]
        views = [v for c in clips for v in (c.unbind(0) if c.dim() == 5 else (c,))]
        video = views[0] if len(views) == 1 else torch.stack(views)
        path, label = self.samples[j]
        return {"video": video, "label": label, "path": path, "index": j}


class KineticsListDataset(VideoClipDataset):
    """Videos of a Kinetics ``relative/path label`` list, resolved against ``root``.

    Args:
        list_file: one ``relative/path label`` per line (integer labels; see
            ``eva_core.data.read_file_list`` for the format and its errors).
        root: folder the paths are relative to.
        **kwargs: :class:`VideoClipDataset` arguments.
    """

    def __init__(self, list_file: str | os.PathLike, root: str | os.PathLike, **kwargs: Any):
        self.list_file, self.root = str(list_file), str(root)
        samples = [(os.path.join(self.root, rel), label) for rel, label in read_file_list(self.list_file)]
        super().__init__(samples, **kwargs)


class KineticsCsvDataset(VideoClipDataset):
    """Videos of an official Kinetics csv (``label,youtube_id,time_start,time_end,split``).

    The clip of a row is ``root/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4``, the name the
    Kinetics downloaders write (``docs/recipes/video.md#kinetics-722``).

    Args:
        csv_file: the official csv.
        root: folder holding the clip files.
        split: keep rows of this split (``train``, ``validate``); None keeps all.
        classes: class-list file (one name per line, or ``id,name``) giving the label order; default:
            the sorted labels of the csv (the official order).
        **kwargs: :class:`VideoClipDataset` arguments.

    Raises:
        ValueError: a row's label is not in ``classes`` (naming the csv line), or no row is left.
    """

    def __init__(self, csv_file: str | os.PathLike, root: str | os.PathLike, split: str | None = None, *,
                 classes: str | os.PathLike | None = None, **kwargs: Any):
        self.csv_file, self.root = str(csv_file), str(root)
        records = read_kinetics_csv(self.csv_file, "kinetics", split=split)
        if not records:
            raise ValueError(f"{self.csv_file}: no rows" + (f" of split {split!r}" if split else ""))
        self.classes = (read_class_list(classes) if classes is not None
                        else sorted({r.label for r in records}))
        index = {name: i for i, name in enumerate(self.classes)}
        samples = []
        for r in records:
            if r.label not in index:
                where = f"class list {os.fspath(classes)}" if classes is not None else "the csv's labels"
                raise ValueError(f"{r.source}: label {r.label!r} is not in {where}")
            samples.append((os.path.join(self.root, r.path), index[r.label]))
        super().__init__(samples, **kwargs)


# ----------------------------------------------------------------------------- throughput
def measure_decode_throughput(dataset: Dataset, *, batch_size: int = 8, num_batches: int = 4,
                              num_workers: int = 0, seed: int = 0) -> dict[str, float]:
    """Decoded (and transformed) clips per second of eva_core's train loader over ``dataset``.

    Returns:
        ``{"clips_per_s", "seconds", "clips"}`` over ``num_batches`` batches after one warm-up batch.
    """
    from eva_core.data import build_train_loader

    loader = iter(build_train_loader(dataset, batch_size, num_workers=num_workers, seed=seed))
    next(loader)  # warm-up: worker start, codec initialisation
    start = time.perf_counter()
    for _ in range(num_batches):
        next(loader)
    seconds = time.perf_counter() - start
    clips = batch_size * num_batches
    return {"clips_per_s": clips / seconds, "seconds": seconds, "clips": float(clips)}
