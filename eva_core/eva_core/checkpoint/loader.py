"""``load_checkpoint``: weights of any registered layout into any EVA model.

Reads through :func:`eva_core.checkpoint.io.load_file` (no pickled code runs unless
``allow_pickle=True``), unwraps it (:func:`.layouts.unwrap_state_dict`), maps the layout to our names
(the registry in :mod:`.layouts`), finds the encoder's weights under any wrapper prefix (our own
training checkpoints store ``net.*``, ``encoder.*`` ...), then adapts tensors to the target model:
patch kernel and position grid resampling, CLS slot added/dropped, ``norm`` -> ``fc_norm`` for
mean-pooling models, relative-position tables resized or copied from a shared table, fp16 -> the
model's dtype. The shape helpers come from :mod:`eva_core.layers`; this package never imports
:mod:`eva_core.models`.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..layers.patch_embed import resample_patch_embed
from ..layers.pos_embed import resample_pos_embed_grid, split_pos_embed_grid
from ..layers.rel_pos import resample_rel_pos
from ..layers.rel_pos_bias import resize_bias_table
from .io import load_file
from .layouts import to_eva_layout, unwrap_state_dict

__all__ = ["load_checkpoint", "LoadReport", "CheckpointMismatchError", "adapt_state_dict", "find_encoder",
           "find_source_prefix"]

# keys that only the pre-training model has; loading a MIM file into a classifier drops them quietly
_PRETRAIN_ONLY = ("mask_token", "lm_head.")


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model as required (``strict=True`` or ``min_loaded``).

    The message names the file and the first missing / unexpected / mismatched keys.
    """


def _preview(items: list, n: int = 10) -> str:
    return f"{items[:n]}{' ...' if len(items) > n else ''}"


@dataclass
class LoadReport:
    """What ``load_checkpoint`` did; ``str(report)`` is one log line.

    Attributes:
        source: file path or ``"<state_dict>"``.
        layout: the registered layout used (detected or named).
        total: number of tensors in the model's ``state_dict()``.
        loaded: model keys that received a tensor.
        missing: model keys the checkpoint did not provide.
        unexpected: checkpoint keys the model has no place for.
        mismatched: ``(key, checkpoint_shape, model_shape)`` that could not be adapted (not loaded).
        dropped: pre-training-only keys left out because the model lacks them.
        prefix: wrapper prefix the encoder weights were found under in the file (``""``: none).
        notes: conversions applied (renames, resampling, casts).
    """

    source: str
    layout: str
    total: int = 0
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    prefix: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every model key was loaded and nothing was left over or mismatched."""
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def loaded_fraction(self) -> float:
        """Share of the model's tensors that received a checkpoint tensor."""
        return len(self.loaded) / self.total if self.total else 0.0

    def __str__(self) -> str:
        parts = [f"{self.source}: layout {self.layout}"
                 + (f" (encoder under {self.prefix!r})" if self.prefix else ""),
                 f"loaded {len(self.loaded)}/{self.total} tensors"]
        for name in ("missing", "unexpected", "mismatched", "dropped"):
            items = getattr(self, name)
            parts.append(f"{name} ({len(items)})" + (f": {_preview(items)}" if items else ""))
        if self.notes:
            parts.append("notes: " + "; ".join(self.notes))
        return ", ".join(parts)


def _model_grid(model: nn.Module) -> tuple[int, int] | None:
    pe = getattr(model, "patch_embed", None)
    return tuple(pe.grid_size) if pe is not None and hasattr(pe, "grid_size") else None


def _adapt_pos_embed(
    v: torch.Tensor, target: torch.Tensor, model: nn.Module, notes: list[str]
) -> torch.Tensor:
    """Resample the grid to the model's and add / drop the CLS slot."""
    src_prefix, src_grid = split_pos_embed_grid(v, "checkpoint pos_embed")
    grid = _model_grid(model)
    tgt_prefix = target.shape[1] - grid[0] * grid[1] if grid else None
    if grid is None or tgt_prefix not in (0, 1):
        return v
    if src_grid != grid:
        v = resample_pos_embed_grid(v.float(), grid, num_prefix_tokens=src_prefix, old_grid=src_grid,
                                    interpolation=getattr(model, "pos_embed_interpolation", "bicubic"),
                                    antialias=getattr(model, "pos_embed_antialias", True))
        notes.append(f"pos_embed: grid {src_grid} -> {grid}")
    if src_prefix == 1 and tgt_prefix == 0:
        v = v[:, 1:]
        notes.append("pos_embed: CLS slot dropped (model has none)")
    elif src_prefix == 0 and tgt_prefix == 1:
        # no learned CLS position exists: zero is the neutral choice (the CLS token itself is learned)
        v = torch.cat([v.new_zeros(1, 1, v.shape[-1]), v], dim=1)
        notes.append("pos_embed: zero CLS slot added (checkpoint has none)")
    return v


