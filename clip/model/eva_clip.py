"""EVA-CLIP: an EVA encoder as the vision tower and open_clip's CLIP text tower, tokenizer and loss.

Recipe facts: ``docs/recipes/clip.md#towers``. The vision tower is :class:`eva_core.models.eva.Eva`
with CLS pooling, its final ``norm`` and a ``head`` Linear that projects to the joint embedding (the
same names open_clip's ``EVA01-g-14`` has under ``visual.trunk.``). The text tower is
``open_clip.transformer.TextTransformer`` (OpenAI CLIP's: ``token_embedding``, ``positional_embedding``,
``transformer.resblocks.*``, ``ln_final``, ``text_projection``). The loss is ``open_clip.loss.ClipLoss``.
"""
from __future__ import annotations

import copy
import math
import os
from typing import Any, Mapping

import numpy as np
import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from open_clip.transformer import TextTransformer

import eva_core
from eva_core.models.eva import Eva
from eva_core.utils import comm

__all__ = ["EVA_CLIP_CONFIGS", "EvaCLIP", "create_eva_clip", "list_eva_clip_models", "get_tokenizer",
           "MAX_LOGIT_SCALE"]

#: CLIP clamps the learned temperature so that logits are scaled by at most 100
MAX_LOGIT_SCALE = 100.0

_EVA_G = dict(img_size=224, patch_size=14, embed_dim=1408, depth=40, num_heads=16, mlp_ratio=6144 / 1408)
_CLIP_L_TEXT = dict(context_length=77, vocab_size=49408, width=768, heads=12, layers=12)

#: name -> ``EvaCLIP`` constructor arguments (``docs/recipes/clip.md#model-configs``)
EVA_CLIP_CONFIGS: dict[str, dict[str, Any]] = {
    # paper Table 10: EVA-g vision, OpenAI CLIP-L text, 1024-d joint space
    "eva_clip_g14": dict(embed_dim=1024, vision_cfg=_EVA_G, text_cfg=_CLIP_L_TEXT),
    # CPU-sized member of the same family (real tokenizer, so the real vocabulary)
    "eva_clip_tiny": dict(
        embed_dim=32,
        vision_cfg=dict(img_size=28, patch_size=14, embed_dim=48, depth=2, num_heads=3, mlp_ratio=4.0),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
    ),
}

# Eva arguments that EvaCLIP fixes: they define the tower's shape (CLS -> norm -> projection)
_FIXED_VISION = ("global_pool", "num_classes", "use_fc_norm", "use_post_transformer_norm", "use_mask_token")
_TEXT_ARGS = ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value")


