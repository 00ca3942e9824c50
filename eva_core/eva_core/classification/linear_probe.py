"""Linear probing of a frozen encoder (MAE / EVA-CLIP protocol).

The encoder is frozen and kept in eval mode; its CLS token (``pool="token"``) or the mean of its
patch tokens (``pool="avg"``) goes through ``BatchNorm1d(affine=False)`` and a ``Linear`` head, the
only trained parameters. Optimizer: LARS (timm's :class:`timm.optim.Lars`, momentum 0.9, no weight
decay; see docs/recipes/classification.md) or SGD, with a linear warmup and a per-step cosine schedule.

With ``use_cache=True`` the features of every training image are computed once and the head is
trained on the cached features; this is much faster but sees each image under ONE draw of the
training transform, so give the training set a deterministic (eval) transform in that mode.
``use_cache=False`` runs the encoder every epoch and keeps the augmentation diverse.

Entry points: :func:`linear_probe` (called by other jobs, e.g. after MIM pre-training) and
``python -m eva_core.classification.linear_probe`` (CLI, see :func:`main`).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..evaluation import ClassificationEvaluator, inference_on_dataset

__all__ = ["LinearProbe", "extract_features", "linear_probe", "main"]

logger = logging.getLogger(__name__)

POOLS = ("token", "avg", "token_avg")


def _pool_tokens(encoder: nn.Module, tokens: torch.Tensor, pool: str) -> torch.Tensor:
    """``[B, prefix + N, C]`` tokens from ``forward_features`` -> ``[B, C]`` features."""
    if tokens.dim() != 3:
        raise ValueError(f"linear probe: encoder.forward_features returned shape {tuple(tokens.shape)}, "
                         "expected tokens [B, L, C]")
    prefix = int(getattr(encoder, "num_prefix_tokens", 1))
    if pool == "token":
        if prefix < 1:
            raise ValueError("linear probe: pool='token' needs an encoder with a CLS token "
                             "(num_prefix_tokens >= 1); use pool='avg'")
        return tokens[:, 0]
    if pool == "token_avg":
        if prefix < 1:
            raise ValueError("linear probe: pool='token_avg' needs an encoder with a CLS token; "
                             "use pool='avg'")
        return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(dim=1)], dim=1)
    return tokens[:, prefix:].mean(dim=1)


class LinearProbe(nn.Module):
    """Frozen encoder -> CLS / mean token -> BatchNorm1d(affine=False) -> Linear.

    Args:
        encoder: timm-API model with ``forward_features`` and ``num_features``; it is frozen
            (``requires_grad=False``) and always run in eval mode.
        num_classes: classifier outputs.
        pool: ``"token"`` (CLS, the EVA-CLIP / MAE protocol), ``"avg"`` (mean of patch tokens) or
            ``"token_avg"`` (both concatenated, as DINO's ViT-S probe; suits MIM encoders, whose
            CLS token gets no direct training signal).

    Forward: ``batch`` dict (``"image"``, or ``"features"`` for cached pooled features) or
    image tensor -> logits; ``forward_from_features`` skips the encoder.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, pool: str = "token") -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"linear probe: pool={pool!r}, expected one of {POOLS}")
        dim = getattr(encoder, "num_features", None)
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"linear probe: {type(encoder).__name__} has no positive int num_features")
        if int(num_classes) <= 0:
            raise ValueError(f"linear probe: num_classes must be positive, got {num_classes}")
        self.encoder = encoder.requires_grad_(False)
        self.pool = pool
        dim = 2 * dim if pool == "token_avg" else dim
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, int(num_classes))
        # MAE's probe init: small weights so LARS's trust ratio starts from a sane norm
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True) -> "LinearProbe":
        super().train(mode)
        self.encoder.eval()  # frozen: dropout / drop path stay off, BN stats of the encoder too
        return self

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features ``[B, C]`` (no gradient)."""
        return _pool_tokens(self.encoder, self.encoder.forward_features(images), self.pool).float()

    def forward_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(feats))

    def forward(self, batch: Any) -> torch.Tensor:
        if isinstance(batch, dict) and "features" in batch:
            return self.forward_from_features(batch["features"])
        images = batch["image"] if isinstance(batch, dict) else batch
        return self.forward_from_features(self.features(images))


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int) -> DataLoader:
    # A plain (unsharded) loader: the probe runs wholly in the calling process.
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=g, drop_last=False)


@torch.no_grad()
def extract_features(encoder: nn.Module, dataset: Dataset, *, batch_size: int = 64, pool: str = "token",
                     num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features and labels of every sample of ``dataset`` (in dataset order).

    Returns:
        ``(features [N, C] float32 on the encoder's device, labels [N] int64)``.
    """
    if pool not in POOLS:
        raise ValueError(f"linear probe: pool={pool!r}, expected one of {POOLS}")
    was_training = encoder.training
    encoder.eval()
    device = _device_of(encoder)
    feats, labels = [], []
    try:
        for batch in _loader(dataset, batch_size, False, num_workers, 0):
            tokens = encoder.forward_features(batch["image"].to(device, non_blocking=True))
            feats.append(_pool_tokens(encoder, tokens, pool).float())
            labels.append(torch.as_tensor(batch["label"]).long())
    finally:
        encoder.train(was_training)
    if not feats:
        raise ValueError("linear probe: the dataset is empty")
    return torch.cat(feats), torch.cat(labels).to(device)


