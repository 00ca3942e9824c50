"""ImageNet-1K evaluation sets in their public folder formats (robustness / transfer evaluation).

Every dataset returns ``{"image", "label", "path", "index"}`` (plus ``"real_labels"`` or
``"objectnet_labels"`` where a sample has a *set* of correct labels); labels are always IN-1K
class indices (timm / torchvision order, i.e. the sorted ImageNet synset ids), so one fine-tuned
1000-way head is scored on all of them. Each dataset knows how it is scored:
``dataset.make_evaluator()`` returns the :class:`~eva_core.evaluation.ClassificationEvaluator`
with the right class subset / multi-label rule.

Expected layouts (``root`` is the folder passed in):

=================  ===========================================================================
ImageNet-1K val    ``root/<wnid>/*.JPEG`` (1000 synset folders, e.g. ``n01440764``)
ImageNet-V2        ``root/<k>/*.jpeg`` with ``k`` = ``0 .. 999`` the IN-1K class index
                   (e.g. ``imagenetv2-matched-frequency-format-val``)
ImageNet-ReaL      the IN-1K val images (``root/<wnid>/ILSVRC2012_val_*.JPEG`` or a flat
                   ``root/ILSVRC2012_val_*.JPEG``) + ``real.json``: a list with one list of
                   IN-1K labels per val image, in sorted file-name order; images whose list is
                   empty are left out of ReaL accuracy
ImageNet-A / -R    ``root/<wnid>/*`` with the 200 synset folders of the subset; logits are
                   restricted to these 200 IN-1K classes
ImageNet-Sketch    ``root/<wnid>/*.JPEG`` (1000 synset folders)
ObjectNet          ``root/images/<objectnet folder>/*.png`` and ``root/mappings/`` with
                   ``folder_to_objectnet_label.json`` (folder -> ObjectNet class name),
                   ``objectnet_to_imagenet_1k.json`` (ObjectNet class -> ``"; "``-separated
                   IN-1K class names), ``imagenet_to_label_2012_v2`` (one IN-1K class name per
                   line, in ImageNet-2012 id order) and ``pytorch_to_imagenet_2012_id.json``
                   (IN-1K index -> line of that file). Only the 113 ObjectNet classes that map
                   to IN-1K are evaluated; a prediction is correct when it is one of the class's
                   mapped IN-1K classes; logits are restricted to all mapped IN-1K classes
=================  ===========================================================================

The class list defaults to timm's bundled IN-1K synsets (``timm/data/_info``); pass
``classes=[...]`` (wnids in label order) for other label spaces such as the toy world.
"""
from __future__ import annotations

import json
import os
import pkgutil
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..data.datasets import PathLabelDataset
from ..evaluation import ClassificationEvaluator

__all__ = ["EvalSetLayoutError", "imagenet_classes", "WnidFolderDataset", "ImageNetVal",
           "ImageNetV2", "ImageNetReaL", "ImageNetA", "ImageNetR", "ImageNetSketch", "ObjectNet",
           "EVAL_SETS", "build_eval_set"]


class EvalSetLayoutError(ValueError):
    """An evaluation set's folder / annotation layout is not the expected one; the message
    names the path and what was expected."""


def imagenet_classes() -> list[str]:
    """The 1000 IN-1K synset ids in label order (timm's bundled ``imagenet_synsets.txt``)."""
    data = pkgutil.get_data("timm.data", "_info/imagenet_synsets.txt")
    return data.decode("utf-8").split()


def _is_image(name: str) -> bool:
    return name.lower().endswith(tuple(IMG_EXTENSIONS))


def _list_images(folder: str) -> list[str]:
    out = []
    for dirpath, _, files in os.walk(folder, followlinks=True):
        out.extend(os.path.join(dirpath, f) for f in files if _is_image(f))
    return sorted(out)


def _subfolders(root: str, set_name: str) -> list[str]:
    if not os.path.isdir(root):
        raise EvalSetLayoutError(f"{set_name}: folder not found: {root}")
    names = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not names:
        raise EvalSetLayoutError(f"{set_name}: {root} has no class sub-folders; expected "
                                 "one folder per class")
    return names


