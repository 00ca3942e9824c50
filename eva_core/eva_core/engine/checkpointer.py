"""Checkpoints for exact resume, in detectron2's file layout.

``output_dir`` holds ``model_{iter:07d}.pth`` files, ``model_final.pth`` and a ``last_checkpoint``
text file naming the newest one. A checkpoint holds the model, every registered checkpointable
(optimizer, scheduler, grad scaler, EMA, data loader position), the iteration and the RNG states
of every rank, all as tensors or plain Python types so that it loads with
``torch.load(weights_only=True)``. Files are written only through ``save_atomic`` and
``last_checkpoint`` is updated only after the file is complete, so a crash at any point leaves
the previous checkpoint usable.

In DeepSpeed mode each checkpoint also has a folder ``model_{iter:07d}.deepspeed`` written by the
engine's own ``save_checkpoint`` (every rank writes its ZeRO optimizer shard, fp32 master weights
and loss scaler there). All ranks write it into a ``.model_{iter:07d}.deepspeed.tmp`` folder that
rank 0 renames once complete, before the ``.pth`` file and ``last_checkpoint`` are written; it is
removed together with its ``.pth`` file (``max_to_keep``). DeepSpeed reads that folder through our
:func:`~eva_core.checkpoint.io.load_file` (weights_only + allowlist plus DeepSpeed's own plain data
classes), so resuming runs no pickled code unless ``allow_pickle`` is set.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint.io import CheckpointFormatError, load_file, save_atomic
from ..checkpoint.loader import CheckpointMismatchError, LoadReport
from ..utils import comm

__all__ = ["Checkpointer", "get_rng_state", "set_rng_state", "unwrap_model", "load_model_weights",
           "load_training_weights"]

logger = logging.getLogger("eva_core.engine")

_PERIODIC = re.compile(r"^model_(\d{7})\.(pth|deepspeed)$")
_DEEPSPEED_SUFFIX = ".deepspeed"
_DEEPSPEED_TAG = "state"  # DeepSpeed's sub-folder (its "tag") inside each checkpoint folder


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / DeepSpeed / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def get_rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch and CUDA RNG states as tensors / plain types."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Checkpointer:
    """Saves and restores the complete training state.

    Every rank calls :meth:`save` (ZeRO optimizers consolidate their shards and RNG states are
    gathered collectively); only rank 0 writes.

    Args:
        model: the (unwrapped) model.
        save_dir: folder for checkpoint files; ``None`` disables saving.
        max_to_keep: keep at most this many periodic ``model_{iter}.pth`` files (None: all).
        allow_pickle: let :meth:`load` unpickle types outside the allowlist (trusted files only).
        deepspeed_engine: in DeepSpeed mode, the engine whose model, optimizer and loss-scaler
            state (partitioned per rank under ZeRO) is saved next to each ``.pth`` file.
        **checkpointables: objects with ``state_dict`` / ``load_state_dict`` (optimizer,
            scheduler, scaler, ema, data_loader, ...).
    """

    def __init__(self, model: torch.nn.Module, save_dir: str | None = None, *,
                 max_to_keep: int | None = None, allow_pickle: bool = False,
                 deepspeed_engine: Any = None, **checkpointables: Any):
        self.model = model
        self.deepspeed_engine = deepspeed_engine
        self.save_dir = Path(save_dir) if save_dir else None
        self.max_to_keep = max_to_keep
        self.allow_pickle = allow_pickle
        self.checkpointables = {k: v for k, v in checkpointables.items() if v is not None}
        #: the :class:`~eva_core.checkpoint.LoadReport` of the last model load (None before one)
        self.last_load_report: LoadReport | None = None

    # ---------------------------------------------------------------- saving
    def _consolidated_state(self, name: str, obj: Any) -> dict | None:
        if hasattr(obj, "consolidate_state_dict"):  # torch ZeroRedundancyOptimizer: collective
            obj.consolidate_state_dict(to=0)
            return obj.state_dict() if comm.is_main_process() else None
        return obj.state_dict()

    def collect_state(self, **extra: Any) -> dict[str, Any] | None:
        """The full checkpoint dict on rank 0 (``None`` elsewhere). Collective call."""
        state = {"model": self.model.state_dict()}
        for name, obj in self.checkpointables.items():
            state[name] = self._consolidated_state(name, obj)
        state["rng_states"] = comm.all_gather_object(get_rng_state())  # indexed by rank
        state.update(extra)
        return state if comm.is_main_process() else None

    def save(self, name: str, **extra: Any) -> Path | None:
        """Write ``{save_dir}/{name}.pth`` (rank 0) and point ``last_checkpoint`` at it."""
        state = self.collect_state(**extra)
        if self.deepspeed_engine is not None and self.save_dir is not None:
            self._save_deepspeed_state(name)  # collective; complete before the .pth names it
        if self.save_dir is None or state is None:
            comm.synchronize()
            return None
        path = self.save_dir / f"{name}.pth"
        save_atomic(state, path)
        self.tag_last_checkpoint(path.name)
        self._remove_old_checkpoints()
        logger.info(f"Saved checkpoint {path}")
        comm.synchronize()
        return path

    def deepspeed_dir(self, checkpoint: str | os.PathLike) -> Path:
        """The DeepSpeed state folder that belongs to checkpoint file ``checkpoint``."""
        checkpoint = Path(checkpoint)
        return checkpoint.with_name(checkpoint.stem + _DEEPSPEED_SUFFIX)

    def _save_deepspeed_state(self, name: str) -> None:
        final = self.save_dir / f"{name}{_DEEPSPEED_SUFFIX}"
        tmp = self.save_dir / f".{final.name}.tmp"
        if comm.is_main_process():
            self.save_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        comm.synchronize()
        # every rank writes its own optimizer partition; the call ends with a barrier
        self.deepspeed_engine.save_checkpoint(str(tmp), tag=_DEEPSPEED_TAG, save_latest=False)
        if comm.is_main_process():
            old = self.save_dir / f".{final.name}.old.tmp"
            if final.exists():  # model_final saved again by a resumed run
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        comm.synchronize()

    def save_weights(self, path: str | os.PathLike, module: torch.nn.Module | None = None) -> Path | None:
        """Export only model weights (``.safetensors`` or ``.pth``), rank 0."""
        if not comm.is_main_process():
            return None
        sd = (module or self.model).state_dict()
        if str(path).endswith(".safetensors"):
            # tied weights share storage, which safetensors refuses; export independent copies
            sd = {k: v.detach().clone() for k, v in sd.items()}
        return save_atomic(sd, path)

    def tag_last_checkpoint(self, basename: str) -> None:
        _write_text_atomic(self.save_dir / "last_checkpoint", basename)

    def _remove_old_checkpoints(self) -> None:
        if not self.max_to_keep:
            return
        keep = self.get_checkpoint_file()
        keep = keep.stem if keep is not None else None
        stems = sorted({p.stem for p in self.save_dir.iterdir() if _PERIODIC.match(p.name)})
        for stem in stems[: max(len(stems) - self.max_to_keep, 0)]:
            if stem != keep:
                (self.save_dir / f"{stem}.pth").unlink(missing_ok=True)
                shutil.rmtree(self.save_dir / f"{stem}{_DEEPSPEED_SUFFIX}", ignore_errors=True)

    def remove_stale_temp_files(self) -> None:
        """Delete temporaries left by a process killed in the middle of a write (rank 0)."""
        if self.save_dir is None or not self.save_dir.is_dir() or not comm.is_main_process():
            return
        for p in self.save_dir.glob(".*.tmp"):
            logger.warning(f"Removing incomplete checkpoint write {p}")
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    # --------------------------------------------------------------- loading
    def resume_or_load(self, path: str | os.PathLike | None, *, resume: bool = True,
                       min_loaded: float | str | None = None) -> dict[str, Any]:
        """detectron2's ``resume_or_load``: with ``resume`` and a checkpoint in ``save_dir``,
        restore the complete training state from it; otherwise load only the model weights of
        ``path`` (``train.init_checkpoint``; nothing when empty) through :func:`load_model_weights`,
        refusing a load of fewer tensors than ``min_loaded`` asks. Temporaries left by a killed
        write are removed first. Either load logs one line (file, layout, tensors loaded / total,
        missing, unexpected, shape-mismatched).

        A resume never starts over while a readable checkpoint exists: when the file
        ``last_checkpoint`` names is missing or corrupt, the newest readable ``model_*.pth`` is
        used and a WARNING names both files.

        Returns:
            the unconsumed entries of the resumed checkpoint (``iteration`` among them; resume
            at ``iteration + 1``), or ``{}`` when nothing was resumed.

        Raises:
            CheckpointMismatchError: the weights do not fit the model (resume: any difference;
                ``path``: fewer than ``min_loaded``), naming the file and the first missing keys.
            CheckpointFormatError: no checkpoint of ``save_dir`` is readable, or one holds a type
                outside the unpickling allowlist.
        """
        self.remove_stale_temp_files()
        comm.synchronize()
        if resume and self.has_checkpoint():
            last, state = self._read_newest_readable()
            extra = self._apply_state(state, last)
            logger.info(f"Resumed from {last}: continuing at iteration {int(extra.get('iteration', -1)) + 1}")
            return extra
        if path:
            self.last_load_report = load_model_weights(self.model, path, allow_pickle=self.allow_pickle,
                                                       min_loaded=min_loaded)
        return {}

    def get_checkpoint_file(self) -> Path | None:
        """The checkpoint ``last_checkpoint`` names, or None."""
        if self.save_dir is None:
            return None
        tag = self.save_dir / "last_checkpoint"
        if not tag.is_file():
            return None
        return self.save_dir / tag.read_text().strip()

    def resume_candidates(self) -> list[Path]:
        """The files a resume may start from, in the order it tries them: the one
        ``last_checkpoint`` names, then every other ``model_*.pth`` of ``save_dir``, newest first."""
        if self.save_dir is None or not self.save_dir.is_dir():
            return []
        named = self.get_checkpoint_file()
        others = [p for p in self.save_dir.glob("model_*.pth")
                  if p != named and (p.name == "model_final.pth" or _PERIODIC.match(p.name))]
        others.sort(key=lambda p: (p.stat().st_mtime, p.name), reverse=True)
        return ([named] if named is not None and named.is_file() else []) + others

    def has_checkpoint(self) -> bool:
        """Whether ``save_dir`` holds a checkpoint to resume from."""
        return bool(self.resume_candidates())

    def load(self, path: str | os.PathLike, checkpointables: list[str] | None = None) -> dict[str, Any]:
        """Restore the model and the named checkpointables (all by default) from ``path``.

        Returns the entries of the file that were not consumed (e.g. ``iteration``).

        Raises:
            KeyError: the file is no training checkpoint, or a requested checkpointable is missing.
            CheckpointMismatchError: the model's tensors differ from the file's (names or shapes).
            FileNotFoundError: in DeepSpeed mode, the checkpoint has no DeepSpeed state folder.
        """
        return self._apply_state(self._read(path), path, checkpointables)

    def _read(self, path: str | os.PathLike) -> dict[str, Any]:
        state = load_file(path, allow_pickle=self.allow_pickle)
        if not isinstance(state, dict) or "model" not in state:
            found = sorted(state)[:10] if isinstance(state, dict) else type(state).__name__
            raise KeyError(f"{path}: not a training checkpoint (expected a dict with key 'model', "
                           f"found {found})")
        return state

    def _read_newest_readable(self) -> tuple[Path, dict[str, Any]]:
        """The first of :meth:`resume_candidates` that reads, with its content."""
        named = self.get_checkpoint_file()
        unreadable = []
        for path in self.resume_candidates():
            try:
                state = self._read(path)
            except CheckpointFormatError as e:
                if isinstance(e.__cause__, pickle.UnpicklingError):
                    raise  # the allowlist refused it: a decision for the user, not a damaged file
                logger.warning(f"Cannot resume from {path}: {e}")
                unreadable.append(path)
                continue
            if path != named:
                why = ("is missing" if named is None or not named.is_file() else "is unreadable")
                logger.warning(f"{named if named is not None else self.save_dir / 'last_checkpoint'} {why}: "
                               f"resuming from {path}, the newest readable checkpoint of {self.save_dir}")
            return path, state
        raise CheckpointFormatError(f"--resume: no readable checkpoint in {self.save_dir} (tried "
                                    f"{[p.name for p in unreadable]}); delete them to start over")

    def _apply_state(self, state: dict[str, Any], path: str | os.PathLike,
                     checkpointables: list[str] | None = None) -> dict[str, Any]:
        state = dict(state)
        report = load_training_weights(self.model, state.pop("model"), path)
        names = list(self.checkpointables) if checkpointables is None else checkpointables
        for name in names:
            if name not in state:
                raise KeyError(f"{path}: has no '{name}' state to restore (keys: {sorted(state)})")
            self.checkpointables[name].load_state_dict(state.pop(name))
        if self.deepspeed_engine is not None:
            self._load_deepspeed_state(path)
        self._restore_rng(path, state.pop("rng_states", None))
        self.last_load_report = report
        logger.info(f"Loaded checkpoint {report}")
        return state

    def _load_deepspeed_state(self, path: str | os.PathLike) -> None:
        folder = self.deepspeed_dir(path)
        if not (folder / _DEEPSPEED_TAG).is_dir():
            raise FileNotFoundError(
                f"{path}: DeepSpeed resume needs the engine state folder {folder} (optimizer shards, "
                "fp32 master weights, loss scale), which is missing; a checkpoint of a run without "
                "train.deepspeed can only start a DeepSpeed run through train.init_checkpoint")
        # restores module weights, the (partitioned) optimizer state, fp32 master weights, the loss
        # scaler and DeepSpeed's step counters; the lr schedule is ours (the "scheduler" entry)
        with _safe_deepspeed_reads(self.deepspeed_engine, self.allow_pickle):
            load_path, _ = self.deepspeed_engine.load_checkpoint(
                str(folder), tag=_DEEPSPEED_TAG, load_optimizer_states=True, load_lr_scheduler_states=False)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load its state from {folder}")

    def _restore_rng(self, path: Any, rng_states: list | None) -> None:
        if not rng_states:
            return
        rank, world = comm.get_rank(), comm.get_world_size()
        if len(rng_states) != world:
            logger.warning(f"{path}: RNG states saved by {len(rng_states)} ranks, running on {world}; "
                           "random streams will differ from an uninterrupted run")
        set_rng_state(rng_states[rank % len(rng_states)])


@contextlib.contextmanager
def _safe_deepspeed_reads(engine: Any, allow_pickle: bool):
    """Route every file DeepSpeed reads while resuming through :func:`load_file`.

    DeepSpeed's own checkpoint engine unpickles with ``weights_only=False``; ours reads with
    ``weights_only=True`` and the allowlist unless the user opted in with ``allow_pickle``.
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    # the only non-tensor types DeepSpeed's ZeRO optimizer-state files hold (plain data classes)
    deepspeed_types = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    ckpt_engine = engine.checkpoint_engine
    original = ckpt_engine.load

    def safe_load(path: str, map_location: Any = None) -> Any:
        return load_file(path, allow_pickle=allow_pickle, map_location=map_location or "cpu",
                         extra_safe_globals=deepspeed_types)

    ckpt_engine.load = safe_load
    try:
        yield
    finally:
        ckpt_engine.load = original


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike, allow_pickle: bool = False,
                       min_loaded: float | str | None = None) -> LoadReport:
    """Load the weights of ``path`` (``train.init_checkpoint``, a weights export or a training
    checkpoint) into ``model`` through ``eva_core.load_checkpoint``, which unwraps ``model`` /
    ``module`` / ``model_ema`` / ``state_dict``, maps foreign layouts and finds the encoder under
    any wrapper prefix, and log its one-line report (a WARNING when anything was missing,
    unexpected or shape-mismatched, e.g. the new head of a fine-tuning run).

    Args:
        min_loaded: ``load_checkpoint``'s check: a share of the model's tensors that must load
            (``1.0``: all), ``"encoder"`` (every encoder tensor, a classifier head may be new), or
            None (any overlap).

    Raises:
        CheckpointMismatchError: fewer tensors fit than ``min_loaded`` asks; the message names the
            file and the first missing keys, and nothing was loaded.
    """
    from eva_core import load_checkpoint

    report = load_checkpoint(model, str(path), allow_pickle=allow_pickle, min_loaded=min_loaded)
    logger.log(logging.INFO if report.ok else logging.WARNING, f"Loaded weights {report}")
    return report


def load_training_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor],
                          path: str | os.PathLike) -> LoadReport:
    """Load the ``model`` entry of our own training checkpoint ``path``, which must fit exactly.

    Raises:
        CheckpointMismatchError: a tensor is missing, unexpected or of another shape (the message
            names the file and the first keys); nothing is loaded then.
    """
    target = model.state_dict()
    mismatched = [(k, tuple(v.shape), tuple(target[k].shape)) for k, v in state_dict.items()
                  if k in target and tuple(v.shape) != tuple(target[k].shape)]
    report = LoadReport(
        source=os.fspath(path), layout="training checkpoint", total=len(target),
        loaded=sorted(k for k in state_dict if k in target and k not in {m[0] for m in mismatched}),
        missing=sorted(k for k in target if k not in state_dict),
        unexpected=sorted(k for k in state_dict if k not in target), mismatched=mismatched)
    if not report.ok:
        raise CheckpointMismatchError(
            f"{path}: the checkpoint's model does not fit {type(model).__name__} (a resume restores "
            f"every tensor), first missing: {report.missing[:5]}; {report}")
    model.load_state_dict(state_dict)
    return report
