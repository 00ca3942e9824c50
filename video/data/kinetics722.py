"""Kinetics-722: the merged K-400/600/700 training set and its head-row mappings.

``docs/recipes/video.md#kinetics-722``: the union of the three training sets, with every video that
appears in ANY of the three validation sets removed and duplicates removed by YouTube id (the same
video listed by two datasets, or twice with other time ranges). Its classes are the union of the
three class lists after name normalisation (:func:`normalize_class_name`); stage 2 starts each
target head from the K-722 rows of its classes (:func:`init_head_from_k722`).

Inputs, per dataset:

* the official csv (``label,youtube_id,time_start,time_end,split``; the test csv has no label), whose
  clip file name is taken as ``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4`` (the downloaders'
  convention), or
* a ``path label`` list (label: class index into the dataset's class list, or a class name); the
  YouTube id is read from the file name ``{youtube_id}_{start}_{end}.ext`` (ids are 11 characters).
* class lists: one name per line, or the release's ``id,name`` csv.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn as nn

__all__ = [
    "ClipRecord", "Kinetics722", "normalize_class_name", "read_class_list", "read_kinetics_csv",
    "read_kinetics_list", "read_clips", "youtube_id_from_path", "merge_kinetics722", "head_rows",
    "init_head_from_k722", "write_kinetics722",
]

_YTID = re.compile(r"^(?P<yid>[A-Za-z0-9_-]{11})_(?P<start>\d+)_(?P<end>\d+)$")
_CSV_COLUMNS = ("youtube_id", "time_start", "time_end", "split")


@dataclass(frozen=True)
class ClipRecord:
    """One clip of a Kinetics list.

    Attributes:
        path: the clip's file (as listed, or derived from the csv).
        label: normalised class name.
        youtube_id: 11-character YouTube id (the key duplicates and leaks are found by).
        dataset: the list it came from (``"k400"`` ...).
        source: ``file:line`` it was read from (for error messages and audits).
    """

    path: str
    label: str
    youtube_id: str
    dataset: str
    source: str


def normalize_class_name(name: str) -> str:
    """The name classes are matched by across K-400/600/700.

    Lower case, surrounding quotes and spaces removed, ``_`` read as a space, runs of spaces collapsed:
    the lists spell the same class ``"passing American football (in game)"`` /
    ``passing_american_football_(in_game)``. Nothing else is changed (no synonyms are merged).
    """
    name = name.strip().strip('"').strip("'").replace("_", " ").lower()
    return " ".join(name.split())


def _fail(path: str | os.PathLike, line: int, why: str) -> ValueError:
    return ValueError(f"{os.fspath(path)}:{line}: {why}")


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Normalised class names in index order: one per line, or an ``id,name`` csv (ids 0..C-1 in order).

    Raises:
        ValueError: an empty name, a non-integer or out-of-order id, or a repeated class, naming the line.
    """
    names: list[str] = []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    is_csv = bool(rows) and len(rows[0]) == 2 and rows[0][0].strip().lower() == "id"
    for i, row in enumerate(rows[1:] if is_csv else rows, start=2 if is_csv else 1):
        if not row or not "".join(row).strip():
            continue
        if is_csv:
            if len(row) != 2 or not row[0].strip().isdigit():
                raise _fail(path, i, f"expected 'id,name', got {','.join(row)!r}")
            if int(row[0]) != len(names):
                raise _fail(path, i, f"id {row[0]} out of order (expected {len(names)})")
            name = normalize_class_name(row[1])
        else:
            name = normalize_class_name(",".join(row))
        if not name:
            raise _fail(path, i, "empty class name")
        if name in names:
            raise _fail(path, i, f"class {name!r} listed twice (first at index {names.index(name)})")
        names.append(name)
    if not names:
        raise ValueError(f"{os.fspath(path)}: no class names")
    return names


def youtube_id_from_path(path: str) -> str | None:
    """The YouTube id of a clip file named ``{youtube_id}_{start}_{end}.ext``, or None."""
    stem = Path(path).name.split(".")[0]
    m = _YTID.match(stem)
    return m.group("yid") if m else None