def _multi_hot(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    # A fixed-width 0/1 row (not a ragged list) so torch's default collate can batch it.
    row = torch.zeros(num_classes, dtype=torch.bool)
    row[list(labels)] = True
    return row


class _ListDataset(PathLabelDataset):
    """Shared plumbing of the evaluation sets: ``self.samples`` is a list of ``(path, label)``."""

    set_name = "dataset"

    def sample_fields(self, index: int) -> dict[str, Any]:
        return {**super().sample_fields(index), "index": index}

    def _require_samples(self, root: str) -> None:
        if not self.samples:
            raise EvalSetLayoutError(f"{self.set_name}: no images ({', '.join(IMG_EXTENSIONS)}) "
                                     f"found under {root}")

    def make_evaluator(self, topk: Sequence[int] = (1, 5), prefix: str = "") -> ClassificationEvaluator:
        """The evaluator that scores this set."""
        return ClassificationEvaluator(topk=topk, prefix=prefix)


class WnidFolderDataset(_ListDataset):
    """``root/<wnid>/<image>`` folders labelled by the wnid's position in ``classes``.

    Args:
        root: dataset folder.
        transform: callable applied to the PIL RGB image.
        classes: wnids in label order (default: the 1000 IN-1K synsets).
        strict: an unreadable image raises instead of being skipped.

    Attributes:
        class_subset: sorted label indices of the folders present.
    """

    set_name = "wnid-folder set"

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, *,
                 classes: Sequence[str] | None = None, strict: bool = False) -> None:
        super().__init__(transform, strict=strict)
        self.root = str(root)
        self.classes = list(classes) if classes is not None else imagenet_classes()
        self.num_classes = len(self.classes)
        index = {w: i for i, w in enumerate(self.classes)}
        folders = _subfolders(self.root, self.set_name)
        unknown = [f for f in folders if f not in index]
        if unknown:
            raise EvalSetLayoutError(
                f"{self.set_name}: folders {unknown[:5]}{' ...' if len(unknown) > 5 else ''} in "
                f"{self.root} are not class ids of the {self.num_classes}-class label space; "
                "expected one folder per class named by its wnid (e.g. n01440764)")
        self.class_subset = sorted(index[f] for f in folders)
        for f in folders:
            self.samples += [(p, index[f]) for p in _list_images(os.path.join(self.root, f))]
        self._require_samples(self.root)


class ImageNetVal(WnidFolderDataset):
    """ImageNet-1K validation images in wnid folders."""

    set_name = "ImageNet-1K val"


class ImageNetSketch(WnidFolderDataset):
    """ImageNet-Sketch: wnid folders, scored over all 1000 classes."""

    set_name = "ImageNet-Sketch"


class _SubsetFolderDataset(WnidFolderDataset):
    """A 200-class subset set: logits are restricted to the classes whose folders exist."""

    def make_evaluator(self, topk: Sequence[int] = (1, 5), prefix: str = "") -> ClassificationEvaluator:
        return ClassificationEvaluator(topk=topk, class_subset=self.class_subset, prefix=prefix)


class ImageNetA(_SubsetFolderDataset):
    """ImageNet-A (natural adversarial examples, 200 IN-1K classes)."""

    set_name = "ImageNet-A"


class ImageNetR(_SubsetFolderDataset):
    """ImageNet-R (renditions, 200 IN-1K classes)."""

    set_name = "ImageNet-R"


class ImageNetV2(_ListDataset):
    """ImageNet-V2: ``root/<k>/`` folders named by the IN-1K class index ``k``.

    Args:
        root: e.g. ``imagenetv2-matched-frequency-format-val``.
        transform: callable applied to the PIL RGB image.
        num_classes: size of the label space (folder names must be ``0 .. num_classes-1``).
        strict: an unreadable image raises instead of being skipped.
    """

    set_name = "ImageNet-V2"

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, *,
                 num_classes: int = 1000, strict: bool = False) -> None:
        super().__init__(transform, strict=strict)
        self.root = str(root)
        self.num_classes = int(num_classes)
        for f in _subfolders(self.root, self.set_name):
            # folder names are integers; sort order of the names is irrelevant (label = int(name))
            if not f.isdigit() or not 0 <= int(f) < self.num_classes:
                raise EvalSetLayoutError(
                    f"{self.set_name}: folder {os.path.join(self.root, f)!r} is not a class index "
                    f"0..{self.num_classes - 1}; expected folders named by IN-1K class index")
            self.samples += [(p, int(f)) for p in _list_images(os.path.join(self.root, f))]
        self.samples.sort()
        self._require_samples(self.root)


