"""EVA masked image modeling: regress a frozen CLIP teacher's patch features from masked images.

The whole method, step by step (paper section 2.2; docs/recipes/pretrain.md)::

    tokens  = forward_encoder(image, mask)        # masked patches -> mask_token, ViT, final LayerNorm
    pred    = forward_head(tokens, mask)          # lm_head on the masked positions only
    target  = forward_targets(image, mask)        # frozen teacher, same crop, masked positions
    loss    = forward_loss(pred, target)          # NEGATIVE cosine similarity, fp32, mean over masked

The teacher is held outside the module tree: it is not in ``state_dict()`` or ``parameters()``, so
optimizers, DDP and checkpoints see the student only, and the student's ``state_dict()`` uses the
official EVA-01 MIM key layout (``cls_token``, ``mask_token``, ``pos_embed``, ``patch_embed.*``,
``blocks.*``, ``norm.*``, ``lm_head.*``) so pre-trained files load like the released ones.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EvaMIM", "negative_cosine_loss", "pretraining_cost"]

_ENCODER = "encoder."


def negative_cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """EVA's MIM loss: ``-mean(cos(pred_i, target_i))`` over tokens, computed in fp32.

    The sign matters: one EVA release returned ``+cos`` (minimising it pushes predictions away from
    the targets). Here the loss is -1 when every prediction points along its target.

    Args:
        pred: ``[M, D]`` predictions for the masked tokens.
        target: ``[M, D]`` teacher features for the same tokens.

    Returns:
        ``(loss, mean_cosine)``, both fp32 scalars (``loss == -mean_cosine``).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} shapes differ")
    if pred.numel() == 0:
        raise ValueError("no masked tokens: the MIM loss needs at least one masked patch per batch")
    with torch.autocast(device_type=pred.device.type, enabled=False):
        cos = F.cosine_similarity(pred.float(), target.float(), dim=-1)
        mean_cos = cos.mean()
    return -mean_cos, mean_cos


