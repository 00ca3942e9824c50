"""What ``--resume`` does with a config that differs from the one the run was trained with.

A resumed run restores state that some config entries also describe: the optimizer's groups hold
their learning rates and weight decays, the lr scheduler its base lrs, the data loader its
position in a stream defined by the batch size and seed, every rank its RNG state, the fp16 loss
scaler its scale and growth interval. An override of such an entry would be silently dropped by a
plain ``load_state_dict``. Here each difference between the resumed run's config and the run's
config record in ``train.output_dir`` (``config.yaml``, or the newest ``config_resume_<n>.yaml``)
is either applied exactly, and logged as a WARNING saying how, or refused before anything runs:

============================================  =================================================
``train.max_iter``                            applied: training continues to the new value;
                                              the lr schedule spans the new ``max_iter``, so
                                              from the resumed iteration on every group's lr
                                              is what a fresh run of the new config has there
``optimizer.*`` (lr, weight decay, betas,     applied: group hyperparameters come from the new
layer decay ...)                              config, the optimizer's moments from the
                                              checkpoint (refused under ``train.deepspeed``,
                                              whose engine restores its own groups)
``lr_multiplier.*``                           applied: the schedule is rebuilt from the config
                                              (base lrs from the new ``optimizer``)
``dataloader.train.total_batch_size``,        refused: the saved loader position counts
``dataloader.train.seed``                     batches of the old stream
``train.seed``                                refused: the checkpoint's RNG states continue
                                              the old streams; the seed would never be used
``train.amp.loss_scale.*``                    refused: the loss scaler's saved state wins
``train.init_checkpoint``                     ignored (logged): a resume loads its checkpoint
anything else                                 applied: built from the new config (logged)
============================================  =================================================
"""
from __future__ import annotations

import contextlib
import fnmatch
import logging
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from omegaconf import OmegaConf

__all__ = ["ResumeConfigError", "ConfigChange", "config_record", "resume_config_changes",
           "check_resume_config", "log_resume_changes", "next_resume_record_name",
           "config_hyperparameters_kept"]

logger = logging.getLogger("eva_core.engine")

_RESUME_RECORD = re.compile(r"^config_resume_(\d+)\.yaml$")

# key pattern -> why a resume cannot apply a new value
_REFUSED = {
    "dataloader.train.total_batch_size": "the saved data-loader position counts batches of the old size, "
                                         "so the resumed run would see other samples than the saved one",
    "dataloader.train.seed": "the saved data-loader position belongs to the old seed's sample order",
    "train.seed": "the checkpoint's RNG states continue the saved run's random streams, so the new seed "
                  "would never be used",
    "train.amp.loss_scale.*": "the fp16 loss scaler's saved state (scale, growth interval) is restored",
}
_REFUSED_UNDER_DEEPSPEED = {
    "optimizer.*": "the DeepSpeed engine restores its own optimizer groups (lrs, weight decays)",
}
# key pattern -> how the new value is applied
_APPLIED = {
    "train.max_iter": "training continues to the new max_iter; the lr schedule spans it, so each group's "
                      "lr is what a fresh run of this config has at the resumed iteration",
    "optimizer.*": "group hyperparameters come from this config, the optimizer moments from the checkpoint",
    "lr_multiplier.*": "the lr schedule is rebuilt from this config at the resumed iteration",
    "train.init_checkpoint": "not used: a resume loads its checkpoint",
    "train.output_dir": "same folder, written differently",
}


class ResumeConfigError(ValueError):
    """A resume was asked to change a setting that the checkpoint's state supersedes."""


@dataclass(frozen=True)
class ConfigChange:
    """One leaf of the config that differs from the run's record."""

    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"


def config_record(output_dir: str | Path) -> Path | None:
    """The newest config record of the run in ``output_dir``: the highest
    ``config_resume_<n>.yaml``, else ``config.yaml``; None when there is none."""
    output_dir = Path(output_dir)
    resumes = sorted(((int(m.group(1)), p) for p in output_dir.glob("config_resume_*.yaml")
                      if (m := _RESUME_RECORD.match(p.name))), key=lambda t: t[0])
    if resumes:
        return resumes[-1][1]
    path = output_dir / "config.yaml"
    return path if path.is_file() else None


def next_resume_record_name(output_dir: str | Path) -> str:
    """``config_resume_<n>.yaml`` with ``n`` one above the highest existing one."""
    numbers = [int(m.group(1)) for p in Path(output_dir).glob("config_resume_*.yaml")
               if (m := _RESUME_RECORD.match(p.name))]
    return f"config_resume_{max(numbers, default=0) + 1}.yaml"


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _read_record(path: Path) -> dict[str, Any]:
    # omegaconf's yaml reader, unresolved: interpolations compare as written
    return _flatten(OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {})


