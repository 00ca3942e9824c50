"""ViT-Adapter's building blocks: spatial prior module, injector, extractor, interaction block.

A plain ViT has one stride-16 token grid; a dense head wants a pyramid at strides 4-32. ViT-Adapter
(Chen et al., 2022) adds a small conv stem (the *spatial prior module*) that yields maps at strides
8/16/32 (+4), and *interaction blocks* around groups of ViT blocks: an **injector** lets the ViT
tokens read from the pyramid (deformable attention, layer-scaled by ``gamma``), and an
**extractor** lets the pyramid read back from the ViT tokens (deformable attention + a ConvFFN
with a depthwise conv). Parameter names follow the public ViT-Adapter / EVA-01 seg code
(``spm.stem``, ``interactions.{k}.injector.attn.value_proj`` ...) so the released mmseg files load
by name after the prefix mapping in :mod:`mask2former_eva.layouts`.

All deformable attention is the pure-PyTorch
:func:`~mask2former_eva.ms_deform_attn.multi_scale_deformable_attention`.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Callable, NamedTuple

import torch
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

from .ms_deform_attn import (MSDeformAttn, SpatialShapes, _shape_list,
                             compiled_multi_scale_deformable_attention, multi_scale_deformable_attention)

__all__ = ["SpatialPriorModule", "DeformInputs", "deform_inputs", "reference_points_for", "AdapterDeformAttn",
           "ConvFFN", "DWConv", "Injector", "Extractor", "InteractionBlock", "pyramid_shapes"]

LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)  # BEiT's norm_layer, which the adapter reuses


def pyramid_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """``(H, W)`` of the stride-8/16/32 levels for an image of ``height x width``.

    Raises:
        ValueError: a side is not a multiple of 32 (the stem's strided convs would round, and the
            levels would no longer be exact 2x steps of each other).
    """
    if height % 32 or width % 32:
        raise ValueError(f"ViT-Adapter needs image sides divisible by 32, got {height}x{width}: pad the "
                         "image (the release pads crops to 896 and test images to a multiple of 32)")
    return [(height // s, width // s) for s in (8, 16, 32)]


def reference_points_for(shapes: Sequence[tuple[int, int]],
                         device: torch.device | None = None) -> torch.Tensor:
    """Pixel centres ``(x, y)`` in ``[0, 1]`` of every position of the levels, ``[1, sum(H*W), 1, 2]``."""
    points = []
    for height, width in shapes:
        ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], -1))
    return torch.cat(points, 0)[None, :, None]


class DeformInputs(NamedTuple):
    """What one direction of the interaction attends with.

    Attributes:
        reference_points: ``[1, Q, 1, 2]`` query positions ``(x, y)`` in ``[0, 1]``.
        spatial_shapes: ``(H, W)`` of each level the queries read.
    """

    reference_points: torch.Tensor
    spatial_shapes: list[tuple[int, int]]


def deform_inputs(x: torch.Tensor, patch_size: int = 16) -> tuple[DeformInputs, DeformInputs]:
    """Reference points and level shapes of the injector and the extractor for images ``x``.

    The injector's queries are the ViT tokens (one per patch, grid ``H/p x W/p``) reading the three
    pyramid levels (strides 8/16/32); the extractor's queries are the pyramid positions reading
    the one ViT grid. Shapes are Python ints so they stay compile-time constants.

    Returns:
        ``(injector_inputs, extractor_inputs)``.
    """
    height, width = x.shape[-2:]
    levels = pyramid_shapes(height, width)
    vit = [(height // patch_size, width // patch_size)]
    return (DeformInputs(reference_points_for(vit, x.device), levels),
            DeformInputs(reference_points_for(levels, x.device), vit))


class SpatialPriorModule(nn.Module):
    """Conv stem giving ``c1`` (stride 4, a map) and ``c2..c4`` (strides 8/16/32, token sequences).

    Each level is projected to ``embed_dim`` by a 1x1 conv (``fc1..fc4``). ``norm_layer`` is
    BatchNorm (the release uses SyncBatchNorm; under DDP convert with
    ``nn.SyncBatchNorm.convert_sync_batchnorm``; the key names are the same).

    Args:
        inplanes: stem width (64 in EVA's config).
        embed_dim: output width of every level (the ViT width).
    """

    def __init__(self, inplanes: int = 64, embed_dim: int = 384,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()

        def conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm_layer(cout), nn.ReLU(inplace=True)]

        self.stem = nn.Sequential(*conv_bn_relu(3, inplanes, 2), *conv_bn_relu(inplanes, inplanes, 1),
                                  *conv_bn_relu(inplanes, inplanes, 1),
                                  nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.conv2 = nn.Sequential(*conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``c1`` ``[B, C, H/4, W/4]`` and ``c2, c3, c4`` ``[B, H*W/s^2, C]`` for ``s = 8, 16, 32``."""
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        def tokens(level: torch.Tensor) -> torch.Tensor:
            return level.flatten(2).transpose(1, 2)

        return self.fc1(c1), tokens(self.fc2(c2)), tokens(self.fc3(c3)), tokens(self.fc4(c4))


class AdapterDeformAttn(MSDeformAttn):
    """:class:`MSDeformAttn` with ViT-Adapter's ``ratio``: values are projected to ``ratio * d_model``.

    ViT-Adapter's copy of the op narrows ``value_proj`` (``d_model -> ratio * d_model``) and widens
    ``output_proj`` back, halving the sampled channels at ``deform_ratio=0.5`` (EVA's setting).
    Queries are 2-d reference points; the adapter never pads.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 ratio: float = 1.0, *, fast_path: bool | None = None) -> None:
        value_dim = int(d_model * ratio)
        if value_dim % n_heads != 0:
            raise ValueError(f"AdapterDeformAttn: d_model {d_model} * ratio {ratio} = {value_dim} must be "
                             f"divisible by n_heads {n_heads}")
        super().__init__(d_model, n_levels, n_heads, n_points, fast_path=fast_path)
        self.ratio, self.value_dim = ratio, value_dim
        self.value_proj = nn.Linear(d_model, value_dim)
        self.output_proj = nn.Linear(value_dim, d_model)
        self.reset_parameters()

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                input_spatial_shapes: SpatialShapes, input_level_start_index: torch.Tensor | None = None,
                input_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """As :meth:`MSDeformAttn.forward` for 2-d reference points ``[B or 1, Q, n_levels, 2]``."""
        if input_padding_mask is not None or input_level_start_index is not None:
            raise ValueError("AdapterDeformAttn takes no padding mask or level start index (the adapter "
                             "never pads; starts follow from the shapes)")
        shapes = _shape_list(input_spatial_shapes)
        batch, n_queries, _ = query.shape
        seq_len = input_flatten.shape[1]
        if len(shapes) != self.n_levels or sum(h * w for h, w in shapes) != seq_len:
            raise ValueError(f"AdapterDeformAttn: built for {self.n_levels} levels; got shapes {shapes} for "
                             f"{seq_len} input positions")
        if reference_points.shape[1:] != (n_queries, self.n_levels, 2):
            raise ValueError(f"AdapterDeformAttn: reference_points must be [B, {n_queries}, {self.n_levels}, "
                             f"2], got {tuple(reference_points.shape)}")
        value = self.value_proj(input_flatten).view(batch, seq_len, self.n_heads,
                                                    self.value_dim // self.n_heads)
        offsets = self.sampling_offsets(query).view(batch, n_queries, self.n_heads, self.n_levels,
                                                    self.n_points, 2)
        weights = self.attention_weights(query).view(batch, n_queries, self.n_heads,
                                                     self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(batch, n_queries, self.n_heads, self.n_levels, self.n_points)
        # offsets are in pixels of each level: divide by (W_l, H_l)
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :].to(query.dtype) + offsets / normalizer[:, None]
        attend = (compiled_multi_scale_deformable_attention() if self._use_fast_path(value.device)
                  else multi_scale_deformable_attention)
        return self.output_proj(attend(value, shapes, locations, weights))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ratio={self.ratio}"


class DWConv(nn.Module):
    """3x3 depthwise conv applied to each level of a flattened multi-level sequence."""

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """``x`` ``[B, sum(H*W), C]`` whose levels have ``shapes``; same shape out.

        The release splits the sequence as 16:4:1 of ``N // 21``, which is only right for square
        sides divisible by 32; splitting by the real shapes also serves non-square inputs.
        """
        batch, _, channels = x.shape
        parts = x.split([h * w for h, w in shapes], dim=1)
        out = [self.dwconv(p.transpose(1, 2).reshape(batch, channels, h, w)).flatten(2).transpose(1, 2)
               for p, (h, w) in zip(parts, shapes)]
        return torch.cat(out, dim=1)


class ConvFFN(nn.Module):
    """``fc1 -> depthwise 3x3 conv -> GELU -> fc2``: the extractor's FFN with a local spatial mix."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 drop: float = 0.0) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.dwconv = DWConv(hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x), shapes)))
        return self.drop(self.fc2(x))


def _maybe_checkpoint(fn: Callable[..., torch.Tensor], use: bool, *args: torch.Tensor) -> torch.Tensor:
    # recompute in backward only when there is a backward to save memory for
    if use and torch.is_grad_enabled() and any(a.requires_grad for a in args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class Injector(nn.Module):
    """ViT tokens read the pyramid: ``x + gamma * attn(query_norm(x), feat_norm(c))``.

    ``gamma`` starts at ``init_values`` (0 in ViT-Adapter and EVA), so at initialisation the
    injector leaves the pre-trained ViT's tokens unchanged.
    """

    def __init__(self, dim: int, num_heads: int = 6, n_points: int = 4, n_levels: int = 3,
                 deform_ratio: float = 1.0, norm_layer: Callable[[int], nn.Module] = LayerNorm6,
                 init_values: float = 0.0, with_cp: bool = False) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.query_norm = norm_layer(dim)
        self.feat_norm = norm_layer(dim)
        self.attn = AdapterDeformAttn(dim, n_levels, num_heads, n_points, ratio=deform_ratio)
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, query: torch.Tensor, feat: torch.Tensor, inputs: DeformInputs) -> torch.Tensor:
        def inner(query: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
            refs = inputs.reference_points.expand(query.shape[0], -1, len(inputs.spatial_shapes), -1)
            attn = self.attn(self.query_norm(query), refs, self.feat_norm(feat), inputs.spatial_shapes)
            return query + self.gamma * attn

        return _maybe_checkpoint(inner, self.with_cp, query, feat)


class Extractor(nn.Module):
    """The pyramid reads the ViT tokens: ``c + attn(query_norm(c), feat_norm(x))``, then
    ``c + drop_path(ffn(ffn_norm(c)))`` with the ConvFFN (``cffn_ratio`` hidden width)."""

    def __init__(self, dim: int, num_heads: int = 6, n_points: int = 4, n_levels: int = 1,
                 deform_ratio: float = 1.0, with_cffn: bool = True, cffn_ratio: float = 0.25,
                 drop: float = 0.0, drop_path: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = LayerNorm6, with_cp: bool = False) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.query_norm = norm_layer(dim)
        self.feat_norm = norm_layer(dim)
        self.attn = AdapterDeformAttn(dim, n_levels, num_heads, n_points, ratio=deform_ratio)
        self.with_cffn = with_cffn
        if with_cffn:
            self.ffn = ConvFFN(dim, int(dim * cffn_ratio), drop=drop)
            self.ffn_norm = norm_layer(dim)
            self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, query: torch.Tensor, feat: torch.Tensor, inputs: DeformInputs,
                query_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """``query``: pyramid tokens with level ``query_shapes``; ``feat``: the ViT tokens."""
        def inner(query: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
            refs = inputs.reference_points.expand(query.shape[0], -1, len(inputs.spatial_shapes), -1)
            attn = self.attn(self.query_norm(query), refs, self.feat_norm(feat), inputs.spatial_shapes)
            query = query + attn
            if self.with_cffn:
                query = query + self.drop_path(self.ffn(self.ffn_norm(query), query_shapes))
            return query

        return _maybe_checkpoint(inner, self.with_cp, query, feat)


class InteractionBlock(nn.Module):
    """Injector, a group of ViT blocks, extractor (plus two extra extractors in the last block).

    The ViT blocks are not owned here (they stay in the encoder, so its checkpoint keys are
    unchanged); :meth:`forward` takes a callable that runs them.
    """

    def __init__(self, dim: int, num_heads: int = 6, n_points: int = 4,
                 norm_layer: Callable[[int], nn.Module] = LayerNorm6, drop: float = 0.0,
                 drop_path: float = 0.0, with_cffn: bool = True, cffn_ratio: float = 0.25,
                 init_values: float = 0.0, deform_ratio: float = 1.0, extra_extractor: bool = False,
                 with_cp: bool = False) -> None:
        super().__init__()
        self.injector = Injector(dim, num_heads, n_points, n_levels=3, deform_ratio=deform_ratio,
                                 norm_layer=norm_layer, init_values=init_values, with_cp=with_cp)
        extractor = partial(Extractor, dim, num_heads, n_points, n_levels=1, deform_ratio=deform_ratio,
                            with_cffn=with_cffn, cffn_ratio=cffn_ratio, drop=drop, drop_path=drop_path,
                            norm_layer=norm_layer, with_cp=with_cp)
        self.extractor = extractor()
        self.extra_extractors = nn.Sequential(extractor(), extractor()) if extra_extractor else None

    def forward(self, x: torch.Tensor, c: torch.Tensor, run_blocks: Callable[[torch.Tensor], torch.Tensor],
                inject: DeformInputs, extract: DeformInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the updated ViT tokens ``x`` ``[B, N, C]`` and pyramid tokens ``c``."""
        x = self.injector(x, c, inject)
        x = run_blocks(x)
        extractors = [self.extractor, *(self.extra_extractors if self.extra_extractors is not None else [])]
        for extractor in extractors:
            c = extractor(c, x, extract, inject.spatial_shapes)
        return x, c