class EvaMIM(nn.Module):
    """EVA MIM pre-training model: student encoder + ``lm_head``, frozen teacher, cosine loss.

    Args:
        encoder: an eva_core EVA model built with ``use_mask_token=True`` and a final ``norm``
            (e.g. ``eva_core.create_model("eva_giant_patch14_mim_224")``); its final LayerNorm
            is the first half of the MIM head.
        teacher: a :class:`~eva_core.mim.teacher.FeatureTeacher` (its ``embed_dim`` is the target
            width) or ``None`` to train on precomputed ``batch["target"]`` features.
        target_dim: width of ``lm_head``'s output; defaults to ``teacher.embed_dim``.
        init_std: truncated-normal std of ``lm_head.weight`` (EVA: 0.015, the encoder's).

    Batch (dict):
        ``image`` ``[B, 3, H, W]``; ``mask`` bool ``[B, N]`` or ``[B, h, w]`` (True = masked);
        optional ``teacher_image`` (the same crop prepared for the teacher) or ``target``
        ``[B, N, D]`` (precomputed teacher features).

    Returns:
        train mode: ``{"loss_mim": -mean cos, "cos_sim": mean cos (detached)}``;
        eval mode: ``{"pred": [B, N, D], "target": [B, N, D], "cos_sim": [B]}`` (cosine per image
        over its masked tokens).
    """

    def __init__(self, encoder: nn.Module, teacher: Optional[nn.Module] = None,
                 target_dim: Optional[int] = None, init_std: Optional[float] = None):
        super().__init__()
        if getattr(encoder, "mask_token", None) is None:
            raise ValueError("EvaMIM needs an encoder with a mask token: build it with use_mask_token=True")
        if isinstance(getattr(encoder, "norm", None), nn.Identity) or not hasattr(encoder, "norm"):
            raise ValueError("EvaMIM needs the encoder's final `norm` (the MIM head starts with it); "
                             "build it with use_post_transformer_norm=True / use_fc_norm=False")
        if target_dim is None:
            if teacher is None:
                raise ValueError("EvaMIM: give target_dim when there is no teacher")
            target_dim = int(teacher.embed_dim)
        elif teacher is not None and int(target_dim) != int(teacher.embed_dim):
            raise ValueError(f"EvaMIM: target_dim={target_dim} but the teacher gives "
                             f"{teacher.embed_dim}-d features")
        self.encoder = encoder
        self.lm_head = nn.Linear(int(encoder.num_features), int(target_dim))
        self.target_dim = int(target_dim)
        std = init_std if init_std is not None else getattr(encoder, "init_std", 0.02)
        if not self.lm_head.weight.is_meta:
            nn.init.trunc_normal_(self.lm_head.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(self.lm_head.bias)
        # plain attribute, not a registered sub-module: keeps the frozen teacher out of
        # state_dict(), parameters() (optimizer, DDP) and train()/eval() switches
        object.__setattr__(self, "teacher", teacher)
        self.register_state_dict_post_hook(_drop_encoder_prefix)
        self.register_load_state_dict_pre_hook(_add_encoder_prefix)

    # ------------------------------------------------------------------ module plumbing
    def _apply(self, fn, recurse: bool = True):
        # .to(device) / .half() / .to_empty() must also reach the unregistered teacher
        super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn, recurse)
        return self

    def no_weight_decay(self) -> set:
        """Tokens and position embedding of the encoder (biases / norms are 1-D: exempt anyway)."""
        fn = getattr(self.encoder, "no_weight_decay", None)
        return {_ENCODER + n for n in fn()} if callable(fn) else set()

    @property
    def grid_size(self) -> tuple:
        return tuple(self.encoder.patch_embed.grid_size)

    # ------------------------------------------------------------------ the method
    def forward_encoder(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encode with masked patches replaced by ``mask_token``; tokens after the final norm."""
        return self.encoder.forward_features(images, mask=mask)

    def forward_head(self, tokens: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``lm_head`` on the masked patch tokens (``[M, D]``), or on all of them when mask is None."""
        patches = tokens[:, getattr(self.encoder, "num_prefix_tokens", 1):]
        return self.lm_head(patches if mask is None else patches[mask])

    def forward_targets(self, batch: Mapping[str, Any], mask: Optional[torch.Tensor],
                        grid: Sequence[int]) -> torch.Tensor:
        """Teacher features of the masked patches (``[M, D]``; ``[B, N, D]`` when mask is None)."""
        if "target" in batch:
            target = batch["target"]
        else:
            if self.teacher is None:
                raise KeyError("EvaMIM has no teacher, so the batch must carry 'target' [B, N, D]")
            images = batch.get("teacher_image", batch["image"])
            target = self.teacher(images, grid_size=grid)
        n = grid[0] * grid[1]
        if target.ndim != 3 or target.shape[1] != n or target.shape[2] != self.target_dim:
            raise ValueError(f"targets must be [B, {n}, {self.target_dim}], got {tuple(target.shape)}")
        return target if mask is None else target[mask]

    def forward_loss(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative cosine similarity over the masked tokens (fp32)."""
        return negative_cosine_loss(pred, target)

    def _mask(self, batch: Mapping[str, Any], images: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        p = self.encoder.patch_embed.patch_size
        p = (p, p) if isinstance(p, int) else tuple(p)
        grid = (images.shape[-2] // p[0], images.shape[-1] // p[1])
        if "mask" not in batch:
            raise KeyError("EvaMIM: the batch has no 'mask' (bool [B, N]); wrap the dataset with "
                           "eva_core.mim.MaskedImageDataset")
        mask = batch["mask"]
        if not torch.is_tensor(mask) or mask.dtype != torch.bool:
            raise TypeError(f"batch['mask'] must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
        mask = mask.reshape(mask.shape[0], -1).to(images.device)
        if mask.shape != (images.shape[0], grid[0] * grid[1]):
            raise ValueError(f"batch['mask'] has shape {tuple(batch['mask'].shape)}; expected "
                             f"[{images.shape[0]}, {grid[0] * grid[1]}] for a {grid[0]}x{grid[1]} patch grid")
        return mask, grid

    def forward(self, batch: Mapping[str, Any]) -> dict:
        if not isinstance(batch, Mapping) or "image" not in batch:
            got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise KeyError(f"EvaMIM: batch must be a dict with 'image' and 'mask', got {got}")
        images = batch["image"]
        mask, grid = self._mask(batch, images)
        tokens = self.forward_encoder(images, mask)
        if self.training:
            pred = self.forward_head(tokens, mask)
            target = self.forward_targets(batch, mask, grid)
            loss, cos = self.forward_loss(pred, target)
            return {"loss_mim": loss, "cos_sim": cos.detach()}
        pred = self.forward_head(tokens, None).float()
        target = self.forward_targets(batch, None, grid)
        cos = F.cosine_similarity(pred, target, dim=-1)
        m = mask.float()
        per_image = (cos * m).sum(1) / m.sum(1).clamp_min(1.0)
        return {"pred": pred, "target": target, "cos_sim": per_image}


def _drop_encoder_prefix(module: nn.Module, state_dict: "OrderedDict[str, Any]", prefix: str,
                         local_metadata: Any) -> None:
    """``encoder.blocks.0...`` -> ``blocks.0...`` (the official EVA-01 MIM layout)."""
    old = prefix + _ENCODER
    items = list(state_dict.items())
    state_dict.clear()
    for k, v in items:
        state_dict[prefix + k[len(old):] if k.startswith(old) else k] = v


def _add_encoder_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any,
                        strict: bool, missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
    """Inverse of :func:`_drop_encoder_prefix` so official files and our checkpoints load."""
    for k in [k for k in state_dict if k.startswith(prefix)]:
        rest = k[len(prefix):]
        if not rest.startswith((_ENCODER, "lm_head.")):
            state_dict[prefix + _ENCODER + rest] = state_dict.pop(k)


def pretraining_cost(model: EvaMIM, image_size: int = 224, batch_size: int = 1) -> dict:
    """Parameter count and forward FLOPs of a (possibly meta-device) MIM model.

    Works without allocating weights: build the model under ``torch.device("meta")`` and the
    forward runs on meta tensors, counted by ``torch.utils.flop_counter`` (a multiply-add = 2 FLOPs).

    Returns:
        dict with ``params`` (student, incl. ``mask_token`` and ``lm_head``), ``teacher_params``,
        ``student_forward_flops``, ``teacher_forward_flops`` (per ``batch_size`` images) and
        ``train_step_flops`` (student forward + backward = 3x forward, plus teacher forward).
    """
    from torch.utils.flop_counter import FlopCounterMode

    ref = next(model.parameters())
    device, dtype = ref.device, ref.dtype
    grid = (image_size // model.encoder.patch_embed.patch_size[0],
            image_size // model.encoder.patch_embed.patch_size[1])
    images = torch.zeros(batch_size, 3, image_size, image_size, device=device, dtype=dtype)
    mask = torch.zeros(batch_size, grid[0] * grid[1], dtype=torch.bool, device=device)
    with torch.no_grad():
        with FlopCounterMode(display=False) as student:
            model.forward_head(model.forward_encoder(images, mask), None)
        teacher_flops = 0
        if model.teacher is not None:
            with FlopCounterMode(display=False) as teacher:
                model.teacher(images, grid_size=grid)
            teacher_flops = teacher.get_total_flops()
    student_flops = student.get_total_flops()
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "teacher_params": (sum(p.numel() for p in model.teacher.parameters())
                           if model.teacher is not None else 0),
        "student_forward_flops": student_flops,
        "teacher_forward_flops": teacher_flops,
        "train_step_flops": 3 * student_flops + teacher_flops,
    }
