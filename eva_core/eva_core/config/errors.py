"""Errors for config files and overrides; each message names the key, the value and the source.

``tools/lazyconfig_train_net.py`` catches :class:`UnknownConfigKeyError` and
:class:`ConfigFileError` (which :class:`ConfigValueError` subclasses) and exits with status 2
before anything is written.
"""
from __future__ import annotations

from typing import Any, Sequence

__all__ = ["UnknownConfigKeyError", "ConfigFileError", "ConfigValueError"]


class UnknownConfigKeyError(KeyError):
    """A config file or an override names a key that does not exist.

    Attributes:
        key: the dotted key.
        suggestions: the closest existing dotted keys (may be empty).
        override: the override text, when the key came from one.
        source: where the key was found (a config file path), when it came from a file.
        detail: what the key was checked against (e.g. the arguments of a ``_target_``).
    """

    def __init__(self, key: str, suggestions: Sequence[str], override: str | None = None, *,
                 source: str | None = None, detail: str | None = None):
        self.key, self.suggestions, self.override = key, list(suggestions), override
        self.source, self.detail = source, detail
        super().__init__(key)

    def __str__(self) -> str:
        where = f" (in override {self.override!r})" if self.override else ""
        where += f" in {self.source}" if self.source else ""
        detail = f": {self.detail}" if self.detail else ""
        if self.suggestions:
            hint = f" Closest known keys: {', '.join(self.suggestions)}."
        elif self.override:
            hint = " No similar key exists; prefix the override with '+' to add a new key."
        else:
            hint = " No similar key exists."
        return f"Unknown config key {self.key!r}{where}{detail}.{hint}"


class ConfigFileError(ValueError):
    """A config file or override could not be read; the message names it and the reason."""


class ConfigValueError(ConfigFileError):
    """A value does not have the type its key takes (``train.max_iter=2.5``).

    Attributes:
        key: the dotted key.
        value: the value that was refused.
        expected: a readable name of the accepted type(s).
        source: the override text or config file the value came from.
    """

    def __init__(self, key: str, value: Any, expected: str, source: str | None = None,
                 hint: str = ""):
        self.key, self.value, self.expected, self.source = key, value, expected, source
        where = f" ({self.source})" if self.source else ""
        super().__init__(f"{key}={value!r}{where}: expected {expected}, got {value!r} "
                         f"({type(value).__name__}){'; ' + hint if hint else ''}")
