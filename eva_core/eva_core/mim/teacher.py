"""Frozen teachers that give one target feature per student patch.

EVA regresses the patch features of OpenAI CLIP-L/14 (after ``ln_post`` and the visual projection,
768-d, no CLS) on the same 224 crop as the student. :class:`ClipTeacher` builds that tower with
open_clip and loads a user-supplied weights file; :class:`EvaTeacher` uses any eva_core model (or a
checkpoint of one) instead, which is how the toy recipe trains without downloads.

Both share :class:`FeatureTeacher`: frozen, always in eval mode, run under ``torch.no_grad`` and a
configurable autocast precision, re-normalise and resize the student's crop to their own input, and
resample their token grid onto the student's grid when the two differ.
"""
from __future__ import annotations

import abc
import os
import zipfile
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "FeatureTeacher", "ClipTeacher", "EvaTeacher",
    "resample_token_grid", "load_clip_visual_state_dict",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _pair(v: Union[int, Sequence[int]], what: str) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise ValueError(f"{what} must be an int or a (height, width) pair, got {v!r}")
    return v  # type: ignore[return-value]


def resample_token_grid(tokens: torch.Tensor, src_grid: Sequence[int], dst_grid: Sequence[int],
                        mode: str = "auto") -> torch.Tensor:
    """Resample patch tokens laid out on ``src_grid`` onto ``dst_grid``.

    Args:
        tokens: ``[B, Hs*Ws, D]`` patch tokens in row-major order (no CLS).
        src_grid: ``(Hs, Ws)`` of ``tokens``.
        dst_grid: ``(Hd, Wd)`` wanted.
        mode: ``"area"`` (average over the covered source cells), ``"bilinear"``, ``"bicubic"`` or
            ``"auto"``: area when shrinking by whole factors, bilinear otherwise.

    Returns:
        ``[B, Hd*Wd, D]`` tokens.

    Raises:
        ValueError: the token count does not match ``src_grid`` or the two grids have different
            aspect ratios (a teacher and a student must see the same crop).
    """
    hs, ws = src_grid
    hd, wd = dst_grid
    b, n, d = tokens.shape
    if n != hs * ws:
        raise ValueError(f"teacher returned {n} patch tokens, expected {hs}x{ws}={hs * ws}")
    if (hs, ws) == (hd, wd):
        return tokens
    if hs * wd != hd * ws:
        raise ValueError(
            f"cannot pair a {hs}x{ws} teacher grid with a {hd}x{wd} student grid: the aspect ratios "
            "differ, so the two do not cover the same crop")
    if mode == "auto":
        mode = "area" if hs % hd == 0 and ws % wd == 0 else "bilinear"
    if mode not in ("area", "bilinear", "bicubic"):
        raise ValueError(f"grid resample mode must be auto, area, bilinear or bicubic, got {mode!r}")
    grid = tokens.transpose(1, 2).reshape(b, d, hs, ws)
    kwargs = {} if mode == "area" else {"align_corners": False}
    grid = F.interpolate(grid.float(), size=(hd, wd), mode=mode, **kwargs).to(tokens.dtype)
    return grid.flatten(2).transpose(1, 2)


