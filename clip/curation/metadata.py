"""MetaCLIP metadata: the user's JSON list of entry strings, validated once.

Decision on duplicates: an entry listed twice is merged into its first occurrence with a
warning and the number merged is kept (``Metadata.duplicates_merged``, reported in every
summary). Merging loses nothing: an entry counts at most once per text, so a duplicate would
only split the same count over two ids.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Sequence

from clip.curation.matching import PUNCTUATION_TO_WRAP, WHITESPACE_TO_SPACE

__all__ = ["Metadata", "MetadataError", "load_metadata", "can_ever_match"]


class MetadataError(ValueError):
    """The metadata file or list is not a usable list of entry strings."""


def can_ever_match(entry: str) -> bool:
    """Whether ``" " + entry + " "`` can be a substring of any normalised text.

    Normalisation surrounds every wrapped punctuation mark with spaces and turns tabs and
    newlines into spaces, so an entry holding a tab/newline, or a punctuation mark glued to a
    neighbour ("U.S."), never matches under the published definition.
    """
    if any(ch in entry for ch in WHITESPACE_TO_SPACE):
        return False
    padded = f" {entry} "
    for i, ch in enumerate(padded):
        if ch in PUNCTUATION_TO_WRAP and (padded[i - 1] != " " or padded[i + 1] != " "):
            return False
    return True


@dataclass(frozen=True)
class Metadata:
    """Validated metadata entries (entry id = position in ``entries``).

    Attributes:
        entries: unique entry strings in first-seen order.
        source: file the entries came from (or ``"<list>"``).
        duplicates_merged: how many listed strings were duplicates of an earlier entry.
        never_matching: entries that cannot match any text under the published normalisation
            (kept, so ids stay aligned with the file, and reported).
    """

    entries: tuple[str, ...]
    source: str = "<list>"
    duplicates_merged: int = 0
    never_matching: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.entries)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Content hash: ties a count file to the exact metadata it was counted with."""
        digest = hashlib.sha1()
        for entry in self.entries:
            digest.update(entry.encode("utf-8", "surrogatepass"))
            digest.update(b"\x00")
        return digest.hexdigest()

    @classmethod
    def from_list(cls, items: Sequence, source: str = "<list>") -> "Metadata":
        """Validate a list of strings (see the module docstring for duplicates).

        Raises:
            MetadataError: not a list, an empty list, a non-string or an empty/blank entry.
        """
        if not isinstance(items, (list, tuple)):
            raise MetadataError(f"metadata {source}: expected a JSON list of strings, got "
                                f"{type(items).__name__}")
        if not items:
            raise MetadataError(f"metadata {source}: the list is empty; curation needs at least one entry")
        seen: dict[str, int] = {}
        duplicates = 0
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise MetadataError(f"metadata {source}: entry {index} is {type(item).__name__} "
                                    f"{item!r}, expected a string")
            if not item.strip():
                raise MetadataError(f"metadata {source}: entry {index} is empty or blank ({item!r}); "
                                    "an empty entry would match every text")
            if item in seen:
                duplicates += 1
            else:
                seen[item] = index
        if duplicates:
            warnings.warn(f"metadata {source}: {duplicates} duplicate entries merged into their first "
                          "occurrence", stacklevel=2)
        entries = tuple(seen)
        never = tuple(e for e in entries if not can_ever_match(e))
        if never:
            warnings.warn(f"metadata {source}: {len(never)} entries can never match under the published "
                          f"normalisation (punctuation glued to a word, or a tab/newline), e.g. {never[:3]}",
                          stacklevel=2)
        return cls(entries, source, duplicates, never)


def load_metadata(path_or_list: str | os.PathLike | Sequence[str]) -> Metadata:
    """Read the metadata JSON list from a file, or validate an in-memory list.

    Raises:
        MetadataError: unreadable file, invalid JSON or UTF-8, or an invalid list.
    """
    if isinstance(path_or_list, (list, tuple)):
        return Metadata.from_list(path_or_list)
    path = os.fspath(path_or_list)
    try:
        with open(path, encoding="utf-8") as f:
            items = json.load(f)
    except OSError as e:
        raise MetadataError(f"metadata {path}: cannot read: {e}") from e
    except UnicodeDecodeError as e:
        raise MetadataError(f"metadata {path}: not UTF-8 at byte {e.start}: {e.reason}") from e
    except json.JSONDecodeError as e:
        raise MetadataError(f"metadata {path}: invalid JSON at line {e.lineno} column {e.colno}: "
                            f"{e.msg}") from e
    return Metadata.from_list(items, source=path)
