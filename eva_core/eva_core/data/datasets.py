"""Image datasets that return dicts: class folders, "path label" lists and webdataset shards.

Every dataset returns ``{"image": transform(PIL RGB image), "label": int, "path": str}``
(webdataset samples may carry ``"text"`` instead of / besides ``"label"``). With the default
``transform=None`` the image becomes a float tensor in [0, 1], so the default collate works.

An image that cannot be decoded is skipped. For training, the next readable sample (index + 1,
+ 2, ... modulo the length) replaces it, so the batch keeps its size and the replacement is
deterministic. For evaluation a replacement would count another image twice, so inside
:func:`exclude_unreadable` (which ``build_test_loader`` uses) the read raises
:class:`UnreadableSampleError` instead and the loader drops the sample and counts it. Each skip
increments ``dataset.num_skipped`` (counted in the process that read it: with data-loader
workers, each worker counts its own skips and logs a warning) and logs a warning naming the file.
With ``strict=True`` an unreadable image raises :class:`CorruptImageError` naming the file.
"""
from __future__ import annotations

import glob
import logging
import os
import tarfile
import threading
from contextlib import contextmanager
from typing import Any, Callable, Sequence

from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms.functional import to_tensor

__all__ = ["CorruptImageError", "UnreadableSampleError", "exclude_unreadable", "ListFileError",
           "ImageSampleDataset", "PathLabelDataset", "ImageFolderDataset",
           "FileListDataset", "WebDatasetImages", "read_file_list", "expand_urls"]

logger = logging.getLogger(__name__)

# Errors PIL raises for truncated / corrupt / non-image files (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError)


class CorruptImageError(RuntimeError):
    """An image could not be decoded and the dataset is strict; the message names the file."""


class UnreadableSampleError(CorruptImageError):
    """Raised inside :func:`exclude_unreadable` instead of replacing an unreadable sample.

    Attributes:
        path: the file (or shard member) that could not be decoded.
        index: the dataset index of the sample.
    """

    def __init__(self, path: str, index: int, reason: str):
        self.path, self.index = path, index
        super().__init__(f"cannot decode image {path} (sample {index}): {reason}")


_exclusion = threading.local()


@contextmanager
def exclude_unreadable():
    """Within this block an unreadable image raises :class:`UnreadableSampleError` instead of
    being replaced by the next readable sample (evaluation must not count an image twice).

    The switch is per thread and process, so it reaches a dataset through any wrapper
    (``MaskedImageDataset(ImageFolderDataset(...))``) without changing the dataset object.
    """
    depth = getattr(_exclusion, "depth", 0)
    _exclusion.depth = depth + 1
    try:
        yield
    finally:
        _exclusion.depth = depth


def _excluding_unreadable() -> bool:
    return getattr(_exclusion, "depth", 0) > 0


class ListFileError(ValueError):
    """A list / shard file is malformed; the message names the file and the offending line."""


