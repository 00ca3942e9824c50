"""MetaCLIP sub-string matching: which metadata entries a text contains.

Definition (MetaCLIP's public code): the text is padded to ``" " + text + " "``, each of
``, . ; : ? !`` and the backtick gets a space on both sides, tabs and newlines (``\\t \\n \\r``)
become spaces; entry ``e`` matches when ``" " + e + " "`` is a substring of that normalised
text. Matching is case-sensitive and whole-word; overlapping matches all count; an entry counts
at most once per text.

``match_naive`` states the definition; ``SubstringMatcher`` computes the same with one
Aho-Corasick pass (pyahocorasick) over the text instead of one ``in`` per entry.
"""
from __future__ import annotations

from typing import Sequence

__all__ = ["PUNCTUATION_TO_WRAP", "WHITESPACE_TO_SPACE", "normalize_text", "pad_entry", "match_naive",
           "SubstringMatcher"]

PUNCTUATION_TO_WRAP = (",", ".", ";", ":", "?", "!", "`")
WHITESPACE_TO_SPACE = ("\t", "\n", "\r")


def normalize_text(text: str) -> str:
    """The published normalisation (pad, space out punctuation, tabs/newlines to spaces)."""
    spaced = f" {text} "
    for punct in PUNCTUATION_TO_WRAP:
        spaced = spaced.replace(punct, f" {punct} ")
    for ch in WHITESPACE_TO_SPACE:
        spaced = spaced.replace(ch, " ")
    return spaced


def pad_entry(entry: str) -> str:
    """The pattern an entry must appear as: whole words between spaces."""
    return f" {entry} "


def match_naive(text: str, entries: Sequence[str]) -> list[int]:
    """Ids of the entries that ``text`` contains: the definition, one substring test per entry."""
    spaced = normalize_text(text)
    return [i for i, entry in enumerate(entries) if pad_entry(entry) in spaced]


class SubstringMatcher:
    """Fast matcher with the same results as :func:`match_naive` (pyahocorasick automaton).

    Args:
        entries: metadata entries; an entry's id is its position.
    """

    def __init__(self, entries: Sequence[str]):
        import ahocorasick

        self.num_entries = len(entries)
        self._automaton = ahocorasick.Automaton()
        for entry_id, entry in enumerate(entries):
            # A repeated string keeps its first id, as match_naive would report both; Metadata
            # merges duplicates before they get here, so ids are unique in practice.
            key = pad_entry(entry)
            if key not in self._automaton:
                self._automaton.add_word(key, entry_id)
        self._duplicate_ids = self._find_duplicate_ids(entries)
        self._automaton.make_automaton()

    @staticmethod
    def _find_duplicate_ids(entries: Sequence[str]) -> dict[int, list[int]]:
        first: dict[str, int] = {}
        dups: dict[int, list[int]] = {}
        for i, entry in enumerate(entries):
            if entry in first:
                dups.setdefault(first[entry], []).append(i)
            else:
                first[entry] = i
        return dups

    def match(self, text: str) -> list[int]:
        """Sorted ids of the entries ``text`` contains (each at most once)."""
        if self.num_entries == 0:
            return []
        found = {entry_id for _, entry_id in self._automaton.iter(normalize_text(text))}
        if self._duplicate_ids:
            for entry_id in list(found):
                found.update(self._duplicate_ids.get(entry_id, ()))
        return sorted(found)

    def __call__(self, text: str) -> list[int]:
        return self.match(text)
