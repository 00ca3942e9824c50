"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

Each query looks at ``n_points`` learned sampling locations on each of ``n_levels`` feature maps
per head and takes their attention-weighted sum. The authors' release needs a compiled CUDA op;
here the sampling is ``torch.nn.functional.grid_sample`` per level (bilinear, zero padding,
``align_corners=False``), which runs on CPU and GPU and gives the same numbers as the op and as
Hugging Face transformers' ``multi_scale_deformable_attention``. On CUDA a ``torch.compile``'d
copy of the same function is used when Triton is installed (``MSDeformAttn(fast_path=...)``
switches it; ``fast_path=True`` also compiles for CPU with Inductor's C++ backend).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import math
import threading
from collections.abc import Sequence
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSDeformAttn", "multi_scale_deformable_attention", "compiled_multi_scale_deformable_attention",
           "fast_path_available", "compile_failure"]

logger = logging.getLogger(__name__)

SpatialShapes = torch.Tensor | Sequence[Sequence[int]]


def _shape_list(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    """``[(H_l, W_l), ...]`` as Python ints from a ``[L, 2]`` tensor or a list of pairs."""
    if torch.is_tensor(spatial_shapes):
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
            raise ValueError(f"spatial_shapes must be [num_levels, 2] (height, width), got tensor of shape "
                             f"{tuple(spatial_shapes.shape)}")
        spatial_shapes = spatial_shapes.tolist()
    shapes = []
    for level, hw in enumerate(spatial_shapes):
        if len(hw) != 2 or int(hw[0]) < 1 or int(hw[1]) < 1:
            raise ValueError(f"spatial_shapes[{level}] must be a positive (height, width), got {tuple(hw)}")
        shapes.append((int(hw[0]), int(hw[1])))
    return shapes


def multi_scale_deformable_attention(value: torch.Tensor, spatial_shapes: SpatialShapes,
                                     sampling_locations: torch.Tensor,
                                     attention_weights: torch.Tensor) -> torch.Tensor:
    """Attention-weighted sum of bilinear samples from several flattened feature maps.

    Args:
        value: ``[B, S, n_heads, head_dim]``, the levels' maps flattened row-major and concatenated
            (``S = sum(H_l * W_l)``).
        spatial_shapes: ``(H_l, W_l)`` of each level, a ``[L, 2]`` tensor or a list of pairs.
        sampling_locations: ``[B, Q, n_heads, L, n_points, 2]`` as ``(x, y)`` in ``[0, 1]`` of each
            level's extent (pixel centres at ``(i + 0.5) / W``); points outside read zeros.
        attention_weights: ``[B, Q, n_heads, L, n_points]`` (normally softmaxed over ``L * n_points``).

    Returns:
        ``[B, Q, n_heads * head_dim]``, heads concatenated in order.

    Raises:
        ValueError: the shapes of the inputs disagree with each other or with ``spatial_shapes``.
    """
    shapes = _shape_list(spatial_shapes)
    if value.dim() != 4:
        raise ValueError(f"value must be [batch, sequence, heads, head_dim], got shape {tuple(value.shape)}")
    batch, seq_len, n_heads, head_dim = value.shape
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError("sampling_locations must be [batch, queries, heads, levels, points, 2], got shape "
                         f"{tuple(sampling_locations.shape)}")
    _, n_queries, _, n_levels, n_points, _ = sampling_locations.shape
    expected = (batch, n_queries, n_heads, len(shapes), n_points)
    if tuple(sampling_locations.shape[:5]) != expected:
        raise ValueError(f"sampling_locations has shape {tuple(sampling_locations.shape)}, expected "
                         f"{expected + (2,)} from value {tuple(value.shape)} and {len(shapes)} "
                         "spatial shapes")
    if tuple(attention_weights.shape) != expected:
        raise ValueError(f"attention_weights has shape {tuple(attention_weights.shape)}, expected {expected}")
    sizes = [h * w for h, w in shapes]
    if sum(sizes) != seq_len:
        raise ValueError(f"value has {seq_len} positions but spatial_shapes {shapes} cover {sum(sizes)}")

    # grid_sample wants [N, C, H, W] maps and [N, H_out, W_out, 2] grids in [-1, 1]; fold the heads
    # into N so that one call per level serves every head.
    grids = 2 * sampling_locations - 1  # [B, Q, h, L, P, 2]
    weights = attention_weights.transpose(1, 2).flatten(0, 1)  # [B*h, Q, L, P]
    samples = []
    for level, (level_value, (height, width)) in enumerate(zip(value.split(sizes, dim=1), shapes)):
        level_map = level_value.permute(0, 2, 3, 1).reshape(batch * n_heads, head_dim, height, width)
        # a contiguous [B*h, Q, P, 2] grid per level: on a strided slice, forward+backward took ~30% longer
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(level_map, level_grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # [B*h, head_dim, Q, P]
    # one weighted sum over all levels' points: autograd keeps every level's samples for the
    # backward pass anyway, and one large product is faster than a product per level
    output = (torch.cat(samples, dim=-1) * weights.flatten(2)[:, None]).sum(-1)  # [B*h, head_dim, Q]
    return output.view(batch, n_heads * head_dim, n_queries).transpose(1, 2).contiguous()


def fast_path_available(device: torch.device | str) -> bool:
    """Whether ``fast_path=None`` picks the ``torch.compile``'d path on ``device``: CUDA with Triton.

    The compiled path also runs on CPU (Inductor's C++ backend, ``fast_path=True``), with the same
    numbers, but it is not chosen automatically there: the first call per input shape compiles for
    tens of seconds and the compiled step was not measured faster than the pure one on CPU (README,
    ``benchmarks/mask2former.py``).
    """
    return (torch.device(device).type == "cuda" and torch.cuda.is_available()
            and hasattr(torch, "compile") and importlib.util.find_spec("triton") is not None)


# (device type, dtype, dynamic) -> the torch.compile'd function, or the pure one after a failure
_COMPILED: dict[tuple[str, torch.dtype, bool], Callable[..., torch.Tensor]] = {}
# (device type, dtype, dynamic) -> "ExceptionType: message" of the compile failure
_COMPILE_FAILURES: dict[tuple[str, torch.dtype, bool], str] = {}
_COMPILE_LOCK = threading.Lock()
# (device type, fast path) already logged by MSDeformAttn
_LOGGED_CHOICES: set[tuple[str, bool]] = set()


def _compiled_for(key: tuple[str, torch.dtype, bool]) -> Callable[..., torch.Tensor]:
    """The compiled function for ``key``, built (and logged) once."""
    fn = _COMPILED.get(key)
    if fn is not None:
        return fn
    with _COMPILE_LOCK:
        if key not in _COMPILED:
            try:
                _COMPILED[key] = torch.compile(multi_scale_deformable_attention, dynamic=key[2])
                logger.info("multi-scale deformable attention: torch.compile'd path built for device %s, "
                            "%s, dynamic=%s", *key)
            except Exception as err:  # noqa: BLE001  (any failure: use the pure path)
                _record_failure(key, err)
        return _COMPILED[key]


def _record_failure(key: tuple[str, torch.dtype, bool], err: BaseException) -> None:
    _COMPILED[key] = multi_scale_deformable_attention
    _COMPILE_FAILURES[key] = f"{type(err).__name__}: {err}".strip()
    logger.warning("multi-scale deformable attention: torch.compile failed for device %s, %s, dynamic=%s "
                   "(%s); using the pure PyTorch path for these inputs from now on", *key,
                   _COMPILE_FAILURES[key].splitlines()[0][:500])


def compile_failure(device: torch.device | str, dtype: torch.dtype = torch.float32,
                    dynamic: bool = False) -> str | None:
    """The error that made the compiled path fall back to the pure one for these inputs, if any."""
    return _COMPILE_FAILURES.get((torch.device(device).type, dtype, dynamic))


@functools.lru_cache(maxsize=None)
def compiled_multi_scale_deformable_attention(dynamic: bool = False) -> Callable[..., torch.Tensor]:
    """:func:`multi_scale_deformable_attention` through ``torch.compile`` (Inductor).

    Returns a function with the same arguments that compiles the pure function once per (device
    type, dtype, ``dynamic``) of ``value`` (logged at INFO) and calls it; Inductor fuses the
    per-level sampling and the weighted sum into fewer kernels (Triton on CUDA, C++ on CPU), and
    the numbers are those of the pure function up to float rounding (``tests/test_msda.py``).
    With ``dynamic=False`` every new input shape recompiles (up to dynamo's recompile limit), so
    give spatial shapes as a list: they are compile-time constants.

    If compiling fails (``torch.compile`` itself, or Inductor at the first call of a shape), one
    WARNING names the error and these inputs use the pure path from then on; an error that the
    pure function raises as well (bad input shapes) is raised as is. A failure while compiling the
    backward graph (at the first ``backward()``) is not caught. Inside an outer ``torch.compile``
    the pure function is called and left to the outer compiler.
    """

    def attend(value: torch.Tensor, spatial_shapes: SpatialShapes, sampling_locations: torch.Tensor,
               attention_weights: torch.Tensor) -> torch.Tensor:
        args = (value, spatial_shapes, sampling_locations, attention_weights)
        if torch.compiler.is_compiling():
            return multi_scale_deformable_attention(*args)
        key = (value.device.type, value.dtype, dynamic)
        fn = _compiled_for(key)
        if fn is multi_scale_deformable_attention:
            return fn(*args)
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001
            out = multi_scale_deformable_attention(*args)  # raises the input error, if it is one
            with _COMPILE_LOCK:
                if _COMPILED.get(key) is not multi_scale_deformable_attention:  # warn once
                    _record_failure(key, err)
            return out

    attend.__doc__ = compiled_multi_scale_deformable_attention.__doc__
    return attend


class MSDeformAttn(nn.Module):
    """Deformable DETR's multi-scale deformable attention module.

    Parameter names (``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``)
    and initialisation follow Deformable DETR's ``MSDeformAttn``, so its checkpoints (and those of
    Mask2Former / ViT-Adapter, which reuse it) load by name.

    Args:
        d_model: channel width of queries and values.
        n_levels: number of feature levels.
        n_heads: attention heads (``d_model`` must divide by it).
        n_points: sampling points per head and level.
        fast_path: ``None`` uses the ``torch.compile``'d function when
            :func:`fast_path_available` for the input's device; ``True`` always uses it; ``False``
            never does.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4, *,
                 fast_path: bool | None = None) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MSDeformAttn: d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.fast_path = fast_path
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: head ``k`` starts sampling along direction
        ``2*pi*k/n_heads`` at distances 1..n_points, with uniform attention over the points."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        # scale each direction so its larger component is 1 (a square ring of points)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def _use_fast_path(self, device: torch.device) -> bool:
        fast = fast_path_available(device) if self.fast_path is None else bool(self.fast_path)
        choice = (torch.device(device).type, fast)
        if choice not in _LOGGED_CHOICES:  # once per process for each device type and path
            _LOGGED_CHOICES.add(choice)
            why = ("fast_path=None: compiled only on CUDA with Triton" if self.fast_path is None
                   else f"fast_path={self.fast_path}")
            logger.info("%s on %s: %s path (%s)", type(self).__name__, choice[0],
                        "torch.compile'd" if fast else "pure PyTorch", why)
        return fast

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                input_spatial_shapes: SpatialShapes, input_level_start_index: torch.Tensor | None = None,
                input_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from ``query`` to the flattened multi-level ``input_flatten``.

        Args:
            query: ``[B, Q, d_model]`` (position embedding already added).
            reference_points: ``[B, Q, n_levels, 2]`` points ``(x, y)`` in ``[0, 1]`` (offsets are
                in pixels of each level), or ``[B, Q, n_levels, 4]`` boxes ``(cx, cy, w, h)``
                (offsets are in units of half the box size divided by ``n_points``).
            input_flatten: ``[B, S, d_model]``, the levels' maps flattened and concatenated.
            input_spatial_shapes: ``(H_l, W_l)`` per level, ``[n_levels, 2]`` tensor or list.
            input_level_start_index: optional ``[n_levels]`` start of each level in ``S``; it is
                derived from the shapes, and checked against them when given.
            input_padding_mask: optional ``[B, S]`` bool, ``True`` at padded positions (their values
                are zeroed, so sampling them contributes nothing).

        Returns:
            ``[B, Q, d_model]``.
        """
        shapes = _shape_list(input_spatial_shapes)
        batch, n_queries, _ = query.shape
        _, seq_len, _ = input_flatten.shape
        if len(shapes) != self.n_levels:
            raise ValueError(f"MSDeformAttn: built for {self.n_levels} levels, got spatial shapes {shapes}")
        if sum(h * w for h, w in shapes) != seq_len:
            raise ValueError(f"MSDeformAttn: input_flatten has {seq_len} positions but spatial shapes "
                             f"{shapes} cover {sum(h * w for h, w in shapes)}")
        if input_level_start_index is not None:
            starts = [0]
            for h, w in shapes[:-1]:
                starts.append(starts[-1] + h * w)
            given = torch.as_tensor(input_level_start_index).reshape(-1).tolist()
            if given != starts:
                raise ValueError(f"MSDeformAttn: input_level_start_index {given} disagrees with spatial "
                                 f"shapes {shapes} (expected {starts})")
        ref_shape = tuple(reference_points.shape)
        if ref_shape[:3] != (batch, n_queries, self.n_levels) or ref_shape[3:] not in ((2,), (4,)):
            raise ValueError(f"MSDeformAttn: reference_points must be [{batch}, {n_queries}, "
                             f"{self.n_levels}, 2 or 4], got {ref_shape}")

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            if tuple(input_padding_mask.shape) != (batch, seq_len):
                raise ValueError(f"MSDeformAttn: input_padding_mask must be [{batch}, {seq_len}], got "
                                 f"{tuple(input_padding_mask.shape)}")
            value = value.masked_fill(input_padding_mask[..., None].bool(), 0.0)
        value = value.view(batch, seq_len, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(batch, n_queries, self.n_heads, self.n_levels,
                                                    self.n_points, 2)
        weights = self.attention_weights(query).view(batch, n_queries, self.n_heads,
                                                     self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(batch, n_queries, self.n_heads, self.n_levels, self.n_points)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: divide by (W_l, H_l)
            normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
            locations = (reference_points[:, :, None, :, None, :]
                         + offsets / normalizer[None, None, None, :, None, :])
        else:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5)
        attend = (compiled_multi_scale_deformable_attention() if self._use_fast_path(value.device)
                  else multi_scale_deformable_attention)
        return self.output_proj(attend(value, shapes, locations, weights))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, "
                f"n_points={self.n_points}, fast_path={self.fast_path}")
