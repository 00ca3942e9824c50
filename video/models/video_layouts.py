"""Checkpoint layouts of the video encoder, registered with ``eva_core.checkpoint.register_layout``.

* ``eva_video``: the EVA-01 video release (``eva_video_k{722,400,600,700}.pth``) and our own video
  files: the keys are already ours (``patch_embed.proj.weight [C, 3, t, p, p]``, ``pos_embed
  [1, 1 + T*N, C]``); detected by the 5-D patch kernel. ``model`` / ``module`` wrappers are removed by
  the core's ``unwrap_state_dict``. A file trained at other frames (K-722 at 8 -> stage 2 at 16) has
  its position table resized trilinearly and its kernel re-inflated to the model's tubelet.
* ``eva_image_to_video``: any image checkpoint (ours, EVA-01 MIM or fine-tuned, EVA-CLIP ...) inflated
  into a video model: the 2-D kernel is copied along time and divided by the tubelet, the image
  position table is repeated per frame (I3D initialisation, ``docs/recipes/video.md#video-encoder``).
  An image file is indistinguishable from an image-model checkpoint by its keys, so this layout is
  chosen by name: :func:`load_video_checkpoint` picks it for a 4-D patch kernel.

A flat position table does not say how its tokens split into frames and grid. The layouts assume the
spatial grid is kept (the image grid, or the model's grid for a video file) and raise a clear error
when the token counts do not allow that; :func:`load_video_checkpoint` knows the model's ``(T, H, W)``
and passes it to the layouts, so any change of frames or size works through it.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from eva_core.checkpoint import load_file
from eva_core.checkpoint.layouts import (
    LayoutContext,
    detect_layout,
    get_layout,
    list_layouts,
    register_layout,
    rename_to_eva_keys,
    split_pos_embed_grid,
    unwrap_state_dict,
)
from eva_core.checkpoint.loader import CheckpointMismatchError, LoadReport, find_encoder, load_checkpoint
from eva_core.layers import (
    collapse_patch_embed_3d,
    inflate_patch_embed_3d,
    inflate_pos_embed_to_video,
    resample_abs_pos_embed_3d,
    resample_patch_embed,
    resample_pos_embed_grid,
)

__all__ = ["VIDEO_LAYOUT", "IMAGE_TO_VIDEO_LAYOUT", "fit_video_state_dict", "load_video_checkpoint",
           "is_video_state_dict"]

VIDEO_LAYOUT = "eva_video"
IMAGE_TO_VIDEO_LAYOUT = "eva_image_to_video"
_KERNEL = "patch_embed.proj.weight"

# (model token grid (T, H, W), file token grid or None) for the load in progress; set only by
# load_video_checkpoint, which is the one caller that knows the model's geometry
_GEOMETRY: contextvars.ContextVar[tuple[tuple[int, int, int], tuple[int, int, int] | None] | None] = \
    contextvars.ContextVar("video_load_geometry", default=None)


def is_video_state_dict(sd: Mapping[str, torch.Tensor]) -> bool:
    """True when the (unwrapped) state dict holds a 5-D (tubelet) patch kernel."""
    w = sd.get(_KERNEL)
    return isinstance(w, torch.Tensor) and w.ndim == 5


def _fit_kernel(w: torch.Tensor, target: tuple[int, ...], notes: list[str]) -> torch.Tensor:
    """Image or video kernel -> the model's ``[D, C, t, p, p]`` (spatial resample, then time inflation)."""
    if tuple(w.shape) == tuple(target):
        return w
    if len(target) != 5:
        raise ValueError(f"{_KERNEL}: the model's kernel is {tuple(target)}, "
                         "not a video kernel [D, C, t, p, p]")
    img = w if w.ndim == 4 else collapse_patch_embed_3d(w)  # the sum over time is the equivalent image kernel
    if w.ndim == 5:
        notes.append(f"{_KERNEL}: tubelet {w.shape[2]} collapsed (sum over time) before inflation")
    if tuple(img.shape[-2:]) != tuple(target[-2:]):
        img = resample_patch_embed(img.float(), list(target[-2:]), interpolation="bicubic",
                                   antialias=True).to(w.dtype)
        notes.append(f"{_KERNEL}: kernel {tuple(w.shape[-2:])} -> {tuple(target[-2:])}")
    notes.append(f"{_KERNEL}: inflated to tubelet {target[2]} (copied along time, divided by {target[2]})")
    return inflate_patch_embed_3d(img, target[2])