def adapt_state_dict(
    sd: dict[str, torch.Tensor], model: nn.Module, notes: list[str] | None = None
) -> tuple[dict[str, torch.Tensor], list[str], list[tuple[str, tuple, tuple]]]:
    """Fit a state dict in our layout to ``model``'s keys, shapes and dtypes.

    Returns:
        ``(state_dict, dropped_keys, mismatched)``; mismatched entries are removed from the dict.
    """
    notes = notes if notes is not None else []
    target = model.state_dict()
    sd = dict(sd)
    dropped: list[str] = []

    # pre-training-only keys the model cannot hold
    for k in list(sd):
        if k.startswith(_PRETRAIN_ONLY) and k not in target:
            dropped.append(k)
            del sd[k]

    # a mean-pooling model has fc_norm instead of a final norm: start it from the trained norm
    if "norm.weight" in sd and "norm.weight" not in target and "fc_norm.weight" in target \
            and "fc_norm.weight" not in sd:
        for s in ("weight", "bias"):
            if f"norm.{s}" in sd:
                sd[f"fc_norm.{s}"] = sd.pop(f"norm.{s}")
        notes.append("norm.* renamed to fc_norm.* (model uses mean pooling + fc_norm)")

    # a shared BEiT table seeds every block's own table (BEiT fine-tuning convention)
    shared = "rel_pos_bias.relative_position_bias_table"
    if shared in sd and shared not in target:
        per_block = [k for k in target if k.endswith("attn.relative_position_bias_table")]
        if per_block:
            table = sd.pop(shared)
            for k in per_block:
                sd.setdefault(k, table.clone())
            notes.append(f"{shared} copied into {len(per_block)} per-block tables")

    mismatched: list[tuple[str, tuple, tuple]] = []
    for k in list(sd):
        if k not in target:
            continue
        v, t = sd[k], target[k]
        if v.shape != t.shape:
            try:
                if k == "patch_embed.proj.weight" and v.shape[:2] == t.shape[:2] and v.ndim == t.ndim == 4:
                    v = resample_patch_embed(v.float(), list(t.shape[-2:]), interpolation="bicubic",
                                             antialias=True)
                    notes.append(f"{k}: kernel {tuple(sd[k].shape[-2:])} -> {tuple(t.shape[-2:])}")
                elif k == "pos_embed" and v.ndim == 3 and v.shape[-1] == t.shape[-1]:
                    v = _adapt_pos_embed(v, t, model, notes)
                elif k.endswith(("attn.rel_pos_h", "attn.rel_pos_w")) and v.shape[1] == t.shape[1]:
                    v = resample_rel_pos(v, t.shape[0])
                    notes.append(f"{k}: length {sd[k].shape[0]} -> {t.shape[0]}")
                elif k.endswith("relative_position_bias_table") and v.shape[1] == t.shape[1]:
                    v = _resize_table(k, v, t, model)
                    notes.append(f"{k}: {tuple(sd[k].shape)} -> {tuple(t.shape)}")
            except ValueError as e:
                notes.append(f"{k}: could not adapt ({e})")
        if v.shape != t.shape:
            mismatched.append((k, tuple(sd[k].shape), tuple(t.shape)))
            del sd[k]
            continue
        sd[k] = v.to(t.dtype) if v.is_floating_point() and t.is_floating_point() else v
    return sd, dropped, mismatched


