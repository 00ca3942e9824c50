"""Checkpoint key layouts as a registry: each layout is a ``detect`` / ``convert`` pair of pure functions.

A layout maps the keys of an unwrapped state dict to ours
(``docs/recipes/encoder.md#checkpoint-key-layouts``):

* ``detect(state_dict) -> bool | float``: does this file look like the layout (a number is a score);
* ``convert(state_dict, ctx) -> state_dict``: the same tensors under our names (no resampling: the
  loader fits shapes to the model afterwards). ``ctx`` is a :class:`LayoutContext` with the target
  model's tensor shapes (when there is a model) and a ``notes`` list for the load report.

eva_core registers its own layouts through the same API a project uses::

    from eva_core.checkpoint import register_layout

    @register_layout("my_video", detect=lambda sd: "net.tubelet.weight" in sd, priority=50)
    def convert_my_video(sd, ctx):
        ...

Built-in layouts: ``eva`` (ours, timm's ``Eva``, EVA-01 fine-tuned files), ``eva_mim`` (EVA-01 MIM
pre-training), ``eva_clip`` (EVA-CLIP vision tower under ``visual.``), ``open_clip`` (timm trunk under
``visual.trunk.``), ``detectron2`` (ViTDet backbone under ``backbone.net.``). Any of them may be
wrapped in ``model_ema`` / ``model`` / ``module`` / ``state_dict`` (:func:`unwrap_state_dict`; DeepSpeed
files use ``module`` and store fp16 tensors).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ..layers.patch_embed import resample_patch_embed
from ..layers.pos_embed import resample_pos_embed_grid, split_pos_embed_grid

__all__ = [
    "WRAPPER_KEYS",
    "LAYOUT_PREFIXES",
    "Layout",
    "LayoutContext",
    "register_layout",
    "unregister_layout",
    "get_layout",
    "list_layouts",
    "unwrap_state_dict",
    "detect_layout",
    "rename_to_eva_keys",
    "to_eva_layout",
    "split_pos_embed_grid",
    "resample_state_dict",
    "convert_state_dict",
]

#: wrapper keys in the order they are tried (EMA weights first, as timm does)
WRAPPER_KEYS = ("model_ema", "model", "module", "state_dict")

#: key prefix of each built-in foreign layout
LAYOUT_PREFIXES = {"open_clip": "visual.trunk.", "eva_clip": "visual.", "detectron2": "backbone.net."}

# EVA-CLIP / EVA-02 names -> ours (timm uses the same mapping in its checkpoint filter)
_RENAMES = (("attn.inner_attn_ln.", "attn.norm."), ("mlp.ffn_ln.", "mlp.norm."))

# buffers that some layouts save but that are recomputed from the grid
_DROP_SUFFIXES = ("relative_position_index", "attn.k_bias")


@dataclass
class LayoutContext:
    """What a layout's ``convert`` may read besides the state dict.

    Attributes:
        model_shapes: ``{key: shape}`` of the target encoder in our layout, or ``None`` when
            converting without a model (``tools/convert_checkpoint.py``).
        notes: conversions worth reporting; ``convert`` appends to it.
    """

    model_shapes: Mapping[str, tuple[int, ...]] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Layout:
    """A registered layout (see the module docstring)."""

    name: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool | float]
    convert: Callable[[dict[str, torch.Tensor], LayoutContext], dict[str, torch.Tensor]]
    priority: int = 0
    description: str = ""


_LAYOUTS: dict[str, Layout] = {}


def register_layout(
    name: str,
    detect: Callable[[Mapping[str, torch.Tensor]], bool | float] | None = None,
    convert: Callable[[dict[str, torch.Tensor], LayoutContext], dict[str, torch.Tensor]] | None = None,
    *,
    priority: int = 0,
    description: str = "",
    replace: bool = False,
):
    """Register a checkpoint layout; usable directly or as a decorator of ``convert``.

    Args:
        name: layout name, shown in load reports and accepted by ``load_checkpoint(layout=name)``.
        detect: ``detect(state_dict) -> bool | float``; truthy when the layout applies.
        convert: ``convert(state_dict, ctx) -> state_dict`` in our key names. Omit it to use the
            call as a decorator of the convert function.
        priority: among layouts that detect a file, the highest priority wins (then the highest
            score); built-ins use 0 (``eva``, the fallback) to 30 (prefixed foreign layouts).
        description: one line for :func:`list_layouts` readers.
        replace: allow re-registering an existing name (a project overriding a built-in).

    Returns:
        The :class:`Layout` (direct call) or the decorator (which returns ``convert`` unchanged).

    Raises:
        ValueError: the name is taken and ``replace`` is False, or ``detect`` is missing.
    """
    if detect is None or not callable(detect):
        raise ValueError(f"register_layout({name!r}): detect must be a function state_dict -> bool | score")

    def add(fn: Callable) -> Layout:
        if name in _LAYOUTS and not replace:
            what = _LAYOUTS[name].description or "no description"
            raise ValueError(f"checkpoint layout {name!r} is already registered ({what}); "
                             "pass replace=True to override it")
        layout = Layout(name=name, detect=detect, convert=fn, priority=priority, description=description)
        _LAYOUTS[name] = layout
        return layout

    if convert is not None:
        return add(convert)

    def decorator(fn: Callable) -> Callable:
        add(fn)
        return fn

    return decorator


def unregister_layout(name: str) -> None:
    """Remove a registered layout (tests and projects that register temporarily)."""
    get_layout(name)
    del _LAYOUTS[name]


def get_layout(name: str) -> Layout:
    """The registered layout called ``name``.

    Raises:
        ValueError: no such layout; the message lists the registered ones.
    """
    if name not in _LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {name!r}; registered: {list_layouts()}")
    return _LAYOUTS[name]


def list_layouts() -> list[str]:
    """Registered layout names, in detection order (highest priority first)."""
    return [lay.name for lay in sorted(_LAYOUTS.values(), key=lambda lay: -lay.priority)]


def unwrap_state_dict(
    obj: Any, *, use_ema: bool = True, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Return the flat ``{name: tensor}`` dict inside a checkpoint object.

    The one place that knows checkpoint wrappers: the dict keys :data:`WRAPPER_KEYS` (``model_ema``,
    ``model``, ``module``, ``state_dict``, nested up to 4 deep) and the ``module.`` key prefix that
    ``DistributedDataParallel`` / ``DataParallel`` put on every key (removed when all keys have it).

    Args:
        obj: what ``load_file`` returned.
        use_ema: prefer ``model_ema`` over ``model`` when both are present.
        source: file name used in error messages.

    Raises:
        ValueError: no tensor dict could be found; the message lists the top-level keys.
    """
    seen = 0
    while isinstance(obj, Mapping) and seen < 4:
        keys = [k for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)]
        if not use_ema:
            keys = [k for k in keys if k != "model_ema"] or keys
        if not keys:
            break
        obj = obj[keys[0]]
        seen += 1
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a state dict (mapping of tensors), got {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{source}: no tensors found; top-level keys are {sorted(map(str, obj))[:20]} "
                         f"(expected weights, possibly under one of {WRAPPER_KEYS})")
    if all(isinstance(k, str) and k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _score(layout: Layout, sd: Mapping[str, torch.Tensor]) -> float:
    try:
        return float(layout.detect(sd))
    except Exception as e:  # a project's detect must not hide which layout broke
        raise RuntimeError(
            f"checkpoint layout {layout.name!r}: detect() raised {type(e).__name__}: {e}") from e


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """Name of the registered layout of an unwrapped state dict (highest priority, then score).

    Raises:
        ValueError: no registered layout detects the keys (only possible when ``eva`` was removed).
    """
    best: tuple[int, float, str] | None = None
    for layout in _LAYOUTS.values():
        score = _score(layout, sd)
        if score > 0 and (best is None or (layout.priority, score) > best[:2]):
            best = (layout.priority, score, layout.name)
    if best is None:
        raise ValueError(f"no registered checkpoint layout matches keys like {sorted(sd)[:5]}; "
                         f"registered: {list_layouts()}")
    return best[2]


def rename_to_eva_keys(
    sd: Mapping[str, torch.Tensor], prefix: str, ctx: LayoutContext
) -> dict[str, torch.Tensor]:
    """Strip ``prefix`` and apply the renames every EVA layout shares (a building block for layouts).

    EVA-CLIP's ``inner_attn_ln`` / ``ffn_ln`` become ``attn.norm`` / ``mlp.norm``; recomputed buffers
    (``relative_position_index``, ``k_bias``) are dropped; a full ``qkv.bias`` is split into
    ``q_bias`` / ``v_bias`` (EVA's k bias is fixed at zero). Keys outside ``prefix`` are left out and
    counted in ``ctx.notes``.
    """
    out: dict[str, torch.Tensor] = {}
    outside = 0
    for k, v in sd.items():
        if prefix:
            if not k.startswith(prefix):
                outside += 1
                continue
            k = k[len(prefix):]
        if k.endswith(_DROP_SUFFIXES):
            continue
        for old, new in _RENAMES:
            k = k.replace(old, new)
        if k.endswith("attn.qkv.bias"):
            q, kb, vb = v.chunk(3)
            if kb.abs().max() > 0:
                ctx.notes.append(f"{k}: non-zero k bias dropped (EVA attention has no k bias)")
            out[k.replace("qkv.bias", "q_bias")] = q
            out[k.replace("qkv.bias", "v_bias")] = vb
            continue
        out[k] = v
    if outside:
        ctx.notes.append(f"{outside} keys outside prefix {prefix!r} ignored")
    return out


def _has_encoder_under(prefix: str) -> Callable[[Mapping[str, torch.Tensor]], bool]:
    def detect(sd: Mapping[str, torch.Tensor]) -> bool:
        return any(k.startswith((prefix + "blocks.", prefix + "patch_embed.")) or k == prefix + "pos_embed"
                   for k in sd)

    return detect


def _strip(prefix: str) -> Callable[[dict[str, torch.Tensor], LayoutContext], dict[str, torch.Tensor]]:
    def convert(sd: dict[str, torch.Tensor], ctx: LayoutContext) -> dict[str, torch.Tensor]:
        return rename_to_eva_keys(sd, prefix, ctx)

    return convert


def _is_mim(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k == "mask_token" or k.endswith(".mask_token") or k.startswith("lm_head.") for k in sd)


def _register_builtin_layouts() -> None:
    register_layout("eva", detect=lambda sd: True, convert=_strip(""), priority=0,
                    description="ours / timm Eva / EVA-01 fine-tuned classifiers (fc_norm, head)")
    register_layout("eva_mim", detect=_is_mim, convert=_strip(""), priority=10,
                    description="EVA-01 MIM pre-training: mask_token, lm_head.*, final norm")
    register_layout("eva_clip", detect=_has_encoder_under("visual."), convert=_strip("visual."), priority=20,
                    description="EVA-CLIP vision tower under visual. (inner_attn_ln, ffn_ln)")
    for name in ("open_clip", "detectron2"):
        register_layout(name, detect=_has_encoder_under(LAYOUT_PREFIXES[name]),
                        convert=_strip(LAYOUT_PREFIXES[name]), priority=30,
                        description=f"encoder under {LAYOUT_PREFIXES[name]}")


_register_builtin_layouts()


def to_eva_layout(
    sd: Mapping[str, torch.Tensor],
    prefix: str | None = None,
    *,
    layout: str | None = None,
    model_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Map a state dict to our key names (no shape changes).

    Args:
        sd: unwrapped state dict.
        prefix: strip this prefix with the standard renames (:func:`rename_to_eva_keys`) instead of
            the layout's own conversion; ``None`` uses the layout's conversion.
        layout: a registered layout name; ``None`` detects it.
        model_shapes: the target encoder's ``{key: shape}`` for the layout's context.

    Returns:
        ``(state_dict, layout_name, notes)``.
    """
    name = layout if layout is not None else detect_layout(sd)
    lay = get_layout(name)
    ctx = LayoutContext(model_shapes=model_shapes)
    if prefix is not None:
        out = rename_to_eva_keys(sd, prefix, ctx)
    else:
        out = lay.convert(dict(sd), ctx)
        if not isinstance(out, Mapping):
            raise TypeError(f"checkpoint layout {name!r}: convert() returned {type(out).__name__}, "
                            "expected a state dict")
    return dict(out), name, ctx.notes


def resample_state_dict(
    sd: dict[str, torch.Tensor],
    *,
    patch_size: int | None = None,
    grid_size: tuple[int, int] | None = None,
) -> list[str]:
    """Resample the patch kernel and the absolute position grid in place (bicubic, timm's helpers).

    Args:
        sd: state dict in our layout.
        patch_size: new patch kernel side (e.g. 16 for the ``eva_psz14to16`` layout,
            ``docs/recipes/encoder.md#patch-14-to-16-conversion``).
        grid_size: new position grid ``(H, W)`` (e.g. ``(14, 14)`` for 224 / 16).

    Returns:
        Notes describing what changed.
    """
    notes = []
    w = sd.get("patch_embed.proj.weight")
    if patch_size is not None and w is not None and tuple(w.shape[-2:]) != (patch_size, patch_size):
        sd["patch_embed.proj.weight"] = resample_patch_embed(
            w.float(), [patch_size, patch_size], interpolation="bicubic", antialias=True).to(w.dtype)
        notes.append(f"patch_embed.proj.weight: kernel {tuple(w.shape[-2:])} -> {(patch_size, patch_size)}")
    pos = sd.get("pos_embed")
    if grid_size is not None and pos is not None:
        prefix, old = split_pos_embed_grid(pos)
        if tuple(old) != tuple(grid_size):
            sd["pos_embed"] = resample_pos_embed_grid(pos.float(), grid_size, num_prefix_tokens=prefix,
                                                      old_grid=old).to(pos.dtype)
            notes.append(f"pos_embed: grid {old} -> {tuple(grid_size)}")
    return notes


def convert_state_dict(
    obj: Any,
    *,
    prefix: str | None = None,
    layout: str | None = None,
    patch_size: int | None = None,
    img_size: int | None = None,
    use_ema: bool = True,
    dtype: torch.dtype | None = None,
) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Unwrap, rename to our layout and optionally resample (what ``tools/convert_checkpoint.py`` does).

    ``img_size`` sets the position grid to ``img_size // patch`` where ``patch`` is ``patch_size``
    or the checkpoint's kernel size. Pre-training-only keys (``mask_token``, ``lm_head``) are kept.
    """
    sd = unwrap_state_dict(obj, use_ema=use_ema)
    sd, name, notes = to_eva_layout(sd, prefix, layout=layout)
    grid = None
    if img_size is not None:
        w = sd.get("patch_embed.proj.weight")
        p = patch_size or (w.shape[-1] if w is not None else None)
        if p is None:
            raise ValueError("img_size given but the checkpoint has no patch_embed.proj.weight and no "
                             "patch_size")
        if img_size % p:
            raise ValueError(f"img_size {img_size} is not a multiple of patch size {p}")
        grid = (img_size // p, img_size // p)
    notes += resample_state_dict(sd, patch_size=patch_size, grid_size=grid)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    return sd, name, notes
