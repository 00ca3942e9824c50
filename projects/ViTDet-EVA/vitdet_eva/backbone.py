"""ViTDet's backbone on the EVA encoder: ``ViT`` and ``SimpleFeaturePyramid`` (detectron2's names).

``ViT`` *is* ``eva_core.models.eva.Eva`` configured as ViTDet configures its ViT
(``docs/recipes/detection.md#backbone``): no CLS token but a CLS slot kept in ``pos_embed``, which is
stored at ``pretrain_img_size / patch_size`` and resized bicubically (``align_corners=False``, no
antialias, as detectron2's ``get_abs_pos``) to the token grid at run time; window attention in
``window_block_indexes``; decomposed relative positions sized for the window in windowed blocks and
for ``img_size / patch_size`` in global ones; no final norm. Its constructor takes detectron2's
argument names, so ``model.backbone.net.*`` config keys are detectron2's, and its parameters are
named as in EVA-01's detectron2 files (``patch_embed.proj``, ``pos_embed``, ``blocks.{i}.{norm1,
attn.qkv, attn.q_bias, attn.v_bias, attn.rel_pos_h, attn.rel_pos_w, attn.proj, norm2, mlp.fc1,
mlp.fc2}``). Upstream ViTDet files with a full ``attn.qkv.bias`` load too: the bias is split into
``q_bias`` / ``v_bias`` and the k part dropped, which changes nothing because a bias added to every
key shifts each query's logits by a constant, and softmax ignores constants.

``SimpleFeaturePyramid`` follows detectron2's module layout exactly (``simfp_{2..5}`` as
``nn.Sequential`` with detectron2's indices, convs carrying ``.norm``), so ``backbone.simfp_*`` keys
load unchanged.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from eva_core.models.eva import Eva

from .layers import Conv2d, ShapeSpec, get_norm

__all__ = ["Backbone", "ViT", "SimpleFeaturePyramid", "LastLevelMaxPool"]


class Backbone(nn.Module):
    """detectron2's backbone interface: named feature maps with known channels and strides.

    Subclasses fill ``_out_features``, ``_out_feature_channels`` and ``_out_feature_strides``.
    """

    _out_features: list[str]
    _out_feature_channels: dict[str, int]
    _out_feature_strides: dict[str, int]

    @property
    def size_divisibility(self) -> int:
        """Input sides must be multiples of this (0: no constraint)."""
        return 0

    @property
    def padding_constraints(self) -> dict[str, int]:
        """detectron2's padding hints (``size_divisiblity``, sic, and ``square_size``)."""
        return {}

    def output_shape(self) -> dict[str, ShapeSpec]:
        """``{name: ShapeSpec(channels, stride)}`` of every output feature."""
        return {name: ShapeSpec(channels=self._out_feature_channels[name],
                                stride=self._out_feature_strides[name])
                for name in self._out_features}


def _split_qkv_bias(state_dict: dict, prefix: str, *args) -> None:
    """Load-time rename of detectron2's full ``attn.qkv.bias`` to EVA's ``q_bias`` / ``v_bias``."""
    for key in [k for k in state_dict if k.startswith(prefix + "blocks.") and k.endswith(".attn.qkv.bias")]:
        q, _, v = state_dict.pop(key).chunk(3)  # the k bias cannot change attention (module docstring)
        state_dict[key[: -len("qkv.bias")] + "q_bias"] = q
        state_dict[key[: -len("qkv.bias")] + "v_bias"] = v