def _as_saved(cfg: Any) -> dict[str, Any]:
    """``cfg`` as its yaml record would read (so a .py config and a saved yaml compare alike)."""
    from ..config import LazyConfig

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # placeholders for unserialisable values compare as written
        path = LazyConfig.save(cfg, Path(tmp) / "config.yaml")
        return _read_record(path)


def resume_config_changes(cfg: Any, record: str | Path) -> list[ConfigChange]:
    """Every leaf that differs between ``cfg`` and the saved config ``record`` (sorted by key)."""
    new = _as_saved(cfg)
    old = _read_record(Path(record))
    absent = object()  # a key only one side has differs even when the other side's value is None
    return [ConfigChange(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if old.get(k, absent) != new.get(k, absent)]


def _match(key: str, table: dict[str, str]) -> str | None:
    return next((why for pattern, why in table.items() if fnmatch.fnmatchcase(key, pattern)), None)


def check_resume_config(cfg: Any, output_dir: str | Path | None, *, log: bool = True) -> list[ConfigChange]:
    """Compare the resumed run's ``cfg`` with the run's config record in ``output_dir``.

    Args:
        cfg: the config of the resumed run (before the engine puts live objects into it).
        output_dir: ``train.output_dir``; nothing is compared without a record there.
        log: log one WARNING per applied change, saying how it is applied.

    Returns:
        the changes (all of them applicable).

    Raises:
        ResumeConfigError: a changed key the checkpoint's state supersedes; the message names the
            key, both values, why, and the way out (a new ``train.output_dir`` with
            ``train.init_checkpoint``).
    """
    record = config_record(output_dir) if output_dir else None
    if record is None:
        return []
    changes = resume_config_changes(cfg, record)
    deepspeed = _as_plain(cfg, "train.deepspeed") is not None
    refused = []
    for change in changes:
        why = _match(change.key, _REFUSED)
        if why is None and deepspeed:
            why = _match(change.key, _REFUSED_UNDER_DEEPSPEED)
        if why:
            refused.append(f"{change} ({why})")
    if refused:
        raise ResumeConfigError(
            f"--resume in {output_dir}: the config differs from the run's record {record} in settings the "
            f"checkpoint's state supersedes: {'; '.join(refused)}. Resume with the recorded values, or start "
            f"a new run (another train.output_dir) with train.init_checkpoint set to one of its checkpoints")
    if log:
        log_resume_changes(changes, record)
    return changes


def log_resume_changes(changes: list[ConfigChange], record: str | Path) -> None:
    """One WARNING per change a resume applies, saying how it is applied."""
    for change in changes:
        how = _match(change.key, _APPLIED) or "built from this config"
        logger.warning(f"--resume: {change} differs from {Path(record).name}: {how}")


def _as_plain(cfg: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default=None)


@contextlib.contextmanager
def config_hyperparameters_kept(optimizer: Any, scheduler: Any = None) -> Iterator[None]:
    """Around a checkpoint load: keep the optimizer's group hyperparameters (lr, weight decay,
    betas, ``lr_scale``, ``initial_lr``) as the config built them, and the optimizer's state
    (moments, step counts) as the checkpoint holds it; then set each group's lr to what an
    :class:`~eva_core.optim.LRMultiplier` ``scheduler`` gives at its restored iteration.

    With an unchanged config this reproduces the saved values exactly; with a changed
    ``optimizer.lr`` / ``lr_multiplier`` / ``train.max_iter`` the resumed run follows the new
    config from the resumed iteration on.
    """
    from ..optim.schedulers import LRMultiplier

    # another scheduler keeps its own base lrs in its state: its groups' lrs stay the checkpoint's
    kept = {"params"} if scheduler is None or isinstance(scheduler, LRMultiplier) else {"params", "lr",
                                                                                     "initial_lr"}
    groups = [{k: v for k, v in g.items() if k not in kept} for g in optimizer.param_groups]
    yield
    if len(groups) != len(optimizer.param_groups):  # load_state_dict refuses this already
        raise ResumeConfigError(f"the checkpoint's optimizer has {len(optimizer.param_groups)} parameter "
                                f"groups, the config builds {len(groups)}")
    for group, fresh in zip(optimizer.param_groups, groups):
        group.update(fresh)
    if isinstance(scheduler, LRMultiplier):
        scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        lrs = scheduler.get_lr()
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = list(lrs)