def _resize_table(key: str, v: torch.Tensor, t: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Resize a BEiT bias table whose window differs from the model's."""
    cls = bool(getattr(model, "num_prefix_tokens", 1))
    extra = 3 if cls else 0

    def window(rows: int) -> tuple[int, int]:
        side = (int(round((rows - extra) ** 0.5)) + 1) // 2
        if (2 * side - 1) ** 2 != rows - extra:
            raise ValueError(f"{rows} rows is not a square (2S-1)^2 table{' + 3 CLS rows' if cls else ''}")
        return side, side

    return resize_bias_table(v.float(), window(v.shape[0]), window(t.shape[0]), cls)


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    *,
    layout: str | None = None,
    strict: bool = False,
    min_loaded: float | str | None = None,
    allow_pickle: bool = False,
    prefix: str | None = None,
    use_ema: bool = True,
) -> LoadReport:
    """Load EVA weights of any registered layout into ``model``.

    Args:
        model: an EVA encoder, or a task model that contains one (classifier, MIM model, detector):
            encoder checkpoints then load into the contained encoder, and keys of the wrapper
            itself (e.g. ``lm_head``) load where the wrapper has them.
        path_or_state_dict: a ``.safetensors`` / ``.pt`` / ``.pth`` file or an in-memory checkpoint,
            possibly wrapped in ``model_ema`` / ``model`` / ``module`` / ``state_dict``.
        layout: a registered layout name (``eva_core.checkpoint.list_layouts()``); ``None`` detects it.
        strict: raise :class:`CheckpointMismatchError` if anything is missing, unexpected or mismatched.
        min_loaded: refuse partial loads: a float is the least share of the model's tensors that must
            load (``1.0``: all of them); ``"encoder"`` requires every tensor of the encoder except its
            classifier ``head``. ``None`` (default) accepts any overlap.
        allow_pickle: allow full unpickling of a trusted file (see ``checkpoint.io.load_file``).
        prefix: strip this key prefix with the standard renames instead of the layout's conversion
            (``None``: the layout decides).
        use_ema: prefer ``model_ema`` weights when the file holds both.

    Returns:
        A :class:`LoadReport`.

    Raises:
        CheckpointMismatchError: ``strict`` or ``min_loaded`` is not met (nothing is loaded then).
        ValueError: unknown layout name or a ``min_loaded`` outside [0, 1] / ``"encoder"``.
    """
    if min_loaded is not None and min_loaded != "encoder" and not (
            isinstance(min_loaded, (int, float)) and 0.0 <= float(min_loaded) <= 1.0):
        raise ValueError(f"min_loaded={min_loaded!r}: expected a share in [0, 1], 'encoder' or None")
    if isinstance(path_or_state_dict, Mapping):
        source, obj = "<state_dict>", path_or_state_dict
    else:
        source = os.fspath(path_or_state_dict)
        obj = load_file(source, allow_pickle=allow_pickle)
    enc_prefix, encoder = find_encoder(model)
    target_enc = encoder.state_dict()
    sd = unwrap_state_dict(obj, use_ema=use_ema, source=source)
    sd, layout_name, notes = to_eva_layout(sd, prefix, layout=layout,
                                           model_shapes={k: tuple(v.shape) for k, v in target_enc.items()})
    wrapper_keys = model.state_dict().keys()
    enc_keys = target_enc.keys()
    src_prefix = find_source_prefix(sd, enc_keys, enc_prefix)
    if src_prefix and src_prefix != enc_prefix:
        notes.append(f"encoder weights read from under {src_prefix!r}")

    # split: encoder tensors (file keys under the source prefix) vs wrapper-level ones (e.g. an MIM
    # model's own lm_head); encoder tensors go through the layout adaptation
    enc_sd: dict[str, torch.Tensor] = {}
    outer: dict[str, torch.Tensor] = {}
    outside = 0
    for k, v in sd.items():
        if src_prefix and not k.startswith(src_prefix):
            if k in wrapper_keys:
                outer[k] = v
            else:
                outside += 1  # other parts of a bigger model's checkpoint (a detector's heads ...)
            continue
        local = k[len(src_prefix):]
        if enc_prefix and local not in enc_keys and k in wrapper_keys:
            outer[k] = v
        else:
            enc_sd[local] = v
    if outside:
        notes.append(f"{outside} keys outside {src_prefix!r} ignored")
    src_dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values() if v.is_floating_point()})
    enc_sd, dropped, mismatched = adapt_state_dict(enc_sd, encoder, notes)

    def wrapper_name(local: str) -> str:
        # wrappers whose state_dict hooks hide the encoder prefix (EvaMIM) expose the bare name
        return enc_prefix + local if enc_prefix + local in wrapper_keys else local

    target = model.state_dict()
    full = {wrapper_name(k): v for k, v in enc_sd.items()}
    mismatched = [(wrapper_name(k), a, b) for k, a, b in mismatched]
    for k, v in outer.items():
        t = target[k]
        if v.shape != t.shape:
            mismatched.append((k, tuple(v.shape), tuple(t.shape)))
        else:
            full[k] = v.to(t.dtype) if v.is_floating_point() and t.is_floating_point() else v
    dst_dtypes = sorted({str(v.dtype).replace("torch.", "") for v in full.values() if v.is_floating_point()})
    if src_dtypes != dst_dtypes:
        notes.append(f"cast {'/'.join(src_dtypes)} -> {'/'.join(dst_dtypes)} (the model's dtype)")

    report = LoadReport(source=source, layout=layout_name, total=len(target), dropped=sorted(dropped),
                        mismatched=mismatched, prefix=src_prefix, notes=notes)
    report.unexpected = sorted(k for k in full if k not in target)
    report.loaded = sorted(k for k in full if k in target)
    mismatched_keys = {m[0] for m in mismatched}
    expected = {wrapper_name(k) for k in enc_keys}
    if enc_prefix:
        # wrapper-level modules count only when the file has weights for them (a MIM teacher
        # loaded from elsewhere is not "missing" from an encoder checkpoint)
        top = {k.split(".")[0] for k in full}
        expected |= {k for k in target if k.split(".")[0] in top}
    report.missing = sorted(k for k in expected if k not in full and k not in mismatched_keys)
    if strict and not report.ok:
        raise CheckpointMismatchError(
            f"{source}: checkpoint does not match {type(model).__name__} (strict=True): {report}")
    _check_min_loaded(report, min_loaded, model, enc_keys, wrapper_name)
    model.load_state_dict({k: full[k] for k in report.loaded}, strict=False)
    return report


