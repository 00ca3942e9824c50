"""Safe reading and atomic writing of checkpoint files.

Reading never executes pickled code unless the caller opts in with ``allow_pickle=True``:
torch files are opened with ``torch.load(weights_only=True)`` plus an explicit allowlist of the
few non-tensor types that real EVA / DeepSpeed / detectron2 checkpoints carry.
Writing goes to a temporary file in the destination folder, is flushed and fsync'ed, then renamed
over the destination, so a crash during a write never damages an existing checkpoint.
"""
from __future__ import annotations

import argparse
import collections
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["load_file", "save_atomic", "CheckpointFormatError", "SAFE_GLOBALS"]


class CheckpointFormatError(ValueError):
    """A checkpoint file could not be read; the message names the file and the reason."""


def _safe_globals() -> list:
    import numpy as np

    allowed: list = [
        argparse.Namespace,  # BEiT / EVA-01 files store their training args
        collections.OrderedDict,
        collections.defaultdict,
        dict,
        set,
        slice,
        np.dtype,
        np.ndarray,
        np.float64,
        np.float32,
        np.int64,
        np.int32,
        np.bool_,
    ]
    for dt in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType", "UInt32DType"):
        t = getattr(np.dtypes, dt, None)
        if t is not None:
            allowed.append(t)
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore
    allowed += [_reconstruct, scalar]
    return allowed


SAFE_GLOBALS = _safe_globals()


def load_file(path: str | os.PathLike, *, allow_pickle: bool = False, map_location: Any = "cpu",
              extra_safe_globals: Sequence[Any] = ()) -> Any:
    """Load a ``.safetensors`` or torch checkpoint file.

    Args:
        path: file to read.
        allow_pickle: opt in to full unpickling (executes arbitrary code from the file). Only for
            files you trust that hold types outside the allowlist.
        map_location: passed to ``torch.load``.
        extra_safe_globals: types allowed in addition to :data:`SAFE_GLOBALS` (e.g. the few
            DeepSpeed classes its optimizer-state files hold).

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointFormatError: the file is truncated, corrupt, or needs unpickling of a type that
            is not allowlisted (the message says how to opt in).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file as st_load

        try:
            return st_load(str(path), device=str(map_location) if isinstance(map_location, str) else "cpu")
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointFormatError(f"{path}: not a readable safetensors file ({e})") from e
    if allow_pickle:
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e:
            raise CheckpointFormatError(f"{path}: could not be read ({type(e).__name__}: {e})") from e
    try:
        with torch.serialization.safe_globals([*SAFE_GLOBALS, *extra_safe_globals]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointFormatError(
            f"{path}: refused to unpickle a type outside the allowlist ({e}). Loading would run "
            "code stored in the file; pass allow_pickle=True (CLI: --allow-pickle) only if you "
            "trust it."
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointFormatError(
            f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {e})") from e


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` to ``path`` atomically (temporary file, fsync, rename).

    ``.safetensors`` paths take a flat ``{name: tensor}`` dict; any other suffix is a torch file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if path.suffix == ".safetensors":
                from safetensors.torch import save as st_save

                f.write(st_save({k: v.detach().contiguous().cpu() for k, v in obj.items()}))
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
