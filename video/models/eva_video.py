"""EVA video encoder: the image EVA with a tubelet patch embedding and joint space-time attention.

``docs/recipes/video.md#video-encoder``: a Conv3d patch embedding (tubelet 1 as EVA, 2 as an option)
turns a clip ``[B, T, 3, H, W]`` into ``T/t * H/p * W/p`` tokens in frame-major order (all patches of
frame 0, then frame 1, ...); a CLS token is prepended, the position table ``[1, 1 + T*N, C]`` (the
image table repeated per frame when inflated) is added, and every block attends over all
``1 + T*N`` tokens. The head is mean pooling over the patch tokens, ``fc_norm`` and a linear layer.

The blocks are ``eva_core``'s :class:`~eva_core.models.eva.EvaBlock`; parameter names and shapes are
those of the EVA-01 video release (``patch_embed.proj.weight [C, 3, t, p, p]``, ``pos_embed
[1, 1 + T*N, C]``, ``q_bias`` / ``v_bias``, ``fc_norm``, ``head``), so its files load key for key.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import torch
import torch.nn as nn
from timm.layers import LayerNorm, LayerNormFp32, trunc_normal_
from torch.utils.checkpoint import checkpoint

from eva_core.layers import resample_abs_pos_embed_3d
from eva_core.models.eva import EvaBlock
from eva_core.models.registry import create_model, list_models, register_model

__all__ = ["PatchEmbed3D", "EvaVideo", "create_video_model", "list_video_models", "temporal_sincos",
           "VIDEO_MODEL_PREFIX"]

VIDEO_MODEL_PREFIX = "eva_video_"


class PatchEmbed3D(nn.Module):
    """Clip ``[B, T, C, H, W]`` -> tokens ``[B, T/t * H/p * W/p, D]`` in frame-major order.

    Args:
        img_size: training frame size (sets ``grid_size``; other multiples of the patch run too).
        num_frames: training clip length (sets ``num_frames_out = num_frames / tubelet_size``).
        patch_size: spatial patch side ``p``.
        tubelet_size: frames per token ``t``.
        in_chans: input channels.
        embed_dim: token width ``D``.
    """

    def __init__(self, img_size: int = 224, num_frames: int = 8, patch_size: int = 14, tubelet_size: int = 1,
                 in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        if tubelet_size < 1 or num_frames % tubelet_size:
            raise ValueError(f"num_frames={num_frames} must be a positive multiple of "
                             f"tubelet_size={tubelet_size}")
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} is not a multiple of patch_size={patch_size}")
        self.patch_size = (patch_size, patch_size)
        self.tubelet_size = tubelet_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_frames_out = num_frames // tubelet_size
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(tubelet_size, patch_size, patch_size),
                              stride=(tubelet_size, patch_size, patch_size))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Tokens ``[B, T'*H'*W', D]`` and the token grid ``(T', H', W')``.

        Raises:
            ValueError: ``x`` is not ``[B, T, C, H, W]`` with T a multiple of the tubelet and H, W of
                the patch.
        """
        if x.ndim != 5:
            raise ValueError(f"expected a clip [B, T, C, H, W], got shape {tuple(x.shape)}")
        b, t, c, h, w = x.shape
        p = self.patch_size[0]
        if t % self.tubelet_size or h % p or w % p:
            raise ValueError(f"clip [B, T, C, H, W] = {tuple(x.shape)}: T must be a multiple of the tubelet "
                             f"{self.tubelet_size} and H, W of the patch {p}")
        if c != self.proj.in_channels:
            raise ValueError(f"clip has {c} channels at dim 2 ([B, T, C, H, W]); the model expects "
                             f"{self.proj.in_channels}")
        x = self.proj(x.transpose(1, 2))  # Conv3d reads [B, C, T, H, W]
        grid = tuple(x.shape[2:])
        # flatten (T', H', W') in that order: frame-major tokens, as the release's pos_embed is laid out
        return x.flatten(2).transpose(1, 2), grid


def temporal_sincos(num_slots: int, dim: int, max_period: float = 100.0) -> torch.Tensor:
    """Sin-cos code ``[num_slots, dim]`` of the temporal token slots (transformer style: channel pairs
    ``(sin, cos)`` of ``t * max_period ** (-2i / dim)``, periods from 2 pi to 2 pi * ``max_period`` slots)."""
    if dim % 2:
        raise ValueError(f"temporal_sincos: dim must be even, got {dim}")
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(max_period) / dim))
    angles = torch.arange(num_slots, dtype=torch.float32)[:, None] * freqs
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)


