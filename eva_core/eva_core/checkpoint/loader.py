"""``load_checkpoint``: weights of any EVA layout into any EVA model.

Reads through :func:`eva_core.checkpoint.io.load_file` (no pickled code runs unless
``allow_pickle=True``), maps the layout to our names (:mod:`.layouts`), then adapts tensors to the
target model: patch kernel and position grid resampling, CLS slot added/dropped, ``norm`` ->
``fc_norm`` for mean-pooling models, relative-position tables resized or copied from a shared
table, fp16 -> the model's dtype.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..models.pos_embed import resample_patch_embed, resample_pos_embed_grid, resample_rel_pos, resize_bias_table
from .io import load_file
from .layouts import split_pos_embed_grid, to_eva_layout, unwrap_state_dict

__all__ = ["load_checkpoint", "LoadReport", "CheckpointMismatchError", "adapt_state_dict", "find_encoder"]

# keys that only the pre-training model has; loading a MIM file into a classifier drops them quietly
_PRETRAIN_ONLY = ("mask_token", "lm_head.")


class CheckpointMismatchError(ValueError):
    """``strict=True`` and the checkpoint does not match the model; the message names the keys."""


@dataclass
class LoadReport:
    """What ``load_checkpoint`` did.

    Attributes:
        source: file path or ``"<state_dict>"``.
        layout: detected layout name (``eva``, ``eva_mim``, ``eva_clip``, ``open_clip``, ``detectron2``).
        loaded: model keys that received a tensor.
        missing: model keys the checkpoint did not provide.
        unexpected: checkpoint keys the model has no place for.
        mismatched: ``(key, checkpoint_shape, model_shape)`` that could not be adapted (not loaded).
        dropped: pre-training-only keys left out because the model lacks them.
        notes: conversions applied (renames, resampling, casts).
    """

    source: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every model key was loaded and nothing was left over or mismatched."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"{self.source} (layout {self.layout}): loaded {len(self.loaded)} tensors"]
        for name in ("missing", "unexpected", "mismatched", "dropped"):
            items = getattr(self, name)
            if items:
                lines.append(f"  {name} ({len(items)}): {items[:10]}{' ...' if len(items) > 10 else ''}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _model_grid(model: nn.Module) -> tuple[int, int] | None:
    pe = getattr(model, "patch_embed", None)
    return tuple(pe.grid_size) if pe is not None and hasattr(pe, "grid_size") else None


def _adapt_pos_embed(v: torch.Tensor, target: torch.Tensor, model: nn.Module, notes: list[str]) -> torch.Tensor:
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
    strict: bool = False,
    allow_pickle: bool = False,
    prefix: str | None = None,
    use_ema: bool = True,
) -> LoadReport:
    """Load EVA weights of any supported layout into ``model``.

    Args:
        model: an EVA encoder, or a task model that contains one (classifier, MIM model, detector):
            encoder checkpoints then load into the contained encoder, and keys of the wrapper
            itself (e.g. ``lm_head``) load where the wrapper has them.
        path_or_state_dict: a ``.safetensors`` / ``.pt`` / ``.pth`` file or an in-memory checkpoint,
            possibly wrapped in ``model_ema`` / ``model`` / ``module`` / ``state_dict``.
        strict: raise :class:`CheckpointMismatchError` if anything is missing, unexpected or mismatched.
        allow_pickle: allow full unpickling of a trusted file (see ``checkpoint.io.load_file``).
        prefix: key prefix to strip (``None``: detected from the layout, ``""``: none).
        use_ema: prefer ``model_ema`` weights when the file holds both.

    Returns:
        A :class:`LoadReport`.
    """
    if isinstance(path_or_state_dict, Mapping):
        source, obj = "<state_dict>", path_or_state_dict
    else:
        source = os.fspath(path_or_state_dict)
        obj = load_file(source, allow_pickle=allow_pickle)
    sd = unwrap_state_dict(obj, use_ema=use_ema, source=source)
    sd, layout, notes = to_eva_layout(sd, prefix)
    enc_prefix, encoder = find_encoder(model)
    wrapper_keys = model.state_dict().keys()
    enc_keys = encoder.state_dict().keys()

    # split: encoder tensors (file keys with or without the wrapper's prefix) vs wrapper-level ones
    # (e.g. an MIM model's own lm_head); encoder tensors go through the layout adaptation
    enc_sd: dict[str, torch.Tensor] = {}
    outer: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        local = k[len(enc_prefix):] if enc_prefix and k.startswith(enc_prefix) else k
        if enc_prefix and local not in enc_keys and k in wrapper_keys:
            outer[k] = v
        else:
            enc_sd[local] = v
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

    report = LoadReport(source=source, layout=layout, dropped=sorted(dropped), mismatched=mismatched, notes=notes)
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
            f"{source}: checkpoint does not match {type(model).__name__} (strict=True)\n{report}")
    model.load_state_dict({k: full[k] for k in report.loaded}, strict=False)
    return report


def find_encoder(model: nn.Module) -> tuple[str, nn.Module]:
    """``(prefix, module)`` of the EVA encoder inside ``model`` (``("", model)`` for an encoder itself).

    Task models wrap the encoder (``ImageClassifier.net``, ``EvaMIM.encoder``, a detector's
    ``backbone.net``); checkpoints of the bare encoder load into them through this.
    """
    from ..models.eva import Eva

    if isinstance(model, Eva) or not any(isinstance(m, Eva) for m in model.modules()):
        return "", model
    for name, m in model.named_modules():
        if isinstance(m, Eva):
            return name + ".", m
    return "", model  # unreachable: the any() above found one
