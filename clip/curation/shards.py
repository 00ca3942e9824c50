"""Reading the texts of one shard: the unit of work of every curation pass.

A shard is one file of texts:

- ``.txt``: one caption per line; key = line number (0-based).
- ``.jsonl``: one JSON object per line with the caption under ``text_field`` (default
  ``caption``, else ``text``); key = line number.
- ``.csv``: a header row with a caption column (``text_field``, default ``caption``, else
  ``text``); key = data-row number (0-based).
- ``.tar``: webdataset (LAION layout) -- ``key.jpg`` + ``key.txt`` or ``key.json`` with a
  ``caption`` field; key = the webdataset sample key.

Nothing is dropped silently: a sample that cannot be read (bytes that are not UTF-8, a bad JSON
line, a missing caption, an empty caption) is a counted skip in :class:`ShardSkips`, with the
first keys listed; a shard that cannot be opened or parsed at all raises :class:`ShardError`
naming the file.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

__all__ = ["ShardError", "ShardSkips", "SHARD_EXTENSIONS", "iter_shard_texts"]

SHARD_EXTENSIONS = (".txt", ".jsonl", ".csv", ".tar")
_EXAMPLES_KEPT = 5


class ShardError(RuntimeError):
    """A whole shard cannot be read (missing, unreadable, corrupt, unknown format)."""


@dataclass
class ShardSkips:
    """Samples of one shard that were skipped, by reason, with the first few keys of each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, key: str) -> None:
        self.counts[reason] += 1
        keys = self.examples.setdefault(reason, [])
        if len(keys) < _EXAMPLES_KEPT:
            keys.append(key)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {"counts": dict(self.counts), "examples": self.examples}


def _decode(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _has_surrogates(text: str) -> bool:
    # surrogateescape turns undecodable bytes into lone surrogates; valid UTF-8 never yields them
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ShardError(f"shard {path}: cannot read: {e}") from e


def _iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    data = _read_bytes(path)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final newline ends the last line; it does not start an empty one
    for index, line in enumerate(lines):
        yield index, line.rstrip(b"\r")


def _iter_txt(path: str, skips: ShardSkips, text_field: str | None) -> Iterator[tuple[str, str]]:
    for index, line in _iter_lines(path):
        key = str(index)
        text = _decode(line)
        if text is None:
            skips.add("non_utf8", key)
        elif not text.strip():
            skips.add("empty_text", key)
        else:
            yield key, text


def _caption_from_obj(obj, text_field: str | None) -> str | None:
    if not isinstance(obj, dict):
        return None
    names = (text_field,) if text_field else ("caption", "text")
    for name in names:
        value = obj.get(name)
        if isinstance(value, str):
            return value
    return None


def _iter_jsonl(path: str, skips: ShardSkips, text_field: str | None) -> Iterator[tuple[str, str]]:
    for index, line in _iter_lines(path):
        key = str(index)
        raw = _decode(line)
        if raw is None:
            skips.add("non_utf8", key)
            continue
        if not raw.strip():
            skips.add("empty_line", key)
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            skips.add("bad_json", key)
            continue
        text = _caption_from_obj(obj, text_field)
        if text is None:
            skips.add("no_caption", key)
        elif not text.strip():
            skips.add("empty_text", key)
        else:
            yield key, text


def _iter_csv(path: str, skips: ShardSkips, text_field: str | None) -> Iterator[tuple[str, str]]:
    content = _read_bytes(path).decode("utf-8", "surrogateescape")
    reader = csv.reader(io.StringIO(content, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ShardError(f"shard {path}: empty csv (no header row)") from None
    except csv.Error as e:
        raise ShardError(f"shard {path}: cannot parse csv header: {e}") from e
    names = (text_field,) if text_field else ("caption", "text")
    column = next((header.index(n) for n in names if n in header), None)
    if column is None:
        raise ShardError(f"shard {path}: no caption column; expected one of {list(names)} in header {header}")
    index = -1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise ShardError(f"shard {path}: cannot parse csv after row {index}: {e}") from e
        index += 1
        key = str(index)
        if column >= len(row):
            skips.add("no_caption", key)
            continue
        text = row[column]
        if _has_surrogates(text):
            skips.add("non_utf8", key)
        elif not text.strip():
            skips.add("empty_text", key)
        else:
            yield key, text


def _iter_tar(path: str, skips: ShardSkips, text_field: str | None) -> Iterator[tuple[str, str]]:
    from webdataset.tariterators import base_plus_ext

    groups: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = base_plus_ext(member.name)
                if key is None:
                    continue
                ext = ext.lower()
                members = groups.setdefault(key, {})
                # Only captions are read; images are listed so a caption-less image is counted.
                if ext in ("txt", "json"):
                    members[ext] = tar.extractfile(member).read()
                else:
                    members.setdefault(ext, b"")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ShardError(f"shard {path}: cannot read webdataset tar: {e}") from e
    for key, members in groups.items():
        if "txt" in members:
            text = _decode(members["txt"])
            if text is None:
                skips.add("non_utf8", key)
                continue
        elif "json" in members:
            raw = _decode(members["json"])
            if raw is None:
                skips.add("non_utf8", key)
                continue
            try:
                text = _caption_from_obj(json.loads(raw), text_field)
            except json.JSONDecodeError:
                skips.add("bad_json", key)
                continue
            if text is None:
                skips.add("no_caption", key)
                continue
        else:
            skips.add("no_caption", key)
            continue
        if not text.strip():
            skips.add("empty_text", key)
        else:
            yield key, text


_READERS = {".txt": _iter_txt, ".jsonl": _iter_jsonl, ".csv": _iter_csv, ".tar": _iter_tar}


def iter_shard_texts(path: str | os.PathLike, skips: ShardSkips, *,
                     text_field: str | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(key, text)`` for every readable sample of one shard, in file order.

    Args:
        path: shard file (``.txt``, ``.jsonl``, ``.csv`` or webdataset ``.tar``).
        skips: collects the samples that were skipped and why.
        text_field: caption field/column name (default: ``caption``, else ``text``).

    Raises:
        ShardError: the shard is missing, unreadable, corrupt, or of an unknown format.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    reader = _READERS.get(ext)
    if reader is None:
        raise ShardError(f"shard {path}: unknown format {ext!r}; expected one of {list(SHARD_EXTENSIONS)}")
    if not os.path.isfile(path):
        raise ShardError(f"shard {path}: no such file")
    return reader(path, skips, text_field)