class FeatureTeacher(nn.Module, abc.ABC):
    """Frozen feature extractor returning one target per student patch.

    Subclasses implement :meth:`extract_patch_features` and set ``grid_size`` and ``embed_dim``.

    Args:
        image_size: the teacher's own input resolution; the crop is resized to it when the
            student's differs (``None``: use the crop as it comes).
        input_mean: normalisation of the images the teacher receives (the student's).
        input_std: see ``input_mean``.
        mean: normalisation the teacher was trained with; images are re-normalised when it
            differs from ``input_mean``/``input_std``.
        std: see ``mean``.
        precision: autocast dtype for the teacher forward: ``"fp16"`` (paper), ``"bf16"`` or
            ``"fp32"``.
        grid_resample: how a teacher grid that differs from the student's is resampled
            (see :func:`resample_token_grid`).
    """

    grid_size: Tuple[int, int]
    embed_dim: int

    def __init__(self, image_size: Optional[Union[int, Sequence[int]]] = None,
                 input_mean: Sequence[float] = CLIP_MEAN, input_std: Sequence[float] = CLIP_STD,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 precision: str = "fp16", grid_resample: str = "auto"):
        super().__init__()
        if precision not in _PRECISIONS:
            raise ValueError(f"teacher precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.image_size = None if image_size is None else _pair(image_size, "image_size")
        self.grid_resample = grid_resample
        for name, v in (("input_mean", input_mean), ("input_std", input_std), ("mean", mean), ("std", std)):
            if len(v) != 3:
                raise ValueError(f"teacher {name} must have 3 channel values, got {list(v)}")
        # (x * in_std + in_mean - mean) / std == x * scale + shift; skipped when they agree.
        # Plain-float arithmetic so it also works under `with torch.device("meta")`.
        self.renormalize = any(abs(a - b) > 1e-6 for a, b in zip((*input_mean, *input_std), (*mean, *std)))
        scale = [si / s for si, s in zip(input_std, std)]
        shift = [(mi - m) / s for mi, m, s in zip(input_mean, mean, std)]
        self.register_buffer("_scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)

    def freeze(self) -> "FeatureTeacher":
        """Stop gradients to every parameter and switch to eval mode for good."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "FeatureTeacher":
        # dropout / drop path / patch dropout must never be active in the target network
        return super().train(False)

    @abc.abstractmethod
    def extract_patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """Return ``[B, grid_h * grid_w, embed_dim]`` patch features of teacher-ready images."""

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """Re-normalise and resize the student's crop for the teacher."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"teacher expects images [B, 3, H, W], got shape {tuple(images.shape)}")
        if self.renormalize:
            images = images * self._scale + self._shift
        if self.image_size is not None and tuple(images.shape[-2:]) != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bicubic", align_corners=False,
                                   antialias=True)
        return images

    @torch.no_grad()
    def forward(self, images: torch.Tensor, grid_size: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Targets for a batch.

        Args:
            images: ``[B, 3, H, W]`` crops normalised with ``input_mean``/``input_std``.
            grid_size: the student's patch grid; the teacher's grid is resampled onto it.

        Returns:
            float32 ``[B, N, embed_dim]`` with ``N`` = student grid cells (teacher grid if None).
        """
        x = self.prepare_images(images)
        dtype = _PRECISIONS[self.precision]
        # meta tensors (parameter / FLOP counting) have no autocast: shapes are all that matter there
        use_amp = dtype != torch.float32 and torch.amp.is_autocast_available(x.device.type)
        with torch.autocast(device_type=x.device.type if use_amp else "cpu", dtype=dtype, enabled=use_amp):
            feats = self.extract_patch_features(x)
        grid = self._token_grid(feats.shape[1], x.shape[-2:])
        if grid_size is not None:
            feats = resample_token_grid(feats, grid, _pair(grid_size, "grid_size"), self.grid_resample)
        return feats.float()

    def _token_grid(self, num_tokens: int, image_hw: Sequence[int]) -> Tuple[int, int]:
        """The grid of ``num_tokens`` patch tokens; square when the model does not say."""
        grid = getattr(self, "grid_size", None)
        if grid is not None and grid[0] * grid[1] == num_tokens:
            return tuple(grid)  # type: ignore[return-value]
        side = int(round(num_tokens ** 0.5))
        if side * side != num_tokens or image_hw[0] != image_hw[1]:
            raise ValueError(
                f"cannot lay out {num_tokens} teacher tokens for a {image_hw[0]}x{image_hw[1]} input "
                f"(model grid {grid}); expected a square token grid")
        return (side, side)


def load_clip_visual_state_dict(path: Union[str, os.PathLike]) -> dict:
    """Read the vision-tower weights of a CLIP checkpoint in OpenAI / open_clip layout.

    Accepts a full CLIP state dict (keys ``visual.*`` are kept, the prefix dropped), a
    vision-only state dict, safetensors, and OpenAI's original TorchScript archives (read with
    ``torch.jit.load``, which rebuilds TorchScript modules without running arbitrary pickled code).
    """
    from eva_core.checkpoint import CheckpointFormatError, load_file, unwrap_state_dict

    path = os.fspath(path)
    try:
        sd = unwrap_state_dict(load_file(path), source=path)
    except CheckpointFormatError:
        if not (zipfile.is_zipfile(path) and any(n.endswith("/code/__torch__.py") or "/code/" in n
                                                  for n in zipfile.ZipFile(path).namelist())):
            raise
        sd = dict(torch.jit.load(path, map_location="cpu").state_dict())
    visual = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    return visual if visual else dict(sd)


class ClipTeacher(FeatureTeacher):
    """A CLIP vision tower built by open_clip; targets are ``ln_post(patch tokens) @ proj``.

    Args:
        model_name: open_clip architecture (paper: ``"ViT-L-14"``).
        weights: path of the CLIP weights (OpenAI/open_clip layout, see
            :func:`load_clip_visual_state_dict`); ``None`` keeps random weights (tests, benchmarks).
            Not read when the tower is built on the meta device.
        vision_cfg: overrides merged into the architecture's ``vision_cfg`` (tiny test towers).
        embed_dim: override of the projection width (CLIP-L/14: 768).
        quick_gelu: OpenAI's CLIP models were trained with QuickGELU; keep True for their weights.
        precision: autocast dtype (paper: fp16).
        **kwargs: :class:`FeatureTeacher` arguments (``image_size`` defaults to the tower's).

    Raises:
        ValueError: the tower pools through an attention pooler or applies ``ln_post`` after
            pooling, so no per-patch ``ln_post`` features exist.
    """

    def __init__(self, model_name: str = "ViT-L-14", weights: Optional[str] = None,
                 vision_cfg: Optional[Mapping[str, Any]] = None, embed_dim: Optional[int] = None,
                 quick_gelu: bool = True, precision: str = "fp16", **kwargs: Any):
        import open_clip

        cfg = open_clip.get_model_config(model_name)
        if cfg is None:
            raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
        vcfg = {**cfg["vision_cfg"], **dict(vision_cfg or {})}
        if vcfg.get("timm_model_name") or isinstance(vcfg.get("layers"), (list, tuple)):
            raise ValueError(f"{model_name}: only open_clip VisionTransformer towers are supported "
                             "as teachers")
        pooled_differently = vcfg.get("pool_type", "tok") != "tok"
        if vcfg.get("attentional_pool") or vcfg.get("final_ln_after_pool") or pooled_differently:
            raise ValueError(f"{model_name}: teacher needs ln_post applied to every token with CLS pooling "
                             "(no attentional pool, no final_ln_after_pool)")
        vcfg["output_tokens"] = True
        # only the vision tower is used: a one-layer, narrow text tower saves ~120M parameters
        text_cfg = {**cfg["text_cfg"], "width": 64, "heads": 1, "layers": 1}
        overrides: dict = {"vision_cfg": vcfg, "text_cfg": text_cfg}
        if embed_dim is not None:
            overrides["embed_dim"] = int(embed_dim)
        # build where torch builds by default (under `with torch.device("meta")` for counting);
        # open_clip would otherwise move the model to "cpu", which meta tensors cannot do
        device = torch.empty(0).device
        clip = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu,
                                      device=device, **overrides)
        visual = clip.visual
        kwargs.setdefault("image_size", tuple(visual.image_size))
        super().__init__(precision=precision, **kwargs)
        self.visual = visual
        # a meta-device teacher (parameter / FLOP counting) has no storage to load weights into
        if weights is not None and device.type != "meta":
            sd = load_clip_visual_state_dict(weights)
            own = self.visual.state_dict()
            missing = [k for k in own if k not in sd]
            unexpected = [k for k in sd if k not in own]
            wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                     if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
            if missing or unexpected or wrong:
                raise ValueError(f"{weights}: does not match open_clip {model_name} vision tower; "
                                 f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}, "
                                 f"shape mismatches {wrong[:5]}")
            self.visual.load_state_dict(sd)
        self.grid_size = tuple(visual.grid_size)
        self.embed_dim = int(visual.output_dim)
        self.freeze()

    def extract_patch_features(self, images: torch.Tensor) -> torch.Tensor:
        _, tokens = self.visual(images)  # output_tokens: patch tokens after ln_post, before proj
        return tokens @ self.visual.proj.to(tokens.dtype)


class EvaTeacher(FeatureTeacher):
    """Any eva_core model as the teacher; targets are the patch tokens of ``forward_features``.

    Args:
        model: a built model, or a registered name for ``eva_core.create_model``.
        checkpoint: optional weights file (or state dict) loaded with ``eva_core.load_checkpoint``.
        model_overrides: keyword overrides for ``create_model`` when ``model`` is a name.
        precision: autocast dtype.
        **kwargs: :class:`FeatureTeacher` arguments.
    """

    def __init__(self, model: Union[str, nn.Module], checkpoint: Any = None,
                 model_overrides: Optional[Mapping[str, Any]] = None, precision: str = "fp32",
                 **kwargs: Any):
        super().__init__(precision=precision, **kwargs)
        if isinstance(model, str):
            import eva_core

            model = eva_core.create_model(model, **dict(model_overrides or {}))
        elif model_overrides:
            raise ValueError("model_overrides only apply when the teacher model is given by name")
        if not hasattr(model, "forward_features"):
            raise TypeError(f"EvaTeacher needs a model with forward_features, got {type(model).__name__}")
        if checkpoint is not None and not next(model.parameters()).is_meta:
            import eva_core

            # strict: a teacher with silently missing weights would give meaningless targets
            eva_core.load_checkpoint(model, checkpoint, strict=True)
        self.model = model
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        self.grid_size = tuple(grid) if grid is not None else None  # type: ignore[assignment]
        self.embed_dim = int(getattr(model, "num_features"))
        self.freeze()

    def extract_patch_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)[:, self.num_prefix_tokens:]
