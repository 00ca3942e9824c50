"""EVA vision transformer: attention, block and model (EVA-01, "Exploring the Limits of Masked
Visual Representation Learning at Scale").

One model class serves every task:

* MIM pre-training: ``use_mask_token=True`` and ``forward_features(x, mask)``; masked patch
  embeddings are replaced by ``mask_token`` before the CLS token and position embedding are added.
* classification: mean pooling + ``fc_norm`` (``global_pool="avg"``) or CLS pooling, ``head``.
* detection / segmentation backbones: ``class_token=False`` (the position table may keep its CLS
  slot, ``pos_embed_cls_slot=True``), windowed attention in all blocks except
  ``global_block_indexes`` or in ``window_block_indexes``, decomposed relative positions
  (``use_rel_pos=True``) and ``forward_intermediates`` for 2-D feature maps.

Parameter names follow the official EVA-01 release and timm's ``Eva`` (``qkv`` without bias plus
``q_bias`` / ``v_bias``, ``gamma_1`` / ``gamma_2`` layer scale, ``fc_norm``, ``head``), so their
state dicts load without renaming.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from timm.layers import DropPath, LayerNorm, LayerNormFp32, Mlp, PatchEmbed, trunc_normal_

from ..layers.attention import ATTN_IMPL_ENV, ATTN_IMPLS, as_additive_mask, attention_fn, resolve_attn_impl
from ..layers.pos_embed import resample_pos_embed_grid
from ..layers.rel_pos import decomposed_rel_pos_bias
from ..layers.rel_pos_bias import RelativePositionBias, rel_pos_bias_from_table, rel_pos_table_size
from ..layers.window import window_partition, window_unpartition

__all__ = ["Eva", "EvaAttention", "EvaBlock", "RelativePositionBias", "resolve_attn_impl", "ATTN_IMPLS",
           "ATTN_IMPL_ENV"]


class EvaAttention(nn.Module):
    """Multi-head self-attention with EVA's q/v-only bias and optional relative positions.

    Args:
        dim: token width.
        num_heads: attention heads.
        qkv_bias: learn ``q_bias`` and ``v_bias`` (the k bias is fixed at zero).
        attn_drop: dropout on attention probabilities.
        proj_drop: dropout after the output projection.
        num_prefix_tokens: tokens before the spatial grid (CLS); relative positions skip them.
        rel_pos_bias_window: learn a per-block BEiT bias table for this grid (``None``: off).
        use_rel_pos: learn decomposed relative positions ``rel_pos_h``/``rel_pos_w``.
        rel_pos_input_size: grid ``(H, W)`` the decomposed tables are sized for (2S-1 rows).
        inner_norm: LayerNorm on the attention output before ``proj`` (EVA-CLIP's ``inner_attn_ln``).
        norm_layer: norm constructor for ``inner_norm``.
        attn_impl: ``"auto" | "sdpa" | "xformers" | "math"``; resolved to a kernel here, once
            (assigning ``attn_impl`` later resolves again).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        num_prefix_tokens: int = 1,
        rel_pos_bias_window: Sequence[int] | None = None,
        use_rel_pos: bool = False,
        rel_pos_input_size: Sequence[int] | None = None,
        inner_norm: bool = False,
        norm_layer: Callable[..., nn.Module] = LayerNorm,
        attn_impl: str = "auto",
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.num_prefix_tokens = num_prefix_tokens
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.rel_pos_bias_window = tuple(rel_pos_bias_window) if rel_pos_bias_window is not None else None
        if self.rel_pos_bias_window is not None:
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros(rel_pos_table_size(self.rel_pos_bias_window, num_prefix_tokens > 0), num_heads))
        else:
            self.relative_position_bias_table = None
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if rel_pos_input_size is None:
                raise ValueError("use_rel_pos=True needs rel_pos_input_size=(H, W)")
            # zero init: the ViTDet recipe starts from "no relative position"
            # (docs/recipes/detection.md#backbone)
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_input_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_input_size[1] - 1, self.head_dim))
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(dim) if inner_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.attn_impl = attn_impl  # resolves the kernel (property setter)

    @property
    def attn_impl(self) -> str:
        """The requested kernel name (``"auto"`` included); ``attn_backend`` is what it resolved to."""
        return self._attn_impl

    @attn_impl.setter
    def attn_impl(self, attn_impl: str) -> None:
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl={attn_impl!r} is not one of {ATTN_IMPLS}")
        # the module's own position biases are known now; a shared bias or a mask may still come at
        # call time, which the "auto" xformers choice handles by falling back to SDPA
        own_bias = self.relative_position_bias_table is not None or self.use_rel_pos
        backend = resolve_attn_impl(attn_impl, has_bias=own_bias)
        self._attn_impl, self.attn_backend = attn_impl, backend
        self._attn_fn = attention_fn(backend, forced=attn_impl != "auto")

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)  # each [B, heads, N, head_dim]

    def _position_bias(self, q: torch.Tensor, grid_size: Sequence[int] | None,
                       rel_pos_bias: torch.Tensor | None) -> torch.Tensor | None:
        """Sum of shared, per-block and decomposed relative-position biases ``[B|1, heads, N, N]``."""
        bias = None if rel_pos_bias is None else rel_pos_bias.unsqueeze(0)
        if self.relative_position_bias_table is not None or self.use_rel_pos:
            if grid_size is None:
                raise ValueError("relative positions need grid_size=(H, W) of the spatial tokens")
        if self.relative_position_bias_table is not None:
            table_bias = rel_pos_bias_from_table(self.relative_position_bias_table, self.rel_pos_bias_window,
                                                 grid_size, self.num_prefix_tokens > 0).unsqueeze(0)
            bias = table_bias if bias is None else bias + table_bias
        if self.use_rel_pos:
            p = self.num_prefix_tokens
            spatial = decomposed_rel_pos_bias(q[:, :, p:], self.rel_pos_h, self.rel_pos_w, grid_size)
            if p:
                # decomposed positions only relate grid tokens; prefix rows/columns get no bias
                spatial = F.pad(spatial, (p, 0, p, 0))
            bias = spatial if bias is None else bias + spatial
        return bias.to(q.dtype) if bias is not None else None

    def forward(
        self,
        x: torch.Tensor,
        grid_size: Sequence[int] | None = None,
        rel_pos_bias: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend over ``x`` ``[B, N, C]``.

        Args:
            x: tokens, ``num_prefix_tokens`` prefix tokens followed by an ``H*W`` grid.
            grid_size: ``(H, W)`` of the grid, needed for relative positions.
            rel_pos_bias: shared bias ``[heads, N, N]`` added to the logits.
            attn_mask: bool (True = attend) or additive float mask broadcastable to ``[B, heads, N, N]``.
        """
        b, n, c = x.shape
        q, k, v = self._qkv(x)
        bias = self._position_bias(q, grid_size, rel_pos_bias)
        if attn_mask is not None:
            mask = as_additive_mask(attn_mask, q.dtype)
            bias = mask if bias is None else bias + mask
        drop = self.attn_drop.p if self.training else 0.0
        out = self._attn_fn(q, k, v, bias, drop, self.scale)
        out = out.transpose(1, 2).reshape(b, n, c)
        out = self.norm(out)
        return self.proj_drop(self.proj(out))


class EvaBlock(nn.Module):
    """Pre-norm transformer block: ``x + drop_path(gamma_1 * attn(norm1(x)))``, same for the MLP.

    Args:
        window_size: > 0 runs attention inside non-overlapping ``window_size`` windows of the grid
            (the sequence must then have no prefix tokens).
        init_values: layer-scale init (``None``: no layer scale, the EVA-01 default).
        mlp_norm: LayerNorm inside the MLP (EVA-CLIP's ``ffn_ln``).
        Other arguments as in ``EvaAttention``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[..., nn.Module] = LayerNorm,
        init_values: float | None = None,
        num_prefix_tokens: int = 1,
        window_size: int = 0,
        rel_pos_bias_window: Sequence[int] | None = None,
        use_rel_pos: bool = False,
        rel_pos_input_size: Sequence[int] | None = None,
        inner_norm: bool = False,
        mlp_norm: bool = False,
        attn_impl: str = "auto",
    ):
        super().__init__()
        if window_size > 0 and num_prefix_tokens:
            raise ValueError("window attention needs a sequence without prefix tokens: build the model "
                             "with class_token=False (pos_embed_cls_slot=True keeps a CLS slot in pos_embed)")
        self.window_size = window_size
        self.norm1 = norm_layer(dim)
        self.attn = EvaAttention(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
            num_prefix_tokens=num_prefix_tokens, rel_pos_bias_window=rel_pos_bias_window,
            use_rel_pos=use_rel_pos,
            rel_pos_input_size=(window_size, window_size) if window_size > 0 else rel_pos_input_size,
            inner_norm=inner_norm, norm_layer=norm_layer, attn_impl=attn_impl)
        layer_scale = init_values is not None
        self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values))) if layer_scale else None
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU,
                       norm_layer=norm_layer if mlp_norm else None, drop=proj_drop)
        self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values))) if layer_scale else None
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def _attend(self, x: torch.Tensor, grid_size: Sequence[int],
                rel_pos_bias: torch.Tensor | None) -> torch.Tensor:
        if self.window_size <= 0:
            return self.attn(x, grid_size, rel_pos_bias)
        b, n, c = x.shape
        h, w = grid_size
        windows, padded = window_partition(x.view(b, h, w, c), self.window_size)
        windows = self.attn(windows, (self.window_size, self.window_size))
        return window_unpartition(windows, self.window_size, padded, (h, w)).view(b, n, c)

    def forward(self, x: torch.Tensor, grid_size: Sequence[int],
                rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Run the block on ``x`` ``[B, N, C]`` whose spatial tokens form ``grid_size``."""
        y = self._attend(self.norm1(x), grid_size, rel_pos_bias)
        if self.gamma_1 is not None:
            y = self.gamma_1 * y
        x = x + self.drop_path1(y)
        y = self.mlp(self.norm2(x))
        if self.gamma_2 is not None:
            y = self.gamma_2 * y
        return x + self.drop_path2(y)


class Eva(nn.Module):
    """EVA vision transformer (timm-compatible API and parameter names).

    Args:
        img_size: training image size; the absolute position grid is ``img_size / patch_size``.
            Any input whose sides are multiples of ``patch_size`` is accepted: the grid is resized
            bicubically at run time.
        patch_size: patch (conv kernel and stride) size.
        in_chans: input channels.
        num_classes: classifier outputs (0: ``head`` is Identity).
        global_pool: ``"avg"`` (mean of grid tokens), ``"token"`` (CLS) or ``""`` (no pooling).
        embed_dim, depth, num_heads, mlp_ratio: transformer size (MLP hidden = int(dim * mlp_ratio)).
        qkv_bias: learn ``q_bias``/``v_bias``.
        drop_rate: dropout before the head. pos_drop_rate: after the position embedding.
        proj_drop_rate, attn_drop_rate: dropout in blocks.
        drop_path_rate: stochastic depth, linear from 0 to this value over the blocks.
        norm_eps: LayerNorm epsilon (1e-6 in EVA).
        norm_fp32: compute LayerNorms in fp32 under fp16/bf16 (as the EVA release does).
        init_values: layer-scale init (``None``: off).
        class_token: prepend a CLS token.
        use_mask_token: learn ``mask_token`` for MIM (``forward_features(x, mask)``).
        use_abs_pos_emb: learn ``pos_embed``.
        pos_embed_cls_slot: ``pos_embed`` has a CLS entry (default: ``class_token``); with
            ``class_token=False`` the slot is stored but not used (ViTDet convention).
        use_rel_pos_bias: per-block BEiT relative-position bias tables.
        use_shared_rel_pos_bias: one BEiT table shared by all blocks (``rel_pos_bias.*``).
        use_rel_pos: decomposed relative positions ``rel_pos_h``/``rel_pos_w`` in every block.
        rel_pos_input_size: grid the global-block decomposed tables are sized for (default: the patch grid).
        window_size: window side (in tokens) for windowed blocks (0: all blocks global).
        window_block_indexes: blocks that use windowed attention. If ``None`` and ``window_size > 0``,
            every block not in ``global_block_indexes`` is windowed.
        global_block_indexes: blocks with global attention when ``window_block_indexes`` is ``None``.
        attn_inner_norm: EVA-CLIP's LayerNorm inside attention. mlp_norm: LayerNorm inside the MLP.
        use_fc_norm: norm after pooling (default: on for ``avg`` pooling, like timm).
        use_post_transformer_norm: final ``norm`` after the blocks (default: on unless ``fc_norm`` is).
        init_std: truncated-normal std for weights and tokens (0.015 in EVA).
        head_init_scale: scale of the initial classifier weights.
        attn_impl: ``"auto" | "sdpa" | "xformers" | "math"`` (``auto`` honours ``EVA_ATTN_IMPL``).
        pos_embed_interpolation: mode used to resize the position grid at run time.
        pos_embed_antialias: antialias when shrinking the grid (timm's default: True).
        grad_checkpointing: activation checkpointing of every block in training (config switch;
            same as ``set_grad_checkpointing()``).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
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
        class_token: bool = True,
        use_mask_token: bool = False,
        use_abs_pos_emb: bool = True,
        pos_embed_cls_slot: bool | None = None,
        use_rel_pos_bias: bool = False,
        use_shared_rel_pos_bias: bool = False,
        use_rel_pos: bool = False,
        rel_pos_input_size: Sequence[int] | None = None,
        window_size: int = 0,
        window_block_indexes: Sequence[int] | None = None,
        global_block_indexes: Sequence[int] = (),
        attn_inner_norm: bool = False,
        mlp_norm: bool = False,
        use_fc_norm: bool | None = None,
        use_post_transformer_norm: bool | None = None,
        init_std: float = 0.015,
        head_init_scale: float = 0.001,
        attn_impl: str = "auto",
        pos_embed_interpolation: str = "bicubic",
        pos_embed_antialias: bool = True,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if global_pool not in ("", "avg", "token"):
            raise ValueError(f"global_pool={global_pool!r}: expected 'avg', 'token' or ''")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl={attn_impl!r} is not one of {ATTN_IMPLS}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.depth = depth
        self.num_prefix_tokens = 1 if class_token else 0
        self.pos_embed_cls_slot = class_token if pos_embed_cls_slot is None else pos_embed_cls_slot
        self.init_std = init_std
        self.pos_embed_interpolation = pos_embed_interpolation
        self.pos_embed_antialias = pos_embed_antialias
        self.grad_checkpointing = bool(grad_checkpointing)  # a config switch; also set_grad_checkpointing()
        norm_cls = LayerNormFp32 if norm_fp32 else LayerNorm
        norm_layer = partial(norm_cls, eps=norm_eps)

        fc_norm = global_pool == "avg" if use_fc_norm is None else use_fc_norm
        post_norm = (not fc_norm) if use_post_transformer_norm is None else use_post_transformer_norm

        # NHWC output and non-strict size: the grid is read from the input at run time
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim, strict_img_size=False, output_fmt="NHWC")
        self.patch_size = self.patch_embed.patch_size
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_mask_token else None
        n_pos = grid[0] * grid[1] + (1 if self.pos_embed_cls_slot else 0)
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, embed_dim)) if use_abs_pos_emb else None
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.rel_pos_bias = (RelativePositionBias(grid, num_heads, class_token)
                             if use_shared_rel_pos_bias else None)

        if window_size > 0 and window_block_indexes is None:
            window_block_indexes = [i for i in range(depth) if i not in set(global_block_indexes)]
        window_blocks = set(window_block_indexes or ())
        if any(not 0 <= i < depth for i in window_blocks):
            raise ValueError(f"window_block_indexes {sorted(window_blocks)} out of range for depth {depth}")
        if window_blocks and window_size <= 0:
            raise ValueError("window_block_indexes given but window_size is 0")
        self.window_block_indexes = tuple(sorted(window_blocks))
        rel_pos_input_size = tuple(rel_pos_input_size) if rel_pos_input_size is not None else grid
        # plain Python (not torch.linspace) so the model also builds under torch.device('meta')
        dpr = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList([
            EvaBlock(
                embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate, drop_path=dpr[i], norm_layer=norm_layer, init_values=init_values,
                num_prefix_tokens=self.num_prefix_tokens,
                window_size=window_size if i in window_blocks else 0,
                rel_pos_bias_window=grid if use_rel_pos_bias else None,
                use_rel_pos=use_rel_pos, rel_pos_input_size=rel_pos_input_size,
                inner_norm=attn_inner_norm, mlp_norm=mlp_norm, attn_impl=attn_impl)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim) if post_norm else nn.Identity()
        self.fc_norm = norm_layer(embed_dim) if fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head_init_scale = head_init_scale
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=self.patch_size[0])
                             for i in range(depth)]
        self.pretrained_cfg: dict[str, Any] = {}
        self.init_weights()

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """EVA init: trunc-normal(``init_std``) weights and tokens, zero biases, unit LayerNorms,
        ``attn.proj`` / ``mlp.fc2`` weights divided by sqrt(2 * layer_id), scaled-down head."""
        if self.parameters().__next__().is_meta:
            return  # nothing to fill; meta models are for counting and shape inference
        std = self.init_std
        for t in (self.cls_token, self.mask_token, self.pos_embed):
            if t is not None:
                trunc_normal_(t, std=std)
        self.apply(self._init_module)
        with torch.no_grad():
            for layer_id, blk in enumerate(self.blocks, start=1):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * layer_id))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * layer_id))
            if isinstance(self.head, nn.Linear):
                self.head.weight.mul_(self.head_init_scale)
                self.head.bias.mul_(self.head_init_scale)

    def _init_module(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            trunc_normal_(m.weight, std=self.init_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names exempt from weight decay: tokens, position embedding and BEiT bias tables."""
        nwd = {"pos_embed", "cls_token", "mask_token"}
        nwd |= {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}
        return nwd

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm's layer-decay helpers: stem, one group per block, the rest last.

        Everything the patterns leave out (final ``norm``, ``fc_norm``, ``head`` and the shared
        ``rel_pos_bias`` table) lands in timm's trailing group, ``L + 1``, which is BEiT's and EVA's
        layer-decay rule (:meth:`get_layer_id`), so ``timm.optim.param_groups_layer_decay`` and
        ``eva_core.optim.param_groups_layer_decay`` agree. timm's own ``Beit`` / ``Eva`` matchers
        differ: ``Beit`` files the shared table under the stem, and both merge the final ``norm``
        into the last block (their ``(r"^norm", (99999,))`` entry).
        """
        return dict(
            stem=r"^cls_token|^mask_token|^pos_embed|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None)],
        )

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks (``L`` in the layer-decay rule)."""
        return len(self.blocks)

    def get_layer_id(self, name: str) -> int:
        """Layer id of a parameter for layer-wise lr decay (EVA/BEiT rule).

        0 for ``cls_token``/``mask_token``/``pos_embed``/``patch_embed``; ``blocks.i.*`` -> i + 1;
        everything else (final norms, head, shared relative-position bias) -> L + 1. BEiT's
        ``get_num_layer_for_vit``, which EVA's fine-tuning code uses, gives ``rel_pos_bias`` the
        last layer too (``docs/recipes/classification.md#layer-wise-lr-decay``).
        """
        if name.startswith(("cls_token", "mask_token", "pos_embed", "patch_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_layers + 1

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (torch.utils.checkpoint, non-reentrant)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh ``num_classes`` classifier (0: Identity), optionally re-pool."""
        if global_pool is not None:
            if global_pool not in ("", "avg", "token"):
                raise ValueError(f"global_pool={global_pool!r}: expected 'avg', 'token' or ''")
            if global_pool == "token" and self.cls_token is None:
                raise ValueError("global_pool='token' needs a class token")
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = self.patch_embed.proj.weight
        self.head = nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype) \
            if num_classes > 0 else nn.Identity()
        if num_classes > 0 and not ref.is_meta:
            trunc_normal_(self.head.weight, std=self.init_std)
            nn.init.zeros_(self.head.bias)
            with torch.no_grad():
                self.head.weight.mul_(self.head_init_scale)

    def set_attn_impl(self, attn_impl: str) -> None:
        """Switch every block's attention kernel (``"auto" | "sdpa" | "xformers" | "math"``)."""
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl={attn_impl!r} is not one of {ATTN_IMPLS}")
        for blk in self.blocks:
            blk.attn.attn_impl = attn_impl

    # ------------------------------------------------------------------ forward
    def resized_pos_embed(self, grid_size: Sequence[int]) -> torch.Tensor | None:
        """``pos_embed`` for a token grid, bicubically resized from the stored grid when they differ.

        The CLS slot is dropped when the model has no CLS token (ViTDet convention).
        """
        if self.pos_embed is None:
            return None
        slot = 1 if self.pos_embed_cls_slot else 0
        pos = resample_pos_embed_grid(self.pos_embed, grid_size, num_prefix_tokens=slot,
                                      old_grid=self.patch_embed.grid_size,
                                      interpolation=self.pos_embed_interpolation,
                                      antialias=self.pos_embed_antialias)
        if slot and self.cls_token is None:
            pos = pos[:, 1:]
        return pos

    def embed(self, x: torch.Tensor,
              mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patchify, apply the MIM mask, prepend CLS and add the position embedding.

        Args:
            x: images ``[B, C, H, W]`` with H and W multiples of the patch size.
            mask: optional bool ``[B, N]`` (N = grid tokens); True patches are replaced by ``mask_token``.

        Returns:
            tokens ``[B, prefix + N, C]`` and the grid ``(H / patch, W / patch)``.
        """
        if x.ndim != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
        ph, pw = self.patch_size
        if x.shape[-2] % ph or x.shape[-1] % pw:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} is not a multiple of the patch size {(ph, pw)}")
        x = self.patch_embed(x)
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("a mask was passed but the model has no mask_token; build it with "
                                 "use_mask_token=True")
            if mask.shape != (b, h * w):
                raise ValueError(f"mask must be bool [B, N] = [{b}, {h * w}], got {tuple(mask.shape)}")
            # blend rather than index so the op stays differentiable w.r.t. mask_token and shape-static
            wgt = mask.unsqueeze(-1).to(x.dtype)
            x = x * (1.0 - wgt) + self.mask_token.to(x.dtype) * wgt
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        pos = self.resized_pos_embed((h, w))
        if pos is not None:
            x = x + pos
        return self.pos_drop(x), (h, w)

    def _run_block(self, blk: EvaBlock, x: torch.Tensor, grid: tuple[int, int],
                   rel_pos_bias: torch.Tensor | None) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(blk, x, grid, rel_pos_bias, use_reentrant=False)
        return blk(x, grid, rel_pos_bias)

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens ``[B, prefix + N, C]`` after the blocks and the final ``norm``.

        Args:
            x: images ``[B, C, H, W]``; any size that is a multiple of the patch size.
            mask: optional bool ``[B, N]`` MIM mask (needs ``use_mask_token=True``).
        """
        x, grid = self.embed(x, mask)
        rel_pos_bias = self.rel_pos_bias(grid) if self.rel_pos_bias is not None else None
        for blk in self.blocks:
            x = self._run_block(blk, x, grid, rel_pos_bias)
        return self.norm(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        mask: torch.Tensor | None = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        return_prefix_tokens: bool = False,
        stop_early: bool = False,
    ):
        """Block outputs as feature maps (timm's ``forward_intermediates``).

        Args:
            indices: an int ``n`` takes the last ``n`` blocks; a sequence selects block indexes
                (negative counts from the end); ``None`` takes all.
            norm: apply the final ``norm`` to each intermediate.
            output_fmt: ``"NCHW"`` (``[B, C, H, W]`` without prefix tokens) or ``"NLC"``.
            intermediates_only: return only the list.
            return_prefix_tokens: return ``(map, prefix_tokens)`` pairs.
            stop_early: skip blocks after the last requested one (only with ``intermediates_only``).

        Returns:
            ``list`` of intermediates, or ``(final_tokens, list)``.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}: expected 'NCHW' or 'NLC'")
        n = len(self.blocks)
        if indices is None:
            take = list(range(n))
        elif isinstance(indices, int):
            take = list(range(n - indices, n))
        else:
            take = [i if i >= 0 else n + i for i in indices]
        if any(not 0 <= i < n for i in take):
            raise ValueError(f"indices {indices} out of range for {n} blocks")
        last = max(take) if take else -1
        x, grid = self.embed(x, mask)
        rel_pos_bias = self.rel_pos_bias(grid) if self.rel_pos_bias is not None else None
        outs = []
        blocks = self.blocks[: last + 1] if stop_early and intermediates_only else self.blocks
        for i, blk in enumerate(blocks):
            x = self._run_block(blk, x, grid, rel_pos_bias)
            if i in take:
                outs.append(self.norm(x) if norm else x)
        p = self.num_prefix_tokens
        prefix = [y[:, :p] for y in outs]
        outs = [y[:, p:] for y in outs]
        if output_fmt == "NCHW":
            b = x.shape[0]
            outs = [y.reshape(b, grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous() for y in outs]
        if return_prefix_tokens:
            outs = list(zip(outs, prefix))
        if intermediates_only:
            return outs
        return self.norm(x), outs

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        """Pool tokens ``[B, prefix + N, C]`` -> ``[B, C]`` (``avg`` over grid tokens or CLS)."""
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == "avg":
            return x[:, self.num_prefix_tokens:].mean(dim=1)
        if pool_type == "token":
            return x[:, 0]
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, ``fc_norm``, dropout and (unless ``pre_logits``) the classifier."""
        x = self.fc_norm(self.pool(x))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, mask))