class ViT(Eva, Backbone):
    """ViTDet's plain ViT backbone (detectron2 ``ViT`` arguments) on the EVA encoder.

    Args:
        img_size: training input size; global blocks size their relative-position tables for
            ``img_size / patch_size`` (other sizes are interpolated at run time).
        patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio: transformer shape.
        qkv_bias: learn ``q_bias`` and ``v_bias`` (EVA's attention bias; see the module docstring).
        drop_path_rate: stochastic depth, linear from 0 over the blocks.
        norm_layer: block norm constructor (detectron2 default: LayerNorm eps 1e-6).
        act_layer: MLP activation constructor.
        use_abs_pos: learn ``pos_embed`` at ``pretrain_img_size``.
        use_rel_pos: decomposed relative positions ``rel_pos_h`` / ``rel_pos_w`` in every block.
        rel_pos_zero_init: zero-initialise them (else truncated normal, std 0.02).
        window_size: window side for ``window_block_indexes`` (0: every block global).
        window_block_indexes: blocks with window attention; the others attend globally.
        residual_block_indexes: detectron2's conv-propagation blocks; EVA uses none and the encoder
            has none, so a non-empty value is refused.
        use_act_checkpoint: recompute each block in the backward pass.
        pretrain_img_size: size the ``pos_embed`` grid is stored at.
        pretrain_use_cls_token: ``pos_embed`` has a CLS slot (dropped at run time).
        out_feature: name of the output feature map.
        beit_like_gamma: EVA-01's layer scale ``gamma_1`` / ``gamma_2`` (initialised to 1).
        freeze_patch_embed: keep the patch embedding fixed (EVA's detection recipe).
        norm_fp32: compute the block LayerNorms in fp32 under autocast (EVA-01's
            ``LayerNormWithForceFP32``); used only with the default ``norm_layer``.
        attn_impl: attention kernel of the encoder (``"auto" | "sdpa" | "xformers" | "math"``).
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        window_block_indexes: Sequence[int] = (),
        residual_block_indexes: Sequence[int] = (),
        use_act_checkpoint: bool = False,
        pretrain_img_size: int = 224,
        pretrain_use_cls_token: bool = True,
        out_feature: str = "last_feat",
        beit_like_gamma: bool = False,
        freeze_patch_embed: bool = False,
        norm_fp32: bool = False,
        attn_impl: str = "auto",
    ):
        if residual_block_indexes:
            raise ValueError(f"residual_block_indexes={list(residual_block_indexes)}: ViTDet's "
                             "conv-propagation blocks are not part of the EVA encoder (EVA's recipe uses "
                             "window + global blocks only); pass ()")
        if img_size % patch_size or pretrain_img_size % patch_size:
            raise ValueError(f"img_size {img_size} and pretrain_img_size {pretrain_img_size} must be "
                             f"multiples of patch_size {patch_size}")
        window_block_indexes = [int(i) for i in window_block_indexes]
        super().__init__(
            img_size=pretrain_img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
            global_pool="", embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias, drop_path_rate=drop_path_rate, norm_eps=1e-6, norm_fp32=norm_fp32,
            init_values=1.0 if beit_like_gamma else None, class_token=False,
            use_abs_pos_emb=use_abs_pos, pos_embed_cls_slot=pretrain_use_cls_token, use_rel_pos=use_rel_pos,
            rel_pos_input_size=(img_size // patch_size, img_size // patch_size),
            window_size=window_size if window_block_indexes else 0,
            window_block_indexes=window_block_indexes if window_size > 0 else None,
            use_fc_norm=False, use_post_transformer_norm=False, attn_impl=attn_impl,
            # detectron2's get_abs_pos: plain bicubic, so shrinking the grid matches it too
            pos_embed_antialias=False, grad_checkpointing=use_act_checkpoint)
        self.img_size = img_size
        self.pretrain_img_size = pretrain_img_size
        self.pretrain_use_cls_token = pretrain_use_cls_token
        for blk in self.blocks:
            if norm_layer is not None:
                blk.norm1, blk.norm2 = norm_layer(embed_dim), norm_layer(embed_dim)
            if act_layer is not nn.GELU:
                blk.mlp.act = act_layer()
            if use_rel_pos and not rel_pos_zero_init:
                trunc_normal_(blk.attn.rel_pos_h, std=0.02)
                trunc_normal_(blk.attn.rel_pos_w, std=0.02)
        if freeze_patch_embed:
            self.patch_embed.requires_grad_(False)
        self._register_load_state_dict_pre_hook(_split_qkv_bias)
        self._out_features = [out_feature]
        self._out_feature_channels = {out_feature: embed_dim}
        self._out_feature_strides = {out_feature: patch_size}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{out_feature: [B, embed_dim, H / patch, W / patch]}`` for images ``[B, C, H, W]``."""
        (feat,) = self.forward_intermediates(x, indices=[-1], intermediates_only=True)
        return {self._out_features[0]: feat}


class LastLevelMaxPool(nn.Module):
    """P6 from P5 by a stride-2, kernel-1 max-pool (detectron2's ``LastLevelMaxPool``)."""

    def __init__(self):
        super().__init__()
        self.num_levels = 1
        self.in_feature = "p5"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