class EvaVideo(nn.Module):
    """EVA video classifier (joint space-time attention, ``docs/recipes/video.md#video-encoder``).

    Args:
        img_size: frame size the position table is stored for.
        num_frames: clip length the position table is stored for (8 in stage 1, 16 in stage 2).
        tubelet_size: frames per token (1 as EVA; 2 halves the tokens).
        patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: as the image ``Eva``.
        num_classes: classifier outputs (0: ``head`` is Identity).
        drop_rate: dropout before the head. pos_drop_rate: after the position embedding.
        proj_drop_rate, attn_drop_rate, drop_path_rate: block regularisation (drop path linear in depth).
        norm_eps: LayerNorm epsilon. norm_fp32: LayerNorms computed in fp32 (the release does).
        init_values: layer scale (``None``: off, as EVA-01).
        init_std: truncated-normal std of the initial weights. head_init_scale: scale of the initial head.
        attn_impl: attention kernel (``"auto" | "sdpa" | "xformers" | "math"``).
        pos_embed_interpolation: ``"trilinear"`` (or ``"nearest"``) resize of the position table when a
            clip's frames or size differ from the stored ones.
        grad_checkpointing: recompute each block in backward (activation checkpointing switch).
    """

    def __init__(
        self,
        img_size: int = 224,
        num_frames: int = 8,
        tubelet_size: int = 1,
        patch_size: int = 14,
        in_chans: int = 3,
        num_classes: int = 400,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        norm_fp32: bool = False,
        init_values: float | None = None,
        init_std: float = 0.02,
        head_init_scale: float = 0.001,
        attn_impl: str = "auto",
        pos_embed_interpolation: str = "trilinear",
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.init_std = init_std
        self.head_init_scale = head_init_scale
        self.pos_embed_interpolation = pos_embed_interpolation
        self.grad_checkpointing = bool(grad_checkpointing)
        norm_layer = partial(LayerNormFp32 if norm_fp32 else LayerNorm, eps=norm_eps)

        self.patch_embed = PatchEmbed3D(img_size, num_frames, patch_size, tubelet_size, in_chans, embed_dim)
        self.patch_size = self.patch_embed.patch_size
        self.tubelet_size = tubelet_size
        self.num_frames = num_frames
        t, (h, w) = self.patch_embed.num_frames_out, self.patch_embed.grid_size
        self.token_grid = (t, h, w)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + t * h * w, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList([
            EvaBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                     attn_drop=attn_drop_rate, drop_path=dpr[i], norm_layer=norm_layer,
                     init_values=init_values, num_prefix_tokens=1, attn_impl=attn_impl)
            for i in range(depth)])
        # mean pooling: the final norm is fc_norm after pooling, as in the release (norm is Identity)
        self.norm = nn.Identity()
        self.fc_norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    # ------------------------------------------------------------------ init and timm API
    def init_weights(self) -> None:
        """Trunc-normal weights and tokens, zero biases, ``attn.proj`` / ``mlp.fc2`` scaled by
        1/sqrt(2 * layer_id) and a scaled-down head (EVA's rules, as the image model)."""
        if self.pos_embed.is_meta:
            return  # meta models are for counting parameters and shapes
        for p in (self.cls_token, self.pos_embed):
            trunc_normal_(p, std=self.init_std)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv3d)):
                trunc_normal_(m.weight, std=self.init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            for layer_id, blk in enumerate(self.blocks, start=1):
                blk.attn.proj.weight.div_((2.0 * layer_id) ** 0.5)
                blk.mlp.fc2.weight.div_((2.0 * layer_id) ** 0.5)
            if isinstance(self.head, nn.Linear):
                self.head.weight.mul_(self.head_init_scale)
                self.head.bias.mul_(self.head_init_scale)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Tokens and the position table are exempt from weight decay."""
        return {"pos_embed", "cls_token"}

    @property
    def num_layers(self) -> int:
        """Number of blocks (``L`` in the layer-decay rule)."""
        return len(self.blocks)

    def get_layer_id(self, name: str) -> int:
        """Layer id for layer-wise lr decay: stem 0, ``blocks.i`` -> i + 1, the rest L + 1 (as ``Eva``)."""
        if name.startswith(("cls_token", "pos_embed", "patch_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_layers + 1

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm layer-decay groups: stem, one per block, the rest last."""
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed", blocks=[(r"^blocks\.(\d+)", None)])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward (torch.utils.checkpoint, non-reentrant)."""
        self.grad_checkpointing = enable

    def add_temporal_position_code(self, scale: float) -> None:
        """Add ``scale *`` :func:`temporal_sincos` of each token's temporal slot to ``pos_embed`` (not CLS).

        An inflated table is the image table repeated per frame, so at tubelet 1 every frame's tokens
        carry the same positions and joint attention with mean pooling cannot tell a clip from its time
        reversal (``moving_left`` from ``moving_right``); this code breaks that symmetry at the start.
        The table stays a learned parameter; the EVA-01 release does not do this (default off in
        :func:`create_video_model`). See docs/recipes/video.md#toy-world-proof for the measured effect.
        """
        t, h, w = self.token_grid
        code = temporal_sincos(t, self.embed_dim).repeat_interleave(h * w, dim=0)
        with torch.no_grad():
            self.pos_embed[0, self.num_prefix_tokens:] += scale * code.to(self.pos_embed)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a fresh ``num_classes`` classifier (0: Identity)."""
        self.num_classes = num_classes
        ref = self.fc_norm.weight
        self.head = nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype) \
            if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_(self.head.weight, std=self.init_std)
            nn.init.zeros_(self.head.bias)
            with torch.no_grad():
                self.head.weight.mul_(self.head_init_scale)

    # ------------------------------------------------------------------ forward
    def resized_pos_embed(self, token_grid: Sequence[int]) -> torch.Tensor:
        """``pos_embed`` for a ``(T', H', W')`` token grid, trilinearly resized when it differs."""
        return resample_abs_pos_embed_3d(self.pos_embed, token_grid, self.token_grid, num_prefix_tokens=1,
                                         interpolation=self.pos_embed_interpolation)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Tokens ``[B, 1 + T'*H'*W', C]`` (CLS, then frame-major patches) with positions added."""
        x, grid = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.resized_pos_embed(grid).to(x.dtype)
        return self.pos_drop(x), grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, 1 + T'*H'*W', C]`` after all blocks, for a clip ``[B, T, C, H, W]``."""
        x, _ = self.embed(x)
        for blk in self.blocks:
            # joint space-time attention needs no grid: no relative positions in the video model
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, None, use_reentrant=False)
            else:
                x = blk(x, None)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Mean over the patch tokens, ``fc_norm``, dropout and (unless ``pre_logits``) the head."""
        x = self.fc_norm(x[:, self.num_prefix_tokens:].mean(dim=1))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` for a clip ``[B, T, C, H, W]``."""
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------- registry
_GIANT = dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=6144 / 1408)


def _register_video_models() -> None:
    if f"{VIDEO_MODEL_PREFIX}giant_patch14_224_f8" in list_models():
        return  # the module was imported twice (e.g. as video.models and via a path alias)
    # EVA-g video: stage 1 on K-722 at 8 frames, stage 2 at 16 frames
    # (docs/recipes/video.md#stage-1-kinetics-722, #stage-2-per-dataset-fine-tuning)
    register_model(f"{VIDEO_MODEL_PREFIX}giant_patch14_224_f8", EvaVideo, img_size=224, patch_size=14,
                   num_frames=8, tubelet_size=1, num_classes=722, norm_fp32=True, **_GIANT)
    register_model(f"{VIDEO_MODEL_PREFIX}giant_patch14_224_f16", EvaVideo, img_size=224, patch_size=14,
                   num_frames=16, tubelet_size=1, num_classes=400, norm_fp32=True, **_GIANT)
    # a tiny member for tests and the toy world (CPU budget)
    register_model(f"{VIDEO_MODEL_PREFIX}tiny_patch14_224_f8", EvaVideo, img_size=224, patch_size=14,
                   num_frames=8, tubelet_size=1, num_classes=400, embed_dim=192, depth=12, num_heads=3,
                   mlp_ratio=4.0)


def list_video_models(pattern: str | None = None) -> list[str]:
    """Registered video model names (``eva_video_*``), optionally filtered by a shell pattern."""
    return [n for n in list_models(pattern) if n.startswith(VIDEO_MODEL_PREFIX)]


def create_video_model(name: str, checkpoint_path: str | None = None, temporal_pos_init: float = 0.0,
                       **overrides: Any) -> EvaVideo:
    """Build a registered video model; with ``checkpoint_path``, load it through :func:`load_video_checkpoint`
    (image checkpoints are inflated, video files resampled to the model's frames and size).

    ``temporal_pos_init`` > 0 adds that multiple of a sin-cos code of the temporal slot to the position
    table after loading (:meth:`EvaVideo.add_temporal_position_code`; for inflated or random tables at
    tubelet 1, off as in the release).

    Raises:
        ValueError: ``name`` is not a registered video model, or an unknown override.
    """
    if name not in list_video_models():
        raise ValueError(f"unknown video model {name!r}; registered: {list_video_models()}")
    model = create_model(name, **overrides)
    if checkpoint_path is not None:
        from .video_layouts import load_video_checkpoint

        model.load_report = load_video_checkpoint(model, checkpoint_path)
    if temporal_pos_init:
        model.add_temporal_position_code(float(temporal_pos_init))
    return model


_register_video_models()