class ImageSampleDataset(Dataset):
    """Base class: decodes images with skip-and-count (or strict) handling of corrupt files.

    Subclasses implement ``__len__``, ``sample_path(i)``, ``open_image(i) -> PIL.Image`` and
    ``sample_fields(i) -> dict`` (everything but the image).
    """

    def __init__(self, transform: Callable | None = None, *, strict: bool = False):
        self.transform = transform
        self.strict = bool(strict)
        self.num_skipped = 0

    def sample_path(self, index: int) -> str:
        raise NotImplementedError

    def open_image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def sample_fields(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def decode_image(self, index: int) -> Image.Image:
        """Fully decode sample ``index`` as RGB (``convert`` forces the lazy PIL decoder)."""
        with self.open_image(index) as img:
            return img.convert("RGB")

    def _decode_or_skip(self, index: int) -> tuple[int, Image.Image]:
        n = len(self)
        for attempt in range(n):
            j = (index + attempt) % n
            try:
                return j, self.decode_image(j)
            except _DECODE_ERRORS as e:
                if self.strict:
                    raise CorruptImageError(
                        f"cannot decode image {self.sample_path(j)}: {type(e).__name__}: {e}") from e
                self.num_skipped += 1
                if _excluding_unreadable():
                    logger.warning("excluding unreadable image %s (%s: %s)", self.sample_path(j),
                                   type(e).__name__, e)
                    raise UnreadableSampleError(self.sample_path(j), j, f"{type(e).__name__}: {e}") from e
                logger.warning("skipping unreadable image %s (%s: %s); %d skipped so far",
                               self.sample_path(j), type(e).__name__, e, self.num_skipped)
        raise CorruptImageError(f"no readable image in {type(self).__name__} of {n} samples")

    def __getitem__(self, index: int) -> dict[str, Any]:
        j, img = self._decode_or_skip(int(index))
        sample = self.sample_fields(j)
        sample["image"] = self.transform(img) if self.transform is not None else to_tensor(img)
        return sample



class PathLabelDataset(ImageSampleDataset):
    """Base class for datasets whose samples are a list ``self.samples`` of ``(path, label)``."""

    def __init__(self, transform: Callable | None = None, *, strict: bool = False):
        super().__init__(transform, strict=strict)
        self.samples: list[tuple[str, int]] = []

    def __len__(self) -> int:
        return len(self.samples)

    def sample_path(self, index: int) -> str:
        return self.samples[index][0]

    def open_image(self, index: int) -> Image.Image:
        return Image.open(self.samples[index][0])

    def sample_fields(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        return {"label": label, "path": path}

class ImageFolderDataset(PathLabelDataset):
    """Class-folder dataset (``root/<class>/<image>``) using torchvision's folder conventions.

    Classes are the sorted sub-folder names; labels are their positions.

    Args:
        root: dataset folder with one sub-folder per class.
        transform: callable applied to the PIL RGB image.
        strict: make an unreadable image fatal instead of skipped.
        extensions: accepted file extensions (torchvision's ``IMG_EXTENSIONS`` by default).
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, *,
                 strict: bool = False, extensions: Sequence[str] = IMG_EXTENSIONS):
        super().__init__(transform, strict=strict)
        self.root = str(root)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"ImageFolderDataset: root folder not found: {self.root}")
        self.classes, self.class_to_idx = find_classes(self.root)
        self.samples = make_dataset(self.root, self.class_to_idx, extensions=tuple(extensions))
        self.targets = [label for _, label in self.samples]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_file_list(list_file: str | os.PathLike) -> list[tuple[str, int]]:
    """Parse a ``relative/path label`` list (ImageNet-21K / Kinetics style).

    The label is the last whitespace-separated token (so paths may contain spaces); blank lines
    and lines starting with ``#`` are ignored.

    Raises:
        FileNotFoundError: the list file does not exist.
        ListFileError: a line has no integer label; the message names file, line number and text.
    """
    list_file = str(list_file)
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"list file not found: {list_file}")
    entries: list[tuple[str, int]] = []
    with open(list_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
                raise ListFileError(f"{list_file}:{lineno}: expected 'relative/path label' with a "
                                    f"non-negative integer label, got {text!r}")
            entries.append((parts[0], int(parts[1])))
    if not entries:
        raise ListFileError(f"{list_file}: no 'relative/path label' entries found")
    return entries


class FileListDataset(PathLabelDataset):
    """Images listed in a ``relative/path label`` text file, resolved against ``root``.

    Args:
        list_file: text file with one ``relative/path label`` per line.
        root: folder the relative paths are resolved against.
        transform: callable applied to the PIL RGB image.
        strict: make an unreadable (or missing) image fatal instead of skipped.
    """

    def __init__(self, list_file: str | os.PathLike, root: str | os.PathLike,
                 transform: Callable | None = None, *, strict: bool = False):
        super().__init__(transform, strict=strict)
        self.list_file = str(list_file)
        self.root = str(root)
        self.samples = [(os.path.join(self.root, rel), label)
                        for rel, label in read_file_list(self.list_file)]
        self.targets = [label for _, label in self.samples]

    @property
    def num_classes(self) -> int:
        return max(self.targets) + 1


def expand_urls(urls: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expand brace patterns (``shard-{000..009}.tar``) and globs into a sorted-as-given list."""
    import braceexpand

    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    out: list[str] = []
    for item in items:
        for pattern in braceexpand.braceexpand(str(item)):
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            out.extend(matches)
    if not out:
        raise FileNotFoundError(f"no webdataset shards match {urls!r}")
    return out


class WebDatasetImages(ImageSampleDataset):
    """Random-access view of local webdataset tar shards (``key.jpg`` + optional ``key.cls`` /
    ``key.txt``), grouped into samples with webdataset's own key convention.

    The shards are indexed once (member offsets), so the dataset is map-style and works with the
    resumable train loader; members are read by offset on access.

    Args:
        urls: shard path, brace pattern, glob, or a list of them.
        transform: callable applied to the PIL RGB image.
        strict: make an unreadable image fatal instead of skipped.
        image_exts, label_ext, text_ext: member extensions used for the image, integer class and
            caption; a sample without an image member is ignored.
    """

    def __init__(self, urls: str | Sequence[str], transform: Callable | None = None, *,
                 strict: bool = False, image_exts: Sequence[str] = ("jpg", "jpeg", "png", "webp"),
                 label_ext: str = "cls", text_ext: str = "txt"):
        super().__init__(transform, strict=strict)
        self.image_exts = tuple(image_exts)
        self.label_ext, self.text_ext = label_ext, text_ext
        self.shards = expand_urls(urls)
        self.samples: list[tuple[str, str, dict[str, tuple[int, int]]]] = []
        for shard in self.shards:
            self.samples.extend(self._index_shard(shard))
        if not self.samples:
            raise ListFileError(f"no samples with an image member ({', '.join(self.image_exts)}) "
                                f"in shards {self.shards}")

    def _index_shard(self, shard: str) -> list[tuple[str, str, dict[str, tuple[int, int]]]]:
        from webdataset.tariterators import base_plus_ext

        groups: dict[str, dict[str, tuple[int, int]]] = {}
        try:
            with tarfile.open(shard, "r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = base_plus_ext(member.name)
                    if key is None:
                        continue
                    groups.setdefault(key, {})[ext.lower()] = (member.offset_data, member.size)
        except (tarfile.TarError, OSError) as e:
            raise ListFileError(f"cannot read webdataset shard {shard}: {e}") from e
        samples = []
        for key, members in groups.items():
            if any(ext in members for ext in self.image_exts):
                samples.append((shard, key, members))
        return samples

    def _read_member(self, index: int, ext: str) -> bytes:
        shard, _, members = self.samples[index]
        offset, size = members[ext]
        with open(shard, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def __len__(self) -> int:
        return len(self.samples)

    def sample_path(self, index: int) -> str:
        shard, key, members = self.samples[index]
        ext = next(e for e in self.image_exts if e in members)
        return f"{shard}#{key}.{ext}"

    def open_image(self, index: int) -> Image.Image:
        import io

        members = self.samples[index][2]
        ext = next(e for e in self.image_exts if e in members)
        return Image.open(io.BytesIO(self._read_member(index, ext)))

    def sample_fields(self, index: int) -> dict[str, Any]:
        members = self.samples[index][2]
        fields: dict[str, Any] = {"path": self.sample_path(index)}
        if self.label_ext in members:
            raw = self._read_member(index, self.label_ext).decode("utf-8").strip()
            if not raw.lstrip("-").isdigit():
                raise ListFileError(f"{self.sample_path(index)}: .{self.label_ext} member must "
                                    f"hold an integer class, got {raw!r}")
            fields["label"] = int(raw)
        if self.text_ext in members:
            fields["text"] = self._read_member(index, self.text_ext).decode("utf-8").strip()
        return fields