def read_kinetics_csv(path: str | os.PathLike, dataset: str, split: str | None = None) -> list[ClipRecord]:
    """Clips of an official Kinetics csv, optionally only rows of one ``split`` (``train``/``validate``).

    Raises:
        ValueError: a missing column, a row with missing fields, non-integer times or an 11-character id
            violation, naming the file and line.
    """
    out = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in _CSV_COLUMNS if c not in cols]
        if missing:
            expected = ", ".join(("label",) + _CSV_COLUMNS)
            raise _fail(path, 1, f"missing column(s) {missing}; expected {expected}")
        for i, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
            if None in row.values() or any(not row.get(c) for c in _CSV_COLUMNS):
                raise _fail(path, i, f"row has empty fields: {row}")
            if split is not None and row["split"] != split:
                continue
            yid = row["youtube_id"]
            if not re.fullmatch(r"[A-Za-z0-9_-]{11}", yid):
                raise _fail(path, i, f"youtube_id {yid!r} is not an 11-character YouTube id")
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except ValueError:
                raise _fail(path, i, f"time_start / time_end must be numbers, got {row['time_start']!r}, "
                                     f"{row['time_end']!r}") from None
            label = normalize_class_name(row.get("label", ""))
            if not label and row["split"] != "test":
                raise _fail(path, i, "empty label")
            out.append(ClipRecord(f"{yid}_{start:06d}_{end:06d}.mp4", label, yid, dataset, f"{path}:{i}"))
    return out


def read_kinetics_list(path: str | os.PathLike, dataset: str,
                       classes: Sequence[str] | None = None) -> list[ClipRecord]:
    """Clips of a ``path label`` list (label: index into ``classes`` or a class name).

    Raises:
        ValueError: a line without two fields, an index without ``classes`` or out of range, or a file
            name without a YouTube id, naming the file and line.
    """
    out = []
    with open(path) as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.strip().rsplit(maxsplit=1)
            if len(parts) != 2:
                raise _fail(path, i, f"expected 'path label', got {line.strip()!r}")
            clip, label = parts
            if label.lstrip("-").isdigit():
                if classes is None:
                    raise _fail(path, i, f"label {label} is an index but no class list was given "
                                         f"for {dataset}")
                idx = int(label)
                if not 0 <= idx < len(classes):
                    raise _fail(path, i, f"label {idx} out of range for {len(classes)} {dataset} classes")
                name = classes[idx]
            else:
                name = normalize_class_name(label)
            yid = youtube_id_from_path(clip)
            if yid is None:
                raise _fail(path, i, f"cannot read a YouTube id from {clip!r}; expected a file named "
                                     "{youtube_id}_{start}_{end}.ext")
            out.append(ClipRecord(clip, name, yid, dataset, f"{path}:{i}"))
    return out


def read_clips(path: str | os.PathLike, dataset: str, split: str, classes: Sequence[str] | None = None
               ) -> list[ClipRecord]:
    """A ``.csv`` (official, rows of ``split``) or a ``path label`` list."""
    if os.fspath(path).endswith(".csv"):
        return read_kinetics_csv(path, dataset, split=split)
    return read_kinetics_list(path, dataset, classes)


@dataclass
class Kinetics722:
    """The merge result.

    Attributes:
        classes: K-722 class names (sorted), index = label.
        train: kept clips (first occurrence of each YouTube id, in input order).
        removed_leaks: training clips whose YouTube id is in a validation set.
        removed_duplicates: training clips whose YouTube id was already kept.
        head_rows: ``{dataset: [K-722 row of each of its classes]}``.
    """

    classes: list[str]
    train: list[ClipRecord]
    removed_leaks: list[ClipRecord]
    removed_duplicates: list[ClipRecord]
    head_rows: dict[str, list[int]]

    def label_of(self, clip: ClipRecord) -> int:
        return self.classes.index(clip.label)