def _check_min_loaded(report: LoadReport, min_loaded: float | str | None, model: nn.Module, enc_keys,
                      wrapper_name) -> None:
    """Raise :class:`CheckpointMismatchError` when fewer tensors loaded than ``min_loaded`` asks."""
    if min_loaded is None:
        return
    loaded = set(report.loaded)
    if min_loaded == "encoder":
        # a fresh task head is the one encoder part a checkpoint is allowed to lack
        need = sorted(wrapper_name(k) for k in enc_keys if not k.startswith("head."))
        absent = [k for k in need if k not in loaded]
        if absent:
            raise CheckpointMismatchError(
                f"{report.source}: {len(absent)} of {len(need)} encoder tensors of {type(model).__name__} "
                f"not loaded (min_loaded='encoder'), first missing: {_preview(absent, 5)}; {report}")
        return
    if report.loaded_fraction < float(min_loaded):
        absent = sorted(k for k in model.state_dict() if k not in loaded)
        raise CheckpointMismatchError(
            f"{report.source}: loaded {len(report.loaded)}/{report.total} tensors of {type(model).__name__} "
            f"({report.loaded_fraction:.1%} < min_loaded {float(min_loaded):.1%}), first missing: "
            f"{_preview(absent, 5)}; {report}")


def find_encoder(model: nn.Module) -> tuple[str, nn.Module]:
    """``(prefix, module)`` of the EVA encoder inside ``model`` (``("", model)`` for an encoder itself).

    Task models wrap the encoder (``ImageClassifier.net``, ``EvaMIM.encoder``, a detector's
    ``backbone.net``); checkpoints of the bare encoder load into them through this. The encoder is
    the outermost module with ``patch_embed`` and ``blocks`` (duck-typed, so this package does not
    import the model package, and timm ViTs count too).
    """
    for name, m in model.named_modules():
        if isinstance(getattr(m, "patch_embed", None), nn.Module) and isinstance(getattr(m, "blocks", None),
                                                                                  nn.Module):
            return (name + "." if name else ""), m
    return "", model


def find_source_prefix(sd: Mapping[str, torch.Tensor], enc_keys, enc_prefix: str = "") -> str:
    """The key prefix under which ``sd`` holds the encoder's weights (``""``, ``"net."``, ``"student.net."``).

    Each checkpoint key votes for every prefix whose removal leaves an encoder key; the prefix with
    most votes wins (ties: the model's own encoder prefix, then none, then the first seen). This is
    how our training checkpoints of wrapper models load into a bare encoder and the other way round.
    """
    enc_keys = set(enc_keys)
    votes: Counter[str] = Counter()
    for k in sd:
        if k in enc_keys:
            votes[""] += 1
        i = k.find(".")
        while i != -1:
            if k[i + 1:] in enc_keys:
                votes[k[:i + 1]] += 1
            i = k.find(".", i + 1)
    if not votes:
        return ""
    best = max(votes.values())
    tops = [p for p, n in votes.items() if n == best]
    for preferred in (enc_prefix, ""):
        if preferred in tops:
            return preferred
    return tops[0]