def _num_classes(dataset: Dataset) -> int:
    n = getattr(dataset, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    classes = getattr(dataset, "classes", None)
    if classes:
        return len(classes)
    raise ValueError(f"linear probe: cannot infer the class count of {type(dataset).__name__} "
                     "(no num_classes / classes attribute); pass num_classes=")


def _lr_lambda(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _build_optimizer(probe: LinearProbe, name: str, lr: float, momentum: float,
                     weight_decay: float) -> torch.optim.Optimizer:
    if name == "lars":
        from timm.optim import Lars

        # LARS adapts the weight matrix only (bias plain SGD), with trust coefficient 1 as in
        # the MAE / EVA probe; timm only adapts when weight decay is set unless always_adapt.
        groups = [{"params": [probe.head.weight], "always_adapt": True, "weight_decay": weight_decay},
                  {"params": [probe.head.bias], "always_adapt": False, "weight_decay": 0.0}]
        return Lars(groups, lr=lr, momentum=momentum, trust_coeff=1.0)
    if name == "sgd":
        return torch.optim.SGD(probe.head.parameters(), lr=lr, momentum=momentum,
                               weight_decay=weight_decay)
    raise ValueError(f"linear probe: optimizer={name!r}, expected 'lars' or 'sgd'")


def linear_probe(encoder: nn.Module, train_dataset: Dataset, val_dataset: Dataset, *, epochs: int,
                 lr: float, batch_size: int, use_cache: bool = True, pool: str = "token",
                 optimizer: str = "lars", momentum: float = 0.9, weight_decay: float = 0.0,
                 warmup_epochs: int = 0, num_classes: int | None = None, num_workers: int = 0,
                 topk: Sequence[int] = (1, 5), seed: int = 0) -> dict[str, float]:
    """Train a linear probe on a frozen ``encoder`` and return its validation accuracy.

    Runs in the calling process on the encoder's device over the whole datasets (no sharding;
    in a multi-process job call it on one rank). The encoder's weights and train/eval mode are
    left as they were.

    Args:
        encoder: timm-API encoder (``forward_features``, ``num_features``).
        train_dataset, val_dataset: datasets of ``{"image", "label"}`` dicts.
        epochs: passes over the training set.
        lr: peak learning rate (EVA-CLIP: 1.0 with LARS at batch 16000).
        batch_size: probe batch size (also used for feature extraction).
        use_cache: extract features once (fast; one augmentation draw per image).
        pool: ``"token"`` (CLS) or ``"avg"`` (mean of patch tokens).
        optimizer: ``"lars"`` (timm.optim.Lars) or ``"sgd"``.
        momentum, weight_decay: optimizer settings (EVA: 0.9, 0).
        warmup_epochs: linear warmup before the per-step cosine decay.
        num_classes: classes (default: ``train_dataset.num_classes`` / ``len(classes)``).
        num_workers: data-loader workers.
        topk: accuracies to report.
        seed: shuffling and head-initialisation seed.

    Returns:
        ``{"top1": %, "top5": %, "num_samples": n, "train_loss": mean loss of the last epoch}``.
    """
    if epochs <= 0 or batch_size <= 0 or lr <= 0:
        raise ValueError(f"linear probe: epochs, batch_size and lr must be positive, got "
                         f"epochs={epochs}, batch_size={batch_size}, lr={lr}")
    if not 0 <= warmup_epochs < epochs:
        raise ValueError(f"linear probe: warmup_epochs={warmup_epochs} must be in [0, epochs={epochs})")
    num_classes = num_classes or _num_classes(train_dataset)
    device = _device_of(encoder)
    grad_state = {n: p.requires_grad for n, p in encoder.named_parameters()}
    was_training = encoder.training
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = LinearProbe(encoder, num_classes, pool).to(device)
    try:
        opt = _build_optimizer(probe, optimizer, lr, momentum, weight_decay)
        criterion = nn.CrossEntropyLoss()
        if use_cache:
            train_x, train_y = extract_features(encoder, train_dataset, batch_size=batch_size, pool=pool,
                                                num_workers=num_workers)
            n_train = train_x.shape[0]
        else:
            n_train = len(train_dataset)
        steps_per_epoch = math.ceil(n_train / batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, _lr_lambda(epochs * steps_per_epoch, warmup_epochs * steps_per_epoch))
        g = torch.Generator().manual_seed(seed)

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            # one permutation stream for both modes: cached and live probes see the same batches
            perm = torch.randperm(n_train, generator=g)
            if use_cache:
                perm = perm.to(device)
                for i in range(0, n_train, batch_size):
                    idx = perm[i:i + batch_size]
                    yield train_x[idx], train_y[idx]
            else:
                loader = DataLoader(train_dataset, batch_size=batch_size, sampler=perm.tolist(),
                                    num_workers=num_workers, drop_last=False)
                for batch in loader:
                    labels = torch.as_tensor(batch["label"]).to(device)
                    yield probe.features(batch["image"].to(device)), labels

        last_loss = float("nan")
        for epoch in range(epochs):
            probe.train()
            total, count = 0.0, 0
            for feats, labels in batches():
                if feats.shape[0] < 2:
                    continue  # BatchNorm needs two samples; a lone remainder sample is skipped
                loss = criterion(probe.forward_from_features(feats), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * feats.shape[0]
                count += feats.shape[0]
            last_loss = total / max(count, 1)
            logger.info("linear probe epoch %d/%d: loss %.4f", epoch + 1, epochs, last_loss)

        if use_cache:
            val_x, val_y = extract_features(encoder, val_dataset, batch_size=batch_size, pool=pool,
                                            num_workers=num_workers)
            val_loader: Any = [{"features": val_x[i:i + batch_size], "label": val_y[i:i + batch_size]}
                               for i in range(0, val_x.shape[0], batch_size)]
        else:
            val_loader = _loader(val_dataset, batch_size, False, num_workers, 0)
        results = dict(inference_on_dataset(probe, val_loader, ClassificationEvaluator(topk=topk)))
        results["train_loss"] = last_loss
        return results
    finally:
        for n, p in encoder.named_parameters():
            p.requires_grad_(grad_state[n])
        encoder.train(was_training)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """CLI: ``python -m eva_core.classification.linear_probe --model NAME --checkpoint F
    --train-root DIR --val-root DIR [--epochs 90 --lr 1.0 --batch-size 16000 ...]``.

    Folders are class-folder layouts (``eva_core.data.ImageFolderDataset``). Prints the result
    as JSON (and writes it to ``--output`` if given).
    """
    import eva_core
    from ..data import ImageFolderDataset, build_transform
    from ..data.transforms import CLIP_MEAN, CLIP_STD

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--model", required=True, help="eva_core model name, e.g. eva_giant_patch14_clip_224")
    ap.add_argument("--checkpoint", default=None, help="encoder weights (any layout load_checkpoint reads)")
    ap.add_argument("--model-kwargs", default="{}", help="JSON dict of create_model overrides")
    ap.add_argument("--train-root", required=True)
    ap.add_argument("--val-root", required=True)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=90)
    ap.add_argument("--warmup-epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=16000)
    ap.add_argument("--optimizer", choices=("lars", "sgd"), default="lars")
    ap.add_argument("--pool", choices=POOLS, default="token")
    ap.add_argument("--no-cache", action="store_true", help="run the encoder every epoch (RRC + flip)")
    ap.add_argument("--num-workers", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--output", default=None, help="write the result JSON here")
    args = ap.parse_args(argv)

    encoder = eva_core.create_model(args.model, checkpoint_path=args.checkpoint, num_classes=0,
                                    **json.loads(args.model_kwargs)).to(args.device)
    cached = not args.no_cache
    train_tf = build_transform(not cached, args.img_size, mean=CLIP_MEAN, std=CLIP_STD, crop_pct=1.0)
    val_tf = build_transform(False, args.img_size, mean=CLIP_MEAN, std=CLIP_STD, crop_pct=1.0)
    result = linear_probe(encoder, ImageFolderDataset(args.train_root, train_tf),
                          ImageFolderDataset(args.val_root, val_tf), epochs=args.epochs, lr=args.lr,
                          batch_size=args.batch_size, use_cache=cached, pool=args.pool,
                          optimizer=args.optimizer, warmup_epochs=args.warmup_epochs,
                          num_workers=args.num_workers)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