def merge_kinetics722(
    train: Mapping[str, Iterable[ClipRecord]],
    val: Mapping[str, Iterable[ClipRecord]],
    classes: Mapping[str, Sequence[str]] | None = None,
) -> Kinetics722:
    """Merge training sets, drop validation leaks and duplicate YouTube ids, build labels and head rows.

    Args:
        train: ``{dataset: training clips}``; earlier datasets win duplicates (pass K-400, 600, 700).
        val: ``{dataset: validation clips}``; every YouTube id in any of them is removed from training.
        classes: ``{dataset: class names in head order}`` for the head-row mappings (default: each
            dataset's sorted training labels, the official label order).

    Raises:
        ValueError: a target dataset has a class the K-722 label set lacks.
    """
    val_ids = {c.youtube_id for clips in val.values() for c in clips}
    kept, leaks, dups, seen = [], [], [], set()
    per_dataset_labels: dict[str, set[str]] = {}
    for name, clips in train.items():
        labels = per_dataset_labels.setdefault(name, set())
        for c in clips:
            labels.add(c.label)
            if c.youtube_id in val_ids:
                leaks.append(c)
            elif c.youtube_id in seen:
                dups.append(c)
            else:
                seen.add(c.youtube_id)
                kept.append(c)
    class_lists = {k: list(v) for k, v in (classes or {}).items()}
    for name, labels in per_dataset_labels.items():
        class_lists.setdefault(name, sorted(labels))
    union = sorted(set().union(*per_dataset_labels.values(), *map(set, class_lists.values())))
    index = {n: i for i, n in enumerate(union)}
    rows = {}
    for name, names in class_lists.items():
        absent = [n for n in names if n not in index]
        if absent:
            raise ValueError(f"{name}: classes {absent[:5]} are not K-722 classes")
        rows[name] = [index[n] for n in names]
    return Kinetics722(union, kept, leaks, dups, rows)


def head_rows(k722_classes: Sequence[str], target_classes: Sequence[str]) -> list[int]:
    """The K-722 row of each target class (target order), matching normalised names.

    Raises:
        ValueError: a target class is not a K-722 class, naming it.
    """
    index = {normalize_class_name(n): i for i, n in enumerate(k722_classes)}
    absent = [n for n in target_classes if normalize_class_name(n) not in index]
    if absent:
        raise ValueError(f"target classes {absent[:5]} are not among the {len(k722_classes)} K-722 classes")
    return [index[normalize_class_name(n)] for n in target_classes]


def init_head_from_k722(k722_head: nn.Linear | Mapping[str, torch.Tensor], rows: Sequence[int]) -> nn.Linear:
    """A target-dataset head whose class ``i`` is row ``rows[i]`` of the K-722 head (weight and bias).

    Args:
        k722_head: the stage-1 ``nn.Linear`` or its state dict (``weight``, ``bias``).
        rows: from :func:`head_rows` or the tool's ``k722_to_<dataset>.json``.

    Raises:
        ValueError: a row outside the K-722 head.
    """
    sd = k722_head.state_dict() if isinstance(k722_head, nn.Module) else k722_head
    weight, bias = sd["weight"], sd.get("bias")
    bad = [r for r in rows if not 0 <= int(r) < weight.shape[0]]
    if bad:
        raise ValueError(f"rows {bad[:5]} outside the K-722 head of {weight.shape[0]} classes")
    idx = torch.as_tensor([int(r) for r in rows], dtype=torch.long)
    head = nn.Linear(weight.shape[1], len(idx), bias=bias is not None, device=weight.device,
                     dtype=weight.dtype)
    with torch.no_grad():
        head.weight.copy_(weight[idx])
        if bias is not None:
            head.bias.copy_(bias[idx])
    return head


def write_kinetics722(result: Kinetics722, out_dir: str | os.PathLike) -> dict[str, int]:
    """Write ``k722_train.txt`` (``path label``), ``k722_classes.txt``, ``k722_to_<dataset>.json`` per
    dataset, ``removed.txt`` (each removed clip, why and where it was listed) and ``summary.json``.

    Returns:
        The summary counts.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = {n: i for i, n in enumerate(result.classes)}
    (out / "k722_train.txt").write_text("".join(f"{c.path} {index[c.label]}\n" for c in result.train))
    (out / "k722_classes.txt").write_text("".join(f"{n}\n" for n in result.classes))
    for name, rows in result.head_rows.items():
        (out / f"k722_to_{name}.json").write_text(json.dumps(rows))
    removed = [f"leak {c.youtube_id} {c.source}\n" for c in result.removed_leaks]
    removed += [f"duplicate {c.youtube_id} {c.source}\n" for c in result.removed_duplicates]
    (out / "removed.txt").write_text("".join(removed))
    summary = {"train_clips": len(result.train), "classes": len(result.classes),
               "removed_validation_leaks": len(result.removed_leaks),
               "removed_duplicates": len(result.removed_duplicates)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
