"""The attention kernel: torch SDPA, xformers' memory-efficient kernel, or the explicit math path.

The choice is made once, when an attention module is built (:func:`resolve_attn_impl` +
:func:`attention_fn`), as timm does with ``use_fused_attn()``; the forward pass calls the chosen
function. ``"auto"`` honours the ``EVA_ATTN_IMPL`` environment variable, so a whole run can be
switched to ``math`` for debugging without editing a config.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["ATTN_IMPLS", "ATTN_IMPL_ENV", "resolve_attn_impl", "attention_fn", "as_additive_mask"]

ATTN_IMPLS = ("auto", "sdpa", "xformers", "math")
#: Environment variable that overrides ``attn_impl="auto"`` (e.g. ``EVA_ATTN_IMPL=math`` for debugging).
ATTN_IMPL_ENV = "EVA_ATTN_IMPL"

#: ``fn(q, k, v, bias, dropout_p, scale)``, q/k/v ``[B, heads, N, head_dim]`` -> ``[B, heads, N, head_dim]``
AttentionFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", float, float], torch.Tensor]


def _xformers_ops():
    try:
        import xformers.ops as xops
    except ImportError:
        return None
    return xops


def resolve_attn_impl(
    attn_impl: str, device: torch.device | str | None = None, has_bias: bool = False
) -> str:
    """Name of the kernel ``attn_impl`` stands for.

    ``"auto"`` (overridable by ``EVA_ATTN_IMPL``) selects xformers' memory-efficient kernel when
    xformers is installed, the device is CUDA and the module has no additive bias of its own
    (xformers needs aligned bias tensors), and torch SDPA otherwise. ``device=None`` means the
    device the model will most likely run on: CUDA when it is available.

    Raises:
        ValueError: unknown name (argument or environment variable).
        RuntimeError: ``"xformers"`` was forced but is not installed or the device is not CUDA.
    """
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if attn_impl == "auto":
        attn_impl = os.environ.get(ATTN_IMPL_ENV, "auto") or "auto"
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"{ATTN_IMPL_ENV}={attn_impl!r} is not one of {ATTN_IMPLS}")
        if attn_impl == "auto":
            use_xf = device.type == "cuda" and not has_bias and _xformers_ops() is not None
            return "xformers" if use_xf else "sdpa"
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl={attn_impl!r} is not one of {ATTN_IMPLS}")
    if attn_impl == "xformers":
        if _xformers_ops() is None:
            raise RuntimeError("attn_impl='xformers' but xformers is not installed (pip install xformers)")
        if device.type != "cuda":
            raise RuntimeError(f"attn_impl='xformers' needs CUDA tensors, got device {device}; "
                               "use 'sdpa' or 'math'")
    return attn_impl


def as_additive_mask(attn_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Boolean masks (True = attend, as in SDPA) become additive float masks so biases can be summed."""
    if attn_mask is None or attn_mask.dtype != torch.bool:
        return attn_mask
    out = torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device)
    return out.masked_fill_(~attn_mask, float("-inf"))


def _sdpa(q, k, v, bias, dropout_p, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)


def _math(q, k, v, bias, dropout_p, scale):
    attn = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        attn = attn + bias
    attn = attn.softmax(dim=-1)
    if dropout_p > 0.0:
        attn = F.dropout(attn, p=dropout_p)
    return attn @ v


def _xformers(q, k, v, bias, dropout_p, scale):
    xops = _xformers_ops()
    if bias is not None:
        bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_bias=bias, p=dropout_p, scale=scale)
    return out.transpose(1, 2)


def _xformers_where_possible(q, k, v, bias, dropout_p, scale):
    # what "auto" resolved to on a CUDA machine: a bias passed at call time (shared BEiT table, a
    # mask) or CPU tensors are outside what the kernel takes, and auto must never fail there
    if bias is None and q.is_cuda:
        return _xformers(q, k, v, bias, dropout_p, scale)
    return _sdpa(q, k, v, bias, dropout_p, scale)


def attention_fn(resolved: str, forced: bool = True) -> AttentionFn:
    """The kernel function for a resolved name (``"sdpa" | "xformers" | "math"``).

    Args:
        resolved: output of :func:`resolve_attn_impl`.
        forced: the user asked for this kernel by name; ``False`` (it came from ``"auto"``) lets the
            xformers choice fall back to SDPA for call-time biases and CPU tensors.
    """
    if resolved == "sdpa":
        return _sdpa
    if resolved == "math":
        return _math
    if resolved == "xformers":
        return _xformers if forced else _xformers_where_possible
    raise ValueError(f"no attention kernel named {resolved!r}; expected one of {ATTN_IMPLS[1:]}")