def _fit_image_pos_embed(pos: torch.Tensor, n_target: int, grid: tuple[int, int, int] | None,
                         notes: list[str]) -> torch.Tensor:
    prefix, img_grid = split_pos_embed_grid(pos, "checkpoint pos_embed")
    if grid is None:
        per_frame = img_grid[0] * img_grid[1]
        if (n_target - 1) % per_frame:
            raise ValueError(
                f"pos_embed: the model has {n_target - 1} patch positions, not a whole number of frames of "
                f"the image grid {img_grid}; load with video.load_video_checkpoint(model, path), which knows "
                "the model's frames and grid")
        grid = ((n_target - 1) // per_frame, *img_grid)
    if tuple(img_grid) != tuple(grid[1:]):
        # spatial resize as the image model does it (bicubic), then repeat per frame
        pos = resample_pos_embed_grid(pos.float(), grid[1:], num_prefix_tokens=prefix,
                                      old_grid=img_grid).to(pos.dtype)
        notes.append(f"pos_embed: image grid {img_grid} -> {tuple(grid[1:])}")
    if prefix == 0:
        # a table without a CLS slot (ViTDet-style): the CLS position starts at zero, as the core loader does
        pos = torch.cat([pos.new_zeros(1, 1, pos.shape[-1]), pos], dim=1)
        notes.append("pos_embed: zero CLS slot added (checkpoint has none)")
    notes.append(f"pos_embed: image table repeated over {grid[0]} frames")
    return inflate_pos_embed_to_video(pos, grid[0], num_prefix_tokens=1)


def _fit_video_pos_embed(pos: torch.Tensor, n_target: int, grid: tuple[int, int, int] | None,
                         source_grid: tuple[int, int, int] | None, notes: list[str]) -> torch.Tensor:
    n_source = pos.shape[1] - 1
    if n_source == n_target - 1 and source_grid in (None, grid):
        return pos
    if grid is None:
        raise ValueError(
            f"pos_embed: the file has {n_source} patch positions and the model {n_target - 1}; a flat table "
            "does not say how they split into frames and grid: load with "
            "video.load_video_checkpoint(model, path), which knows the model's (T, H, W)")
    if source_grid is None:
        per_frame = grid[1] * grid[2]
        if n_source % per_frame:
            raise ValueError(
                f"pos_embed: the file's {n_source} patch positions are not whole frames of the model's grid "
                f"{grid[1:]}; pass source_grid=(T, H, W) of the file to load_video_checkpoint")
        source_grid = (n_source // per_frame, grid[1], grid[2])
    notes.append(f"pos_embed: token grid {tuple(source_grid)} -> {tuple(grid)} (trilinear)")
    return resample_abs_pos_embed_3d(pos, grid, source_grid, num_prefix_tokens=1)


def fit_video_state_dict(
    sd: dict[str, torch.Tensor],
    model_shapes: Mapping[str, tuple[int, ...]] | None,
    *,
    token_grid: Sequence[int] | None = None,
    source_grid: Sequence[int] | None = None,
    notes: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Fit the patch kernel and the position table of a state dict (our key names) to a video model.

    Args:
        sd: state dict in our layout, image (4-D kernel, ``[1, 1 + H*W, C]`` table) or video.
        model_shapes: the video model's ``{key: shape}``; ``None`` leaves the tensors as they are.
        token_grid: the model's token grid ``(T', H', W')``; ``None`` infers it by keeping the
            spatial grid (see the module docstring).
        source_grid: the file's token grid for a video table (default: the model's spatial grid kept).
        notes: list the conversions are appended to.

    Raises:
        ValueError: a table whose geometry cannot be inferred, naming the token counts.
    """
    notes = notes if notes is not None else []
    if model_shapes is None:
        return sd
    grid = tuple(int(s) for s in token_grid) if token_grid is not None else None
    src = tuple(int(s) for s in source_grid) if source_grid is not None else None
    # the kernel tells an image file from a video one (a small video table can look like a square grid)
    image = sd[_KERNEL].ndim == 4 if _KERNEL in sd else _is_image_table(sd.get("pos_embed"))
    if _KERNEL in sd and _KERNEL in model_shapes:
        sd[_KERNEL] = _fit_kernel(sd[_KERNEL], tuple(model_shapes[_KERNEL]), notes)
    if "pos_embed" in sd and "pos_embed" in model_shapes:
        pos, n_target = sd["pos_embed"], model_shapes["pos_embed"][1]
        if pos.ndim == 3 and pos.shape[-1] == model_shapes["pos_embed"][-1]:
            if image:
                sd["pos_embed"] = _fit_image_pos_embed(pos, n_target, grid, notes)
            else:
                sd["pos_embed"] = _fit_video_pos_embed(pos, n_target, grid, src, notes)
    return sd


def _is_image_table(pos: torch.Tensor | None) -> bool:
    """A table without a kernel beside it counts as an image table when it is a square grid (+ CLS)."""
    if pos is None:
        return False
    try:
        split_pos_embed_grid(pos)
    except ValueError:
        return False
    return True


def _geometry() -> tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]:
    g = _GEOMETRY.get()
    return (None, None) if g is None else g


@register_layout(VIDEO_LAYOUT, detect=is_video_state_dict, priority=40,
                 description="EVA-01 video release / ours: Conv3d patch kernel [C, 3, t, p, p], "
                             "pos_embed [1, 1 + T*N, C]")
def convert_eva_video(sd: dict[str, torch.Tensor], ctx: LayoutContext) -> dict[str, torch.Tensor]:
    """Our names (shared EVA renames), kernel and position table fitted to the model's frames."""
    out = rename_to_eva_keys(sd, "", ctx)
    grid, src = _geometry()
    if not is_video_state_dict(out):
        raise ValueError(f"layout {VIDEO_LAYOUT!r} expects a 5-D {_KERNEL}; this file has "
                         f"{tuple(out[_KERNEL].shape) if _KERNEL in out else 'none'} (an image checkpoint "
                         f"loads with layout={IMAGE_TO_VIDEO_LAYOUT!r})")
    return fit_video_state_dict(out, ctx.model_shapes, token_grid=grid, source_grid=src, notes=ctx.notes)


def _never_detected(sd: Mapping[str, torch.Tensor]) -> bool:
    # chosen by name only: an image file's keys cannot tell an image target from a video one
    return False


@register_layout(IMAGE_TO_VIDEO_LAYOUT, detect=_never_detected, priority=0,
                 description="any image EVA checkpoint inflated into a video model (chosen by name)")
def convert_image_to_video(sd: dict[str, torch.Tensor], ctx: LayoutContext) -> dict[str, torch.Tensor]:
    """The image layout's own conversion, then time inflation of the kernel and the position table."""
    image_layout = detect_layout(sd)
    if image_layout == VIDEO_LAYOUT:
        raise ValueError(f"layout {IMAGE_TO_VIDEO_LAYOUT!r} got a video checkpoint (5-D {_KERNEL}); "
                         f"it loads with layout={VIDEO_LAYOUT!r}")
    out = get_layout(image_layout).convert(dict(sd), ctx)
    ctx.notes.append(f"image layout {image_layout!r} inflated to video")
    grid, _ = _geometry()
    return fit_video_state_dict(dict(out), ctx.model_shapes, token_grid=grid, notes=ctx.notes)


@contextlib.contextmanager
def _geometry_for(grid: tuple[int, int, int], source_grid: tuple[int, int, int] | None):
    token = _GEOMETRY.set((grid, source_grid))
    try:
        yield
    finally:
        _GEOMETRY.reset(token)


def load_video_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    *,
    layout: str | None = None,
    source_grid: Sequence[int] | None = None,
    strict: bool = False,
    min_loaded: float | str | None = None,
    allow_pickle: bool = False,
    use_ema: bool = True,
) -> LoadReport:
    """Load an image or video checkpoint into a video model through ``eva_core.load_checkpoint``.

    The layout is ``eva_video`` for a 5-D patch kernel and ``eva_image_to_video`` otherwise; the
    model's token grid ``(T', H', W')`` is handed to the layout, so a file of any frame count or
    size is resized (image tables bicubic per frame, video tables trilinear).

    Args:
        model: an :class:`~video.models.eva_video.EvaVideo` or a model containing one.
        path_or_state_dict: a checkpoint file or an in-memory checkpoint (wrappers allowed).
        layout: force a registered layout.
        source_grid: the file's token grid ``(T, H, W)`` when its spatial grid differs from the model's.
        strict, min_loaded, allow_pickle, use_ema: as ``eva_core.load_checkpoint``.

    Returns:
        The load report (``report.source`` is the file path).

    Raises:
        CheckpointMismatchError: ``strict`` / ``min_loaded`` not met, naming the file.
        ValueError: the model has no video encoder, or the file's geometry cannot be fitted.
    """
    _, encoder = find_encoder(model)
    grid = getattr(encoder, "token_grid", None)
    if grid is None:
        raise ValueError(f"{type(model).__name__} has no video encoder (an EvaVideo with token_grid)")
    if isinstance(path_or_state_dict, Mapping):
        source, obj = "<state_dict>", path_or_state_dict
    else:
        source = os.fspath(path_or_state_dict)
        obj = load_file(source, allow_pickle=allow_pickle)
    if layout is None:
        flat = unwrap_state_dict(obj, use_ema=use_ema, source=source)
        layout = VIDEO_LAYOUT if is_video_state_dict(flat) else IMAGE_TO_VIDEO_LAYOUT
    if layout not in list_layouts():
        raise ValueError(f"unknown checkpoint layout {layout!r}; registered: {list_layouts()}")
    src = tuple(int(s) for s in source_grid) if source_grid is not None else None
    try:
        with _geometry_for(tuple(grid), src):
            report = load_checkpoint(model, obj, layout=layout, strict=strict, min_loaded=min_loaded,
                                     use_ema=use_ema)
    except (CheckpointMismatchError, ValueError) as e:
        if source == "<state_dict>":
            raise
        raise type(e)(str(e).replace("<state_dict>", source)) from e
    report.source = source
    return report
