"""The paper's 12 zero-shot benchmarks (Table 10) read from their standard on-disk formats.

``docs/recipes/clip.md#zero-shot-benchmarks``. :data:`BENCHMARKS` maps a key (``imagenet_v2``,
``cifar100``, ``kinetics400``, ...) to a :class:`BenchmarkSpec`: the Table 10 column, EVA-CLIP's number
in the paper, the prompt templates and an adapter ``build(root, transform, **kwargs) ->``
:class:`BenchmarkData` (dataset + class names + the evaluator that scores it).

=============  ============================================================================
ImageNet-1K    ``root/<wnid>/*.JPEG``; the readers of ``eva_core.classification.datasets``
/-V2/-A/-R/    (V2: folders ``0..999``; A / R: 200 wnid folders, logits restricted to them;
Sketch,        ObjectNet: ``images/`` + ``mappings/``, its 113 IN-1K-overlapping classes, border
ObjectNet      crop, a prediction is right when it is one of the mapped IN-1K classes). Class
               names: open_clip's 1000 IN-1K names; OpenAI's 80 ImageNet templates.
CIFAR-10/100   the python pickles: ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
               and ``cifar-100-python/{train,test,meta}``; the ``test`` split by default. Class
               names from the ``meta`` pickle (``_`` read as a space); OpenAI's 18 CIFAR templates.
UCF-101        ``root/UCF-101/<Class>/v_*.avi`` (or the videos in ``root``) and
               ``root/ucfTrainTestlist/{classInd.txt,testlist01.txt}`` (or the lists in ``root``).
               Class names: ``classInd.txt`` with CamelCase split (``ApplyEyeMakeup`` ->
               ``Apply Eye Makeup``; ``HandstandPushups`` -> OpenAI's ``Hand Stand Pushups``),
               OpenAI's 101 names; OpenAI's 48 UCF-101 templates.
Kinetics-      a folder with ``classes.txt`` (one name per line, or ``id,name``) and a
400/600/700    ``path label`` list ``val.txt`` (paths relative to the folder), or an official csv
               (``label,youtube_id,time_start,time_end,split``; clips ``{id}_{start}_{end}.mp4``
               next to it or in ``videos=``). Names as the lists spell them (``_`` read as a space,
               lower case: the CLIP tokenizer lowercases). OpenAI's 28 Kinetics-700 templates.
=============  ============================================================================

Videos are decoded by ``video.data`` (PyAV) and scored from their middle frame (TSN's centred frame
with one segment) as an image, or with ``num_frames=T`` from ``T`` frames (the centres of ``T`` equal
segments) whose normalised embeddings are averaged (:class:`FrameAveragedCLIP`); an unreadable video
is dropped and counted like an unreadable image.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_pil_image, to_tensor

from eva_core.classification.datasets import EvalSetLayoutError, build_eval_set
from eva_core.data import build_test_loader
from eva_core.evaluation import ClassificationEvaluator, inference_on_dataset

from .zero_shot import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, build_zero_shot_classifier

__all__ = ["BenchmarkData", "BenchmarkSpec", "BENCHMARKS", "TABLE10_ORDER", "PAPER_EVA_CLIP_TOP1",
           "PAPER_EVA_CLIP_AVERAGE", "CIFAR_TEMPLATES", "UCF101_TEMPLATES", "KINETICS_TEMPLATES",
           "CifarDataset", "VideoFramesDataset", "FrameAveragedCLIP", "ucf101_classname",
           "UCF101_OPENAI_SPELLING", "build_benchmark",
           "ZeroShotLogits", "evaluate_benchmark", "evaluate_benchmarks", "format_table10"]

# OpenAI CLIP's per-dataset prompt sets, word for word and in order as in openai/CLIP data/prompts.md
# (sections CIFAR10 / CIFAR100, UCF101, Kinetics700; CLIP_benchmark's en_zeroshot_classification_templates
# holds the same 18 CIFAR ones with ``{c}``); open_clip 3.3.0 ships only the ImageNet ones. The two
# video sets are written as products because that is how the published lists are ordered: UCF-101 runs
# the verb outermost, then a / the, then photo / video / example / demonstration; Kinetics runs the
# medium outermost. ``docs/recipes/clip.md#zero-shot-benchmarks``.
CIFAR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.", "a photo of the {}.",
    "a blurry photo of the {}.", "a black and white photo of the {}.", "a low contrast photo of the {}.",
    "a high contrast photo of the {}.", "a bad photo of the {}.", "a good photo of the {}.",
    "a photo of the small {}.", "a photo of the big {}.",
)
UCF101_TEMPLATES: tuple[str, ...] = tuple(
    f"a {kind} of {art} person{verb} {{}}."
    for verb in ("", " using", " doing", " during", " performing", " practicing")
    for art in ("a", "the")
    for kind in ("photo", "video", "example", "demonstration"))
KINETICS_TEMPLATES: tuple[str, ...] = tuple(
    f"a {kind} of {subject}{{}}."
    for kind in ("photo", "video", "example", "demonstration")
    for subject in ("", "a person ", "a person using ", "a person doing ", "a person during ",
                    "a person performing ", "a person practicing "))

#: benchmark keys in the column order of paper Table 10
TABLE10_ORDER: tuple[str, ...] = ("imagenet", "imagenet_v2", "imagenet_a", "imagenet_r", "imagenet_sketch",
                                  "objectnet", "cifar10", "cifar100", "ucf101", "kinetics400",
                                  "kinetics600", "kinetics700")
#: EVA-CLIP's zero-shot top-1 in paper Table 10 (``docs/recipes/clip.md#zero-shot-results``)
PAPER_EVA_CLIP_TOP1: dict[str, float] = dict(zip(TABLE10_ORDER, (
    78.5, 71.5, 73.6, 92.5, 67.3, 72.3, 98.3, 88.7, 76.1, 65.2, 64.4, 58.4)))
PAPER_EVA_CLIP_AVERAGE = 75.7


@dataclass
class BenchmarkData:
    """One benchmark ready to score.

    Attributes:
        dataset: map-style dataset of ``{"image", "label", "index", ...}`` samples.
        classnames: one name per logit column (label order).
        evaluator: the :class:`ClassificationEvaluator` with the set's scoring rule.
    """

    dataset: Dataset
    classnames: list[str]
    evaluator: ClassificationEvaluator


@dataclass(frozen=True)
class BenchmarkSpec:
    """A Table 10 benchmark: ``column`` header, ``paper`` top-1, prompt ``templates``, adapter ``build``."""

    column: str
    paper: float
    templates: tuple
    build: Callable[..., BenchmarkData] = field(repr=False)


def _topk(num_classes: int) -> tuple[int, ...]:
    return (1, 5) if num_classes >= 5 else (1,)


# ----------------------------------------------------------------------------- ImageNet family
def _imagenet_family(set_name: str) -> Callable[..., BenchmarkData]:
    def build(root: str | os.PathLike, transform: Callable | None = None, **kwargs: Any) -> BenchmarkData:
        dataset = build_eval_set(set_name, root, transform, **kwargs)
        classnames = list(IMAGENET_CLASSNAMES)
        if dataset.num_classes != len(classnames):
            raise EvalSetLayoutError(f"{set_name}: a {dataset.num_classes}-class label space; zero-shot "
                                     f"uses open_clip's {len(classnames)} IN-1K class names")
        return BenchmarkData(dataset, classnames, dataset.make_evaluator(topk=(1, 5)))
    build.__doc__ = f"``{set_name}`` from ``root`` (``eva_core.classification.datasets`` layout)."
    return build


# ----------------------------------------------------------------------------- CIFAR
def _get(d: Mapping, key: str, path: str) -> Any:
    # the official pickles were written by Python 2: keys are bytes under encoding="bytes"
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise EvalSetLayoutError(f"{path}: no {key!r} entry (keys: {sorted(map(str, d))[:8]}); expected the "
                             "CIFAR python pickle layout")


def _unpickle(path: str) -> Mapping:
    if not os.path.isfile(path):
        raise EvalSetLayoutError(f"CIFAR: file not found: {path}")
    with open(path, "rb") as f:
        try:
            data = pickle.load(f, encoding="bytes")
        except Exception as e:  # any unpickling failure is a bad file, whatever its type
            raise EvalSetLayoutError(f"{path}: not a CIFAR python pickle ({type(e).__name__}: {e})") from e
    if not isinstance(data, Mapping):
        raise EvalSetLayoutError(f"{path}: expected a dict pickle, got {type(data).__name__}")
    return data


def _names(values: Sequence) -> list[str]:
    return [(v.decode() if isinstance(v, bytes) else str(v)).replace("_", " ") for v in values]


class CifarDataset(Dataset):
    """CIFAR-10 / CIFAR-100 from the official python pickles.

    Args:
        root: ``cifar-10-batches-py`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``) or
            ``cifar-100-python`` (``train``, ``test``, ``meta``); the variant is read from the files.
        transform: callable applied to the 32 x 32 PIL RGB image.
        split: ``"test"`` or ``"train"``.

    Attributes:
        classes: class names (``_`` read as a space), CIFAR-100's fine labels.
        images: ``uint8 [N, 32, 32, 3]``; ``targets``: labels.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, split: str = "test"):
        if split not in ("test", "train"):
            raise ValueError(f"CIFAR split must be 'test' or 'train', got {split!r}")
        self.root, self.transform = str(root), transform
        if not os.path.isdir(self.root):
            raise EvalSetLayoutError(f"CIFAR: folder not found: {self.root}")
        if os.path.isfile(os.path.join(self.root, "batches.meta")):
            meta, label_key = os.path.join(self.root, "batches.meta"), "labels"
            self.classes = _names(_get(_unpickle(meta), "label_names", meta))
            files = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
        elif os.path.isfile(os.path.join(self.root, "meta")):
            meta, label_key = os.path.join(self.root, "meta"), "fine_labels"
            self.classes = _names(_get(_unpickle(meta), "fine_label_names", meta))
            files = [split]
        else:
            raise EvalSetLayoutError(f"CIFAR: {self.root} has neither batches.meta (CIFAR-10) nor meta "
                                     "(CIFAR-100); expected the python-pickle release folder")
        images, targets = [], []
        for name in files:
            path = os.path.join(self.root, name)
            batch = _unpickle(path)
            data = np.asarray(_get(batch, "data", path))
            labels = [int(v) for v in _get(batch, label_key, path)]
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise EvalSetLayoutError(f"{path}: 'data' is {data.dtype} {list(data.shape)}; expected "
                                         "uint8 [N, 3072] (channel-major 32 x 32 RGB rows)")
            if len(labels) != len(data):
                raise EvalSetLayoutError(f"{path}: {len(labels)} labels for {len(data)} images")
            bad = [v for v in labels if not 0 <= v < len(self.classes)]
            if bad:
                raise EvalSetLayoutError(f"{path}: label {bad[0]} outside 0..{len(self.classes) - 1}")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            targets += labels
        self.images = np.concatenate(images)
        self.targets = targets
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        img = Image.fromarray(self.images[index])
        image = self.transform(img) if self.transform is not None else to_tensor(img)
        return {"image": image, "label": self.targets[index], "index": int(index)}


def _cifar(num_classes: int) -> Callable[..., BenchmarkData]:
    def build(root: str | os.PathLike, transform: Callable | None = None,
              split: str = "test") -> BenchmarkData:
        dataset = CifarDataset(root, transform, split)
        if dataset.num_classes != num_classes:
            raise EvalSetLayoutError(f"cifar{num_classes}: {root} holds CIFAR-{dataset.num_classes} "
                                     f"({dataset.num_classes} class names in its meta file)")
        return _cifar_data(dataset)
    build.__doc__ = f"CIFAR-{num_classes} python pickles under ``root``."
    return build


def _cifar_data(dataset: CifarDataset) -> BenchmarkData:
    return BenchmarkData(dataset, list(dataset.classes),
                         ClassificationEvaluator(topk=_topk(dataset.num_classes)))


# ----------------------------------------------------------------------------- videos
class VideoFramesDataset(Dataset):
    """Frames of every video of a test-mode ``video.data.VideoClipDataset`` as an image sample.

    With ``num_frames=1`` TSN's centred frame of one segment is the middle frame and ``image`` is
    ``[3, H, W]``; with ``T`` frames (one at the centre of each of ``T`` segments) ``image`` is
    ``[T, 3, H, W]`` and :class:`FrameAveragedCLIP` averages their embeddings.

    Args:
        clips: a clip dataset with ``train=False``.
        transform: image transform applied to every PIL frame.
    """

    def __init__(self, clips: Dataset, transform: Callable | None = None):
        if getattr(clips, "train", False):
            raise ValueError("VideoFramesDataset needs a test-mode clip dataset (train=False)")
        self.clips, self.transform = clips, transform
        self.num_frames = int(getattr(clips, "num_frames", 1))

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def num_skipped(self) -> int:
        return self.clips.num_skipped

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.clips[index]  # raises UnreadableSampleError for a broken video: the loader drops it
        frames = [to_pil_image(f.clamp(0, 1)) for f in sample.pop("video")]
        images = [self.transform(f) if self.transform is not None else to_tensor(f) for f in frames]
        sample["image"] = images[0] if self.num_frames == 1 else torch.stack(images)
        return sample


class FrameAveragedCLIP(nn.Module):
    """A CLIP model whose ``encode_image`` also takes frame stacks ``[B, T, 3, H, W]``: the mean of the
    frames' L2-normalised embeddings (then renormalised when asked), so a video is scored from all its
    sampled frames. Text encoding is the wrapped model's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def context_length(self) -> int:
        return getattr(self.model, "context_length", 77)

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if image.dim() != 5:
            return self.model.encode_image(image, normalize=normalize)
        b, t = image.shape[:2]
        feats = self.model.encode_image(image.flatten(0, 1), normalize=True).unflatten(0, (b, t)).mean(dim=1)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.model.encode_text(text, normalize=normalize)


#: ``classInd.txt`` names whose CamelCase split is not OpenAI's spelling (openai/CLIP data/prompts.md,
#: UCF101): its list follows the video file names, ``v_HandStandPushups_*`` in folder ``HandstandPushups``.
UCF101_OPENAI_SPELLING: dict[str, str] = {"HandstandPushups": "Hand Stand Pushups"}


def ucf101_classname(name: str) -> str:
    """``ApplyEyeMakeup`` -> ``Apply Eye Makeup``: OpenAI CLIP's UCF-101 class names (``data/prompts.md``),
    the CamelCase split of the ``classInd.txt`` name except the spellings of :data:`UCF101_OPENAI_SPELLING`.
    """
    if name in UCF101_OPENAI_SPELLING:
        return UCF101_OPENAI_SPELLING[name]
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name.replace("_", " ")).strip()


def _first_existing(*paths: str) -> str | None:
    return next((p for p in paths if os.path.exists(p)), None)


def _ucf101(root: str | os.PathLike, transform: Callable | None = None, split_list: str = "testlist01.txt",
            backend: str = "pyav", num_frames: int = 1) -> BenchmarkData:
    from video.data import VideoClipDataset

    root = str(root)
    lists = _first_existing(os.path.join(root, "ucfTrainTestlist"), root)
    class_ind = os.path.join(lists, "classInd.txt")
    test_list = split_list if os.path.isabs(split_list) else os.path.join(lists, split_list)
    videos = _first_existing(os.path.join(root, "UCF-101"), root)
    for p in (class_ind, test_list):
        if not os.path.isfile(p):
            raise EvalSetLayoutError(f"UCF-101: {p} not found; expected ucfTrainTestlist/classInd.txt and "
                                     f"{split_list} under {root}")
    folders: list[str] = []
    with open(class_ind) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(folders) + 1:
                raise EvalSetLayoutError(f"{class_ind}:{i}: expected '<{len(folders) + 1}> <ClassName>', "
                                         f"got {line.strip()!r}")
            folders.append(parts[1])
    index = {name: i for i, name in enumerate(folders)}
    samples = []
    with open(test_list) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            rel = line.split()[0]  # trainlist lines carry a 1-based label too; the folder names the class
            folder = rel.replace("\\", "/").split("/")[0]
            if folder not in index:
                raise EvalSetLayoutError(f"{test_list}:{i}: class folder {folder!r} is not in {class_ind}")
            samples.append((os.path.join(videos, rel), index[folder]))
    clips = VideoClipDataset(samples, num_frames=num_frames, train=False, backend=backend)
    return BenchmarkData(VideoFramesDataset(clips, transform), [ucf101_classname(n) for n in folders],
                         ClassificationEvaluator(topk=_topk(len(folders))))


def _kinetics(root: str | os.PathLike, transform: Callable | None = None, *, list_file: str = "val.txt",
              classes: str = "classes.txt", videos: str | None = None, split: str | None = "validate",
              backend: str = "pyav", num_frames: int = 1) -> BenchmarkData:
    from video.data import KineticsCsvDataset, KineticsListDataset
    from video.data.kinetics722 import read_class_list

    root = str(root)
    if root.endswith(".csv"):
        class_file = classes if os.path.isabs(classes) else os.path.join(os.path.dirname(root), classes)
        clips = KineticsCsvDataset(root, videos or os.path.dirname(root), split=split,
                                   classes=class_file if os.path.isfile(class_file) else None,
                                   num_frames=num_frames, train=False, backend=backend)
        classnames = list(clips.classes)
    else:
        class_file = classes if os.path.isabs(classes) else os.path.join(root, classes)
        lst = list_file if os.path.isabs(list_file) else os.path.join(root, list_file)
        for p in (class_file, lst):
            if not os.path.isfile(p):
                raise EvalSetLayoutError(f"Kinetics: {p} not found; expected {classes} (class names) and "
                                         f"{list_file} ('relative/path label' lines) in {root}, or a csv")
        classnames = read_class_list(class_file)
        clips = KineticsListDataset(lst, videos or root, num_frames=num_frames, train=False, backend=backend)
        if max(clips.targets) >= len(classnames):
            raise EvalSetLayoutError(f"{lst}: label {max(clips.targets)} but {class_file} names "
                                     f"{len(classnames)} classes")
    return BenchmarkData(VideoFramesDataset(clips, transform), classnames,
                         ClassificationEvaluator(topk=_topk(len(classnames))))


#: key -> spec, in Table 10's column order
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "imagenet": BenchmarkSpec("IN-1K", 78.5, OPENAI_IMAGENET_TEMPLATES, _imagenet_family("imagenet")),
    "imagenet_v2": BenchmarkSpec("IN-V2", 71.5, OPENAI_IMAGENET_TEMPLATES, _imagenet_family("imagenet_v2")),
    "imagenet_a": BenchmarkSpec("IN-Adv.", 73.6, OPENAI_IMAGENET_TEMPLATES, _imagenet_family("imagenet_a")),
    "imagenet_r": BenchmarkSpec("IN-Ren.", 92.5, OPENAI_IMAGENET_TEMPLATES, _imagenet_family("imagenet_r")),
    "imagenet_sketch": BenchmarkSpec("IN-Ske.", 67.3, OPENAI_IMAGENET_TEMPLATES,
                                     _imagenet_family("imagenet_sketch")),
    "objectnet": BenchmarkSpec("ObjectNet", 72.3, OPENAI_IMAGENET_TEMPLATES, _imagenet_family("objectnet")),
    "cifar10": BenchmarkSpec("CIFAR-10", 98.3, CIFAR_TEMPLATES, _cifar(10)),
    "cifar100": BenchmarkSpec("CIFAR-100", 88.7, CIFAR_TEMPLATES, _cifar(100)),
    "ucf101": BenchmarkSpec("UCF-101", 76.1, UCF101_TEMPLATES, _ucf101),
    "kinetics400": BenchmarkSpec("K-400", 65.2, KINETICS_TEMPLATES, _kinetics),
    "kinetics600": BenchmarkSpec("K-600", 64.4, KINETICS_TEMPLATES, _kinetics),
    "kinetics700": BenchmarkSpec("K-700", 58.4, KINETICS_TEMPLATES, _kinetics),
}
assert tuple(BENCHMARKS) == TABLE10_ORDER and all(
    BENCHMARKS[k].paper == PAPER_EVA_CLIP_TOP1[k] for k in TABLE10_ORDER)


def build_benchmark(name: str, root: str | os.PathLike, transform: Callable | None = None,
                    **kwargs: Any) -> BenchmarkData:
    """Adapter ``name`` (a key of :data:`BENCHMARKS`) on the files under ``root``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
        EvalSetLayoutError: the files are not in the expected layout (the message names the path).
    """
    if name not in BENCHMARKS:
        raise KeyError(f"unknown zero-shot benchmark {name!r}; expected one of {list(BENCHMARKS)}")
    return BENCHMARKS[name].build(root, transform, **kwargs)


class ZeroShotLogits(nn.Module):
    """Eval-only model for ``inference_on_dataset``: ``logit_scale * image_features @ class_weights``
    with fixed, precomputed class weights (``clip.zero_shot.ZeroShotClassifier`` rebuilds its weights
    at every eval phase, which is right during training but would rebuild the 1000 x 80 ImageNet
    prompts for each of the six ImageNet sets)."""

    def __init__(self, model: nn.Module, class_weights: torch.Tensor, logit_scale: float = 100.0):
        super().__init__()
        self.model, self.logit_scale = model, float(logit_scale)
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        features = self.model.encode_image(batch["image"], normalize=True)
        return self.logit_scale * features @ self.class_weights.to(features.dtype)


def _default_tokenizer(model: nn.Module) -> Callable:
    import open_clip

    return open_clip.SimpleTokenizer(context_length=getattr(model, "context_length", 77))


def evaluate_benchmark(model: nn.Module, data: BenchmarkData, templates: Sequence, *,
                       tokenizer: Callable | None = None, batch_size: int = 64,
                       class_weights: torch.Tensor | None = None) -> dict[str, Any]:
    """Zero-shot top-1 / top-5 (percent) of a CLIP model on one benchmark.

    Args:
        model: CLIP model with ``encode_image`` / ``encode_text`` (``clip.model.EvaCLIP``, open_clip).
        data: from :func:`build_benchmark`.
        templates: prompt templates for the class names.
        tokenizer: the model's tokenizer (default: open_clip's with the model's context length).
        batch_size: images per forward.
        class_weights: ``[embed_dim, num_classes]`` from :func:`clip.zero_shot.build_zero_shot_classifier`
            for these class names and templates, to reuse (default: built here).
    """
    if not isinstance(model, FrameAveragedCLIP):
        model = FrameAveragedCLIP(model)  # a video set may hand frame stacks
    if class_weights is None:
        was_training = model.training
        model.eval()  # no dropout in the text tower while the class weights are built
        class_weights = build_zero_shot_classifier(model, tokenizer or _default_tokenizer(model),
                                                   data.classnames, templates)
        model.train(was_training)
    if class_weights.shape[1] != len(data.classnames):
        raise ValueError(f"evaluate_benchmark: {class_weights.shape[1]} class weights for "
                         f"{len(data.classnames)} class names")
    return inference_on_dataset(ZeroShotLogits(model, class_weights),
                                build_test_loader(data.dataset, batch_size=batch_size), data.evaluator)


def evaluate_benchmarks(model: nn.Module, roots: Mapping[str, Any], transform: Callable | None, *,
                        tokenizer: Callable | None = None, templates: Sequence | None = None,
                        batch_size: int = 64) -> dict[str, dict[str, Any]]:
    """Run several benchmarks in Table 10's order; returns ``{key: {"top1", "top5", "num_samples", ...}}``.

    Class weights are built once per (class names, templates): the six ImageNet sets share one build.

    Args:
        model: CLIP model.
        roots: ``{key: root}`` or ``{key: {"root": ..., **adapter kwargs}}``.
        transform: image transform of every set (the model's eval transform).
        tokenizer: the model's tokenizer.
        templates: one template list for every set (default: each set's own, :data:`BENCHMARKS`).
        batch_size: images per forward.
    """
    results: dict[str, dict[str, Any]] = {}
    cache: dict[tuple, torch.Tensor] = {}
    model = model if isinstance(model, FrameAveragedCLIP) else FrameAveragedCLIP(model)
    tokenizer = tokenizer or _default_tokenizer(model)
    for key in [k for k in TABLE10_ORDER if k in roots] + [k for k in roots if k not in TABLE10_ORDER]:
        spec = roots[key] if isinstance(roots[key], Mapping) else {"root": roots[key]}
        if "root" not in spec:
            raise KeyError(f"benchmark {key!r}: no 'root' in {dict(spec)}")
        kwargs = {k: v for k, v in spec.items() if k != "root"}
        data = build_benchmark(key, spec["root"], transform, **kwargs)
        temps = list(templates) if templates is not None else list(BENCHMARKS[key].templates)
        ident = (tuple(data.classnames), tuple(map(repr, temps)))
        if ident not in cache:
            was_training = model.training
            model.eval()
            cache[ident] = build_zero_shot_classifier(model, tokenizer, data.classnames, temps)
            model.train(was_training)
        out = evaluate_benchmark(model, data, temps, batch_size=batch_size, class_weights=cache[ident])
        out["num_skipped"] = out.get("num_skipped", getattr(data.dataset, "num_skipped", 0))
        results[key] = out
    return results


def format_table10(top1: Mapping[str, float], label: str = "ours", digits: int = 1) -> str:
    """Paper Table 10's layout: a header of the 12 columns and the average, the paper's EVA-CLIP row and
    ``label``'s row (``-`` where a set was not run; its average is over the sets that were run and says
    how many)."""
    cols = [BENCHMARKS[k].column for k in TABLE10_ORDER] + ["Avg."]
    paper = [f"{PAPER_EVA_CLIP_TOP1[k]:.1f}" for k in TABLE10_ORDER] + [f"{PAPER_EVA_CLIP_AVERAGE:.1f}"]
    ran = [k for k in TABLE10_ORDER if k in top1]
    ours = [f"{float(top1[k]):.{digits}f}" if k in top1 else "-" for k in TABLE10_ORDER]
    avg = sum(float(top1[k]) for k in ran) / len(ran) if ran else None
    ours.append("-" if avg is None else f"{avg:.{digits}f}" + ("" if len(ran) == 12 else f" ({len(ran)}/12)"))
    rows = [["Model"] + cols, ["EVA-CLIP (paper)"] + paper, [label] + ours]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols) + 1)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      line(rows[1]), line(rows[2])])