class EvaCLIP(nn.Module):
    """Contrastive image-text model with an EVA vision tower (engine model contract, ``docs/DESIGN.md``).

    Args:
        embed_dim: joint embedding width (vision ``head`` and text ``text_projection`` outputs).
        vision_cfg: :class:`~eva_core.models.eva.Eva` arguments (``img_size``, ``patch_size``,
            ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``attn_inner_norm`` for later
            EVA-CLIP files with ``inner_attn_ln``, ``drop_path_rate``, ``grad_checkpointing`` ...).
            Pooling is always CLS -> ``norm`` -> ``head`` (the projection).
        text_cfg: ``open_clip.transformer.TextTransformer`` arguments: ``context_length``,
            ``vocab_size``, ``width``, ``heads``, ``layers`` (optionally ``mlp_ratio``, ``ls_init_value``).
        init_logit_scale: initial temperature in log space (CLIP: ``ln(1 / 0.07)``).
        local_loss: ``ClipLoss(local_loss=True)``: each rank scores its own samples against all
            gathered features (less memory, same gradient).
        gather_with_grad: gather features across ranks with gradients flowing to every rank.
        vision_init: an EVA MIM (or any encoder) checkpoint to initialise the vision tower from,
            through ``eva_core.load_checkpoint(..., min_loaded="encoder")`` (the new projection
            ``head`` is the one tensor it may lack).

    Raises:
        ValueError: a fixed vision argument or an unknown text argument is given.
    """

    def __init__(
        self,
        embed_dim: int,
        vision_cfg: Mapping[str, Any],
        text_cfg: Mapping[str, Any],
        init_logit_scale: float = float(np.log(1 / 0.07)),
        local_loss: bool = False,
        gather_with_grad: bool = False,
        vision_init: str | os.PathLike | None = None,
    ):
        super().__init__()
        fixed = sorted(set(vision_cfg) & set(_FIXED_VISION))
        if fixed:
            raise ValueError(f"EvaCLIP vision_cfg: {fixed} cannot be set: the tower is CLS pooling -> norm "
                             f"-> projection to embed_dim={embed_dim}")
        unknown = sorted(set(text_cfg) - set(_TEXT_ARGS))
        if unknown:
            raise ValueError(f"EvaCLIP text_cfg: unknown argument(s) {unknown}; accepted: {list(_TEXT_ARGS)}")
        self.embed_dim = embed_dim
        self.vision_cfg = dict(vision_cfg)
        self.text_cfg = dict(text_cfg)
        self.visual = Eva(**self.vision_cfg, global_pool="token", num_classes=embed_dim, use_fc_norm=False,
                          use_post_transformer_norm=True)
        # open_clip's own text tower, built as open_clip's CLIP builds it (GELU, LayerNorm, argmax pooling)
        self.text = TextTransformer(**self.text_cfg, output_dim=embed_dim)
        self.logit_scale = nn.Parameter(torch.ones([]) * init_logit_scale)
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self._loss: ClipLoss | None = None
        self.vision_init_report = None
        if vision_init is not None:
            self.vision_init_report = self.init_vision_from(vision_init)

    @property
    def context_length(self) -> int:
        return self.text.context_length

    def init_vision_from(self, checkpoint: str | os.PathLike | Mapping[str, Any], **kwargs: Any):
        """Load an EVA encoder checkpoint (MIM, classifier, EVA-CLIP ``visual.``) into the vision tower.

        Pre-training-only keys (``mask_token``, ``lm_head``) are dropped; every encoder tensor but the
        projection ``head`` must load (``min_loaded="encoder"``), else
        ``eva_core.checkpoint.CheckpointMismatchError`` names the file and the missing keys.

        Returns:
            The :class:`eva_core.checkpoint.LoadReport`.
        """
        kwargs.setdefault("min_loaded", "encoder")
        return eva_core.load_checkpoint(self.visual, checkpoint, **kwargs)

    def logit_scale_value(self) -> torch.Tensor:
        """``exp(logit_scale)`` clamped at 100 (the clamp is in log space, so no gradient above it)."""
        return self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the stored parameter into ``[0, ln 100]`` (open_clip does this after each step)."""
        self.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, embed_dim]`` (CLS token -> norm -> projection)."""
        x = self.visual(image)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids ``[B, context_length]`` -> ``[B, embed_dim]`` (features at the EOT token)."""
        if text.ndim != 2 or text.shape[1] > self.context_length:
            raise ValueError(f"EvaCLIP.encode_text: expected token ids [B, <= {self.context_length}], got "
                             f"shape {tuple(text.shape)} (tokenize with clip.model.get_tokenizer())")
        x = self.text(text)
        return F.normalize(x, dim=-1) if normalize else x

    def _clip_loss(self) -> ClipLoss:
        rank, world = comm.get_rank(), comm.get_world_size()
        loss = self._loss
        if loss is None or (loss.rank, loss.world_size) != (rank, world):
            loss = ClipLoss(local_loss=self.local_loss, gather_with_grad=self.gather_with_grad,
                            cache_labels=True, rank=rank, world_size=world)
            self._loss = loss
        return loss

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Engine entry point.

        Args:
            batch: ``{"image": FloatTensor[B,3,H,W], "text": LongTensor[B,context_length]}``; in eval
                mode either key may be absent.

        Returns:
            Train mode: ``{"loss_clip", "logit_scale"}`` (the engine sums ``loss*`` keys; ``logit_scale``
            is the clamped ``exp`` value, logged). Eval mode: L2-normalised ``image_features`` and/or
            ``text_features`` and ``logit_scale``.
        """
        if not isinstance(batch, Mapping):
            raise TypeError("EvaCLIP expects a dict batch with 'image' and 'text', got "
                            f"{type(batch).__name__}")
        if self.training:
            missing = [k for k in ("image", "text") if k not in batch]
            if missing:
                raise KeyError(f"EvaCLIP training batch lacks {missing}; it has {sorted(batch)}")
        out: dict[str, torch.Tensor] = {}
        if "image" in batch:
            out["image_features"] = self.encode_image(batch["image"], normalize=True)
        if "text" in batch:
            out["text_features"] = self.encode_text(batch["text"], normalize=True)
        scale = self.logit_scale_value()
        if not self.training:
            out["logit_scale"] = scale
            return out
        loss = self._clip_loss()(out["image_features"], out["text_features"], scale)
        return {"loss_clip": loss, "logit_scale": scale.detach()}

    def no_weight_decay(self) -> set[str]:
        """Names excluded from weight decay (vision tower's tokens and the temperature, as open_clip)."""
        return {"logit_scale", "text.positional_embedding",
                *(f"visual.{n}" for n in self.visual.no_weight_decay())}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)


def list_eva_clip_models() -> list[str]:
    """Names accepted by :func:`create_eva_clip`."""
    return sorted(EVA_CLIP_CONFIGS)


def create_eva_clip(name: str, *, vision_init: str | os.PathLike | None = None, **overrides: Any) -> EvaCLIP:
    """Build a configured EVA-CLIP.

    Args:
        name: a key of :data:`EVA_CLIP_CONFIGS`.
        vision_init: EVA MIM checkpoint for the vision tower (see :class:`EvaCLIP`).
        **overrides: ``embed_dim``, ``init_logit_scale``, ``local_loss``, ``gather_with_grad`` replace
            the config's; ``vision_cfg`` / ``text_cfg`` dicts update the config's dicts.

    Raises:
        ValueError: unknown name.
    """
    if name not in EVA_CLIP_CONFIGS:
        raise ValueError(f"unknown EVA-CLIP model {name!r}; known: {list_eva_clip_models()}")
    cfg = copy.deepcopy(EVA_CLIP_CONFIGS[name])
    for part in ("vision_cfg", "text_cfg"):
        cfg[part].update(overrides.pop(part, {}) or {})
    cfg.update(overrides)
    return EvaCLIP(**cfg, vision_init=vision_init)


def get_tokenizer(context_length: int = 77):
    """open_clip's OpenAI BPE tokenizer (vocabulary ships with open_clip: works offline).

    ``tok(["a photo of a cat"])`` -> ``LongTensor[1, context_length]`` with SOT 49406 ... EOT 49407 and
    zero padding; too long texts are truncated keeping EOT.
    """
    return open_clip.SimpleTokenizer(context_length=context_length)
