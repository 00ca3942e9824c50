"""Zero-shot classification with a CLIP model (``docs/recipes/clip.md#zero-shot-classification``).

The class weights are open_clip's construction (:func:`open_clip.build_zero_shot_classifier`, which fits
:meth:`clip.model.EvaCLIP.encode_text`): per class, the L2-normalised text embeddings of every
template are averaged and the mean is renormalised. :class:`ZeroShotClassifier` turns a CLIP model into
an engine classification model (eval mode returns logits ``[B, C]``) so that eva_core's
:class:`~eva_core.evaluation.ClassificationEvaluator` scores it through
:func:`~eva_core.evaluation.inference_on_dataset`, periodically during training or with ``--eval-only``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import open_clip
import torch
import torch.nn as nn

__all__ = ["IMAGENET_CLASSNAMES", "OPENAI_IMAGENET_TEMPLATES", "build_zero_shot_classifier",
           "ZeroShotClassifier", "read_classnames"]

#: open_clip's 1000 ImageNet-1K class names (index = IN-1K label) and OpenAI's 80 prompt templates
IMAGENET_CLASSNAMES: tuple[str, ...] = tuple(open_clip.IMAGENET_CLASSNAMES)
OPENAI_IMAGENET_TEMPLATES: tuple[Callable[[str], str], ...] = tuple(open_clip.OPENAI_IMAGENET_TEMPLATES)


def _check_templates(templates: Sequence[str | Callable[[str], str]]) -> list:
    templates = list(templates)
    if not templates:
        raise ValueError("zero-shot templates: empty list; give format strings like 'a photo of a {}.'")
    for t in templates:
        if isinstance(t, str) and "{}" not in t and "{c}" not in t:
            raise ValueError(f"zero-shot template {t!r} has no '{{}}' placeholder for the class name")
    # open_clip decides str-vs-callable from the first template only; one kind keeps that sound
    if len({isinstance(t, str) for t in templates}) > 1:
        raise ValueError("zero-shot templates: mix of format strings and callables; use one kind")
    # "{c}" reads better in configs; open_clip formats positionally
    return [t.replace("{c}", "{}") if isinstance(t, str) else t for t in templates]


@torch.no_grad()
def build_zero_shot_classifier(model: nn.Module, tokenizer: Callable, classnames: Sequence[str],
                               templates: Sequence[str | Callable[[str], str]], *,
                               num_classes_per_batch: int | None = 10,
                               device: str | torch.device | None = None) -> torch.Tensor:
    """Class weights ``[embed_dim, num_classes]``: mean of normalised template embeddings, renormalised.

    Args:
        model: a CLIP model with ``encode_text(tokens, normalize=True)``.
        tokenizer: ``tok(list_of_str) -> LongTensor[N, context_length]``.
        classnames: one name per class (column ``c`` is class ``c``).
        templates: format strings with ``{}`` (or ``{c}``) for the class name, or callables.
        num_classes_per_batch: classes encoded per forward (all at once if None).
        device: where the tokens go (default: the model's device).

    Raises:
        ValueError: empty class names or templates, a template without a placeholder.
    """
    classnames = [str(c) for c in classnames]
    if not classnames:
        raise ValueError("zero-shot classifier: empty class-name list")
    if device is None:
        device = next(model.parameters()).device
    return open_clip.build_zero_shot_classifier(model, tokenizer, classnames, _check_templates(templates),
                                                num_classes_per_batch=num_classes_per_batch, device=device)


def read_classnames(path: str) -> list[str]:
    """Class names from a text file, one per line (blank lines are an error: they would shift labels)."""
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    while lines and not lines[-1].strip():
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank or not lines:
        raise ValueError(f"{path}: expected one class name per line; blank line(s) {blank[:5]}"
                         if blank else f"{path}: no class names")
    return [line.strip() for line in lines]


class ZeroShotClassifier(nn.Module):
    """A CLIP model as an engine classification model.

    Train mode passes the batch to the CLIP model (its contrastive losses), so one config trains the
    model and evaluates it zero-shot every ``train.eval_period``. Eval mode returns logits
    ``logit_scale * image_features @ class_weights``; the class weights are built from the current
    text tower at the first eval batch and dropped when the module goes back to train mode or loads
    a state dict (they depend on the weights, so they are not saved).

    Args:
        model: CLIP model with ``encode_image(images, normalize=True)`` and ``encode_text``
            (``clip.model.EvaCLIP`` or an open_clip model).
        classnames: class names, in label order.
        templates: prompt templates (``"a photo of a {}."``), e.g. :data:`OPENAI_IMAGENET_TEMPLATES`.
        tokenizer: the model's tokenizer (default: open_clip's ``SimpleTokenizer`` with the
            model's ``context_length``).
        logit_scale: multiplier of the cosine similarities (CLIP's 100; ranks do not depend on it).
    """

    def __init__(self, model: nn.Module, classnames: Sequence[str],
                 templates: Sequence[str | Callable[[str], str]], tokenizer: Callable | None = None,
                 logit_scale: float = 100.0):
        super().__init__()
        self.model = model
        self.classnames = [str(c) for c in classnames]
        self.templates = _check_templates(templates)
        if not self.classnames:
            raise ValueError("ZeroShotClassifier: empty class-name list")
        self.tokenizer = tokenizer or open_clip.SimpleTokenizer(
            context_length=getattr(model, "context_length", 77))
        self.logit_scale = float(logit_scale)
        self._class_weights: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def class_weights(self) -> torch.Tensor:
        """``[embed_dim, num_classes]`` for the current weights (built once per eval phase)."""
        if self._class_weights is None:
            self._class_weights = build_zero_shot_classifier(self.model, self.tokenizer, self.classnames,
                                                             self.templates)
        return self._class_weights

    def train(self, mode: bool = True) -> "ZeroShotClassifier":
        self._class_weights = None  # the text tower may change from here on
        return super().train(mode)

    def load_state_dict(self, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any):
        self._class_weights = None
        return super().load_state_dict(state_dict, *args, **kwargs)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Any:
        """Train mode: ``model(batch)`` (losses). Eval mode: logits ``[B, num_classes]``."""
        if self.training:
            return self.model(batch)
        if not isinstance(batch, Mapping) or "image" not in batch:
            raise KeyError("ZeroShotClassifier expects a dict batch with 'image' in eval mode, got "
                           f"{sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__}")
        weights = self.class_weights()
        with torch.no_grad():
            features = self.model.encode_image(batch["image"], normalize=True)
        return self.logit_scale * features @ weights.to(features.dtype)

    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.model, "no_weight_decay", None)
        return {f"model.{n}" for n in inner()} if callable(inner) else set()