class ImageNetReaL(_ListDataset):
    """ImageNet-ReaL ("Are we done with ImageNet?") relabelled IN-1K validation set.

    Args:
        root: the IN-1K val images, flat or in wnid folders.
        real_json: the ``real.json`` labels; default ``root/real.json``, else the copy that timm
            bundles (``timm/data/_info/imagenet_real_labels.json``, for the real 50,000-image
            val set).
        transform: callable applied to the PIL RGB image.
        classes: wnids in label order (used when the images are in wnid folders).
        strict: an unreadable image raises instead of being skipped.

    Samples carry ``"real_labels"``: a ``[num_classes]`` bool row of the ReaL labels, and
    ``"label"``: the original label from the wnid folder (``-1`` for a flat folder).
    """

    set_name = "ImageNet-ReaL"

    def __init__(self, root: str | os.PathLike, real_json: str | os.PathLike | None = None,
                 transform: Callable | None = None, *, classes: Sequence[str] | None = None,
                 strict: bool = False) -> None:
        super().__init__(transform, strict=strict)
        self.root = str(root)
        if not os.path.isdir(self.root):
            raise EvalSetLayoutError(f"{self.set_name}: folder not found: {self.root}")
        self.classes = list(classes) if classes is not None else imagenet_classes()
        self.num_classes = len(self.classes)
        real = self._read_real(real_json)
        index = {w: i for i, w in enumerate(self.classes)}
        paths = _list_images(self.root)
        paths.sort(key=os.path.basename)  # real.json follows the val file names, not folders
        if len(paths) != len(real):
            raise EvalSetLayoutError(
                f"{self.set_name}: {self.real_json} has {len(real)} label lists but {self.root} "
                f"holds {len(paths)} images; expected one list per val image in sorted file-name order")
        self.real_labels: list[list[int]] = []
        for p, labels in zip(paths, real):
            folder = os.path.basename(os.path.dirname(p))
            label = index.get(folder, -1) if os.path.dirname(p) != self.root.rstrip(os.sep) else -1
            self.samples.append((p, label))
            self.real_labels.append(labels)
        self._require_samples(self.root)

    def _read_real(self, real_json: str | os.PathLike | None) -> list[list[int]]:
        if real_json is None:
            local = os.path.join(self.root, "real.json")
            if os.path.isfile(local):
                real_json = local
        if real_json is None:
            self.real_json = "timm:_info/imagenet_real_labels.json"
            data = json.loads(pkgutil.get_data("timm.data", "_info/imagenet_real_labels.json"))
        else:
            self.real_json = str(real_json)
            if not os.path.isfile(self.real_json):
                raise EvalSetLayoutError(f"{self.set_name}: labels file not found: {self.real_json}")
            with open(self.real_json) as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise EvalSetLayoutError(f"{self.set_name}: {self.real_json} is not JSON ({e})") from e
        if not isinstance(data, list) or not all(
                isinstance(r, list) and all(isinstance(c, int) and 0 <= c < self.num_classes for c in r)
                for r in data):
            raise EvalSetLayoutError(
                f"{self.set_name}: {self.real_json} must be a list of lists of class indices "
                f"0..{self.num_classes - 1}, one list per val image")
        return data

    def sample_fields(self, index: int) -> dict[str, Any]:
        fields = super().sample_fields(index)
        fields["real_labels"] = _multi_hot(self.real_labels[index], self.num_classes)
        return fields

    def make_evaluator(self, topk: Sequence[int] = (1, 5), prefix: str = "") -> ClassificationEvaluator:
        return ClassificationEvaluator(topk=topk, multi_label_key="real_labels", prefix=prefix)