class SimpleFeaturePyramid(Backbone):
    """ViTDet's pyramid from one feature map (detectron2's ``SimpleFeaturePyramid``).

    Args:
        net: a backbone with ``output_shape()`` (normally :class:`ViT`); saved as ``net.*``.
        in_feature: the feature of ``net`` to build from (``"last_feat"``).
        out_channels: channels of every pyramid level (256).
        scale_factors: scales relative to ``in_feature``, from {4, 2, 1, 0.5}; each makes level
            ``p{log2(stride)}`` in a module ``simfp_{log2(stride)}``.
        top_block: extra levels from the last one (``LastLevelMaxPool()`` adds ``p6``) or ``None``.
        norm: norm after each conv (``"LN"``: channels-first LayerNorm; ``""``: none, convs get a bias).
        square_pad: size inputs are padded to (0: none), reported in ``padding_constraints``.

    Raises:
        ValueError: ``net`` lacks ``in_feature``, an unsupported scale, or strides that are not
            consecutive powers of two.
    """

    def __init__(
        self,
        net: nn.Module,
        in_feature: str,
        out_channels: int,
        scale_factors: Sequence[float],
        top_block: nn.Module | None = None,
        norm: str = "LN",
        square_pad: int = 0,
    ):
        super().__init__()
        if not callable(getattr(net, "output_shape", None)):
            raise ValueError("net must be a backbone with output_shape() (e.g. ViT), "
                             f"got {type(net).__name__}")
        input_shapes = net.output_shape()
        if in_feature not in input_shapes:
            raise ValueError(f"in_feature={in_feature!r} is not an output of {type(net).__name__}: "
                             f"{sorted(input_shapes)}")
        self.scale_factors = tuple(scale_factors)
        strides = [int(input_shapes[in_feature].stride / scale) for scale in self.scale_factors]
        for a, b in zip(strides, strides[1:]):
            if b != 2 * a:
                raise ValueError(f"scale_factors {self.scale_factors} give strides {strides}: each level "
                                 "must have twice the stride of the previous one")
        dim = input_shapes[in_feature].channels
        use_bias = norm == ""
        self.stages = []
        for scale, stride in zip(self.scale_factors, strides):
            layers, out_dim = self._resample_layers(float(scale), dim, norm)
            layers += [
                Conv2d(out_dim, out_channels, kernel_size=1, bias=use_bias,
                       norm=get_norm(norm, out_channels)),
                Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=use_bias,
                       norm=get_norm(norm, out_channels)),
            ]
            stage = nn.Sequential(*layers)
            level = int(math.log2(stride))
            self.add_module(f"simfp_{level}", stage)
            self.stages.append(stage)
        self.net = net
        self.in_feature = in_feature
        self.top_block = top_block
        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            for s in range(level, level + top_block.num_levels):
                self._out_feature_strides[f"p{s + 1}"] = 2 ** (s + 1)
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        self._size_divisibility = strides[-1]
        self._square_pad = square_pad

    @staticmethod
    def _resample_layers(scale: float, dim: int, norm: str) -> tuple[list[nn.Module], int]:
        """The up/down-sampling head of one level and its output channels (detectron2's indices)."""
        if scale == 4.0:
            # Identity keeps detectron2's indices (and runs) when norm="" gives no norm module
            return [nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
                    get_norm(norm, dim // 2) or nn.Identity(), nn.GELU(),
                    nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2)], dim // 4
        if scale == 2.0:
            return [nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)], dim // 2
        if scale == 1.0:
            return [], dim
        if scale == 0.5:
            return [nn.MaxPool2d(kernel_size=2, stride=2)], dim
        raise ValueError(f"scale_factor={scale} is not supported: expected 4.0, 2.0, 1.0 or 0.5")

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> dict[str, int]:
        # detectron2's key is spelled "size_divisiblity"; kept so its preprocessing code reads it
        return {"size_divisiblity": self._size_divisibility, "square_size": self._square_pad}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"p2": ..., "p6": ...}`` (high to low resolution) for images ``[B, C, H, W]``."""
        bottom_up = self.net(x)
        features = bottom_up[self.in_feature]
        results = [stage(features) for stage in self.stages]
        if self.top_block is not None:
            src = self.top_block.in_feature
            top_in = bottom_up[src] if src in bottom_up else results[self._out_features.index(src)]
            results.extend(self.top_block(top_in))
        return dict(zip(self._out_features, results))
