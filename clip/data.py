"""Image-caption datasets for contrastive training through the engine (``docs/recipes/clip.md#caption-data``).

Two on-disk formats, both map-style so that :func:`eva_core.data.build_train_loader` shuffles,
shards and resumes them exactly (a resumed run sees the batches an uninterrupted one would, mid-epoch
included, because a stream position names a sample, not a reader state):

- :class:`CaptionWebDataset`: webdataset tar shards in LAION layout (``key.jpg`` + ``key.txt``, or
  ``key.json`` with a ``caption`` field), indexed once by eva_core's
  :class:`~eva_core.data.WebDatasetImages` and read by member offset.
- :class:`CaptionCsvDataset`: a csv with an image path column (``filepath``) and a caption column
  (``caption``), paths relative to the csv's folder (open_clip's ``--csv-img-key`` /
  ``--csv-caption-key`` convention).

Each sample is ``{"image": transform(PIL RGB), "text": LongTensor[context_length], "caption": str,
"path": str}``: the keys :class:`clip.model.EvaCLIP` trains on. A corrupt sample (image that does not
decode, caption that is missing, empty, not UTF-8, or bad JSON) is skipped and counted in
``dataset.num_skipped`` with a warning naming the shard member or file, as eva_core's image datasets
do for images (training reads the next readable sample instead; ``strict=True`` makes it fatal).
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from eva_core.data.datasets import ListFileError, PathLabelDataset, WebDatasetImages

__all__ = ["CorruptCaptionError", "CaptionWebDataset", "CaptionCsvDataset", "tokenize_one",
           "online_curated_captions"]


class CorruptCaptionError(ValueError):
    """A sample's caption is missing, empty, not UTF-8 or bad JSON; the message names the sample.

    A ``ValueError`` so that eva_core's decode-or-skip path counts it like an undecodable image.
    """


def tokenize_one(tokenizer: Callable, caption: str) -> torch.Tensor:
    """Token ids ``LongTensor[context_length]`` of one caption (open_clip tokenizers batch)."""
    return tokenizer([caption])[0]


class _CaptionMixin:
    """Reads the caption together with the image, so a bad caption is skipped like a bad image."""

    tokenizer: Callable | None

    def read_caption(self, index: int) -> str:
        raise NotImplementedError

    def decode_image(self, index: int) -> Image.Image:
        self.read_caption(index)  # raises CorruptCaptionError -> counted skip (or fatal if strict)
        return super().decode_image(index)

    def sample_fields(self, index: int) -> dict[str, Any]:
        caption = self.read_caption(index)
        fields = {"caption": caption, "path": self.sample_path(index)}
        if self.tokenizer is not None:
            fields["text"] = tokenize_one(self.tokenizer, caption)
        return fields


class CaptionWebDataset(_CaptionMixin, WebDatasetImages):
    """Webdataset tar shards in LAION layout as image-caption pairs.

    Args:
        urls: shard path, brace pattern (``shards/{000000..000009}.tar``), glob, or a list of them.
        transform: callable applied to the PIL RGB image.
        tokenizer: open_clip-style tokenizer (``tok(list_of_str) -> LongTensor[N, context_length]``);
            ``None`` leaves only the raw ``caption``.
        strict: make a corrupt sample fatal instead of skipped.
        caption_exts: member extensions tried in order: ``txt`` holds the caption as UTF-8 text,
            ``json`` a JSON object with a ``caption`` string (LAION's img2dataset output).

    Raises:
        ListFileError: a shard cannot be read or holds no image.
    """

    def __init__(self, urls: str | Sequence[str], transform: Callable | None = None,
                 tokenizer: Callable | None = None, *, strict: bool = False,
                 caption_exts: Sequence[str] = ("txt", "json")):
        super().__init__(urls, transform, strict=strict)
        self.tokenizer = tokenizer
        self.caption_exts = tuple(caption_exts)

    def read_caption(self, index: int) -> str:
        members = self.samples[index][2]
        ext = next((e for e in self.caption_exts if e in members), None)
        where = self.sample_path(index)
        if ext is None:
            raise CorruptCaptionError(f"{where}: no caption member (.{' / .'.join(self.caption_exts)})")
        raw = self._read_member(index, ext)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CorruptCaptionError(f"{where}: .{ext} caption is not UTF-8 ({e})") from e
        if ext == "json":
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise CorruptCaptionError(f"{where}: .json is not valid JSON ({e})") from e
            text = record.get("caption") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise CorruptCaptionError(f"{where}: .json has no 'caption' string")
        text = text.strip()
        if not text:
            raise CorruptCaptionError(f"{where}: empty caption in .{ext}")
        return text


class CaptionCsvDataset(_CaptionMixin, PathLabelDataset):
    """Image-caption pairs listed in a csv file (open_clip's ``CsvDataset`` layout).

    Args:
        csv_file: csv with a header row.
        transform: callable applied to the PIL RGB image.
        tokenizer: open_clip-style tokenizer, or ``None`` for raw captions only.
        root: folder that relative image paths are resolved against (default: the csv's folder).
        img_key, caption_key: column names of the image path and the caption.
        strict: make a corrupt sample fatal instead of skipped.

    Raises:
        FileNotFoundError: the csv does not exist.
        ListFileError: a column is missing or the csv has no rows.
    """

    def __init__(self, csv_file: str | os.PathLike, transform: Callable | None = None,
                 tokenizer: Callable | None = None, *, root: str | os.PathLike | None = None,
                 img_key: str = "filepath", caption_key: str = "caption", strict: bool = False):
        super().__init__(transform, strict=strict)
        self.csv_file = str(csv_file)
        if not os.path.isfile(self.csv_file):
            raise FileNotFoundError(f"caption csv not found: {self.csv_file}")
        self.root = str(root) if root is not None else os.path.dirname(os.path.abspath(self.csv_file))
        self.tokenizer = tokenizer
        with open(self.csv_file, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [k for k in (img_key, caption_key) if k not in (reader.fieldnames or [])]
            if missing:
                raise ListFileError(f"{self.csv_file}: missing column(s) {missing}; header is "
                                    f"{reader.fieldnames}")
            self.samples = [(os.path.join(self.root, row[img_key]), row[caption_key] or "")
                            for row in reader]
        if not self.samples:
            raise ListFileError(f"{self.csv_file}: no rows")

    # samples are (path, caption): PathLabelDataset's length, path and image reading apply as they are
    def read_caption(self, index: int) -> str:
        text = self.samples[index][1].strip()
        if not text:
            raise CorruptCaptionError(f"{self.csv_file} row {index + 1}: empty caption for "
                                      f"{self.samples[index][0]}")
        return text


def online_curated_captions(dataset: CaptionWebDataset, metadata: str | os.PathLike | Sequence[str],
                            threshold: float, *, num_draws: int, seed: int = 0, workers: int = 1):
    """MetaCLIP online curation of a caption webdataset for the train loader: a fresh draw per epoch.

    The count pass runs over the dataset's shards (:func:`clip.curation.passes.count_pool`); each text
    is matched once (:class:`clip.curation.online.CuratedIndex`), and the balanced draws of curation
    epochs ``0 .. num_draws - 1`` are laid end to end (:class:`clip.curation.online.CuratedDrawsDataset`)
    so that eva_core's resumable loader shuffles and resumes them like any map-style dataset. A sample
    whose caption is corrupt is never drawn (it is counted in ``dataset.num_skipped``).

    Args:
        dataset: the raw pool.
        metadata: MetaCLIP metadata: a JSON file of strings or a list of strings.
        threshold: ``t`` (``p_e = min(1, t / count_e)``).
        num_draws: curation epochs to lay end to end (enough for ``max_iter * batch`` samples; the
            loader starts over after ``len(result)`` samples).
        seed: the draws' seed.
        workers: processes for the count pass.

    Returns:
        A :class:`~clip.curation.online.CuratedDrawsDataset` over ``dataset``.
    """
    from clip.curation.metadata import load_metadata
    from clip.curation.online import CuratedDrawsDataset, CuratedIndex, OnlineCurator
    from clip.curation.passes import count_pool

    meta = load_metadata(metadata)
    counts = count_pool(dataset.shards, meta, workers=workers)
    items = []
    for i, (shard, key, _) in enumerate(dataset.samples):
        try:
            text = dataset.read_caption(i)
        except CorruptCaptionError:
            text = ""  # matches no entry: never drawn
            dataset.num_skipped += 1
        items.append((shard, key, text))
    index = CuratedIndex(items, OnlineCurator(meta, counts.counts, threshold, seed))
    return CuratedDrawsDataset(dataset, index, num_draws)