class ObjectNet(_ListDataset):
    """ObjectNet, scored on its 113 classes that overlap IN-1K (layout in the module docstring).

    Args:
        root: the ``objectnet-1.0`` folder (with ``images/`` and ``mappings/``).
        transform: callable applied to the PIL RGB image.
        mappings_dir: override for ``root/mappings``.
        border_px: pixels cut from each side before the transform: ObjectNet images carry a thin
            red border that is not part of the scene (the public evaluation code crops it).
        num_classes: size of the IN-1K label space.
        strict: an unreadable image raises instead of being skipped.

    Attributes:
        class_subset: sorted IN-1K indices mapped from any ObjectNet class.
        folder_to_labels: ObjectNet folder -> list of IN-1K indices.
    """

    set_name = "ObjectNet"

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, *,
                 mappings_dir: str | os.PathLike | None = None, border_px: int = 2,
                 num_classes: int = 1000, strict: bool = False) -> None:
        super().__init__(transform, strict=strict)
        self.root = str(root)
        self.num_classes = int(num_classes)
        self.border_px = int(border_px)
        if mappings_dir is None:
            mappings_dir = os.path.join(self.root, "mappings")
        self.mappings_dir = str(mappings_dir)
        self.folder_to_labels = self._read_mappings()
        self.class_subset = sorted({c for labels in self.folder_to_labels.values() for c in labels})
        images = os.path.join(self.root, "images")
        present = _subfolders(images, self.set_name)
        self.folder_labels: list[list[int]] = []
        for f in present:
            if f not in self.folder_to_labels:
                continue  # ObjectNet classes without an IN-1K counterpart are not scored
            for p in _list_images(os.path.join(images, f)):
                self.samples.append((p, self.folder_to_labels[f][0]))
                self.folder_labels.append(self.folder_to_labels[f])
        self._require_samples(images)

    def _load(self, name: str) -> Any:
        path = os.path.join(self.mappings_dir, name)
        if not os.path.isfile(path):
            raise EvalSetLayoutError(f"{self.set_name}: mapping file not found: {path}")
        with open(path) as f:
            if not name.endswith(".json"):
                return [line.strip() for line in f if line.strip()]
            try:
                return json.load(f)
            except json.JSONDecodeError as e:
                raise EvalSetLayoutError(f"{self.set_name}: {path} is not JSON ({e})") from e

    def _read_mappings(self) -> dict[str, list[int]]:
        folder_to_name = self._load("folder_to_objectnet_label.json")
        objectnet_to_in1k = self._load("objectnet_to_imagenet_1k.json")
        names_2012 = self._load("imagenet_to_label_2012_v2")
        pytorch_to_2012 = self._load("pytorch_to_imagenet_2012_id.json")
        # IN-1K class name (as spelled in imagenet_to_label_2012_v2) -> IN-1K (pytorch) index
        name_to_index: dict[str, int] = {}
        for k, line in pytorch_to_2012.items():
            line = int(line) if isinstance(line, str) and line.isdigit() else line
            if not (str(k).isdigit() and isinstance(line, int) and 0 <= line < len(names_2012)):
                raise EvalSetLayoutError(
                    f"{self.set_name}: pytorch_to_imagenet_2012_id.json entry {k!r}: {line!r} is not "
                    f"'<IN-1K index>': <line 0..{len(names_2012) - 1} of imagenet_to_label_2012_v2>")
            if int(k) >= self.num_classes:
                raise EvalSetLayoutError(f"{self.set_name}: IN-1K index {k} out of range "
                                         f"0..{self.num_classes - 1}")
            name_to_index[names_2012[line]] = int(k)
        name_to_folder = {v: k for k, v in folder_to_name.items()}
        out: dict[str, list[int]] = {}
        for objectnet_name, in1k_names in objectnet_to_in1k.items():
            if objectnet_name not in name_to_folder:
                raise EvalSetLayoutError(
                    f"{self.set_name}: ObjectNet class {objectnet_name!r} of objectnet_to_imagenet_1k.json "
                    "has no folder in folder_to_objectnet_label.json")
            labels = []
            for n in in1k_names.split("; "):
                if n not in name_to_index:
                    raise EvalSetLayoutError(
                        f"{self.set_name}: IN-1K class name {n!r} (for {objectnet_name!r}) is not a "
                        "line of imagenet_to_label_2012_v2")
                labels.append(name_to_index[n])
            out[name_to_folder[objectnet_name]] = sorted(labels)
        if not out:
            raise EvalSetLayoutError(f"{self.set_name}: objectnet_to_imagenet_1k.json maps no class")
        return out

    def decode_image(self, index: int) -> Image.Image:
        img = super().decode_image(index)
        b = self.border_px
        if b > 0 and img.width > 2 * b and img.height > 2 * b:
            img = img.crop((b, b, img.width - b, img.height - b))
        return img

    def sample_fields(self, index: int) -> dict[str, Any]:
        fields = super().sample_fields(index)
        fields["objectnet_labels"] = _multi_hot(self.folder_labels[index], self.num_classes)
        return fields

    def make_evaluator(self, topk: Sequence[int] = (1, 5), prefix: str = "") -> ClassificationEvaluator:
        return ClassificationEvaluator(topk=topk, class_subset=self.class_subset,
                                       multi_label_key="objectnet_labels", prefix=prefix)


EVAL_SETS: dict[str, type] = {
    "imagenet": ImageNetVal,
    "imagenet_v2": ImageNetV2,
    "imagenet_real": ImageNetReaL,
    "imagenet_a": ImageNetA,
    "imagenet_r": ImageNetR,
    "imagenet_sketch": ImageNetSketch,
    "objectnet": ObjectNet,
}


def build_eval_set(name: str, root: str | os.PathLike, transform: Callable | None = None,
                   **kwargs: Any) -> _ListDataset:
    """Build evaluation set ``name`` (a key of :data:`EVAL_SETS`) from ``root``.

    Raises:
        KeyError: unknown set name (the message lists the known ones).
    """
    if name not in EVAL_SETS:
        raise KeyError(f"unknown evaluation set {name!r}; expected one of {sorted(EVAL_SETS)}")
    return EVAL_SETS[name](root, transform=transform, **kwargs)
