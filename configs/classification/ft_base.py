"""Shared pieces of the EVA image-classification fine-tuning recipes (docs/recipes/classification.md).

Not a recipe by itself: ``in21k_ft_224.py``, ``in1k_ft_336.py``, ``in1k_ft_560.py`` and
``toy_ft.py`` import it and set the numbers of their stage.

What every stage shares:

* model: ``ImageClassifier`` around the EVA encoder from ``eva_core.create_model``; mean pooling
  + ``fc_norm`` head (``model.net.global_pool="token"`` switches to the CLS head); drop path 0.4;
  the patch embedding is frozen (``freeze_patch_embed=True``: gradient stopped after it).
* initial weights: ``model.net.checkpoint_path`` is loaded by ``create_model`` through
  ``eva_core.load_checkpoint``, which maps the layout and resamples the position embedding to this
  stage's resolution (16x16 -> 24x24 at 336, -> 40x40 at 560); a head of another size is left
  freshly initialised. ``train.init_checkpoint`` stays free for the engine.
* optimizer: AdamW with layer-wise lr decay (``eva_core.optim.layer_decay``; scale
  ``lrd ** (L + 1 - layer_id)``, block ``i`` -> ``i + 1``), weight decay 0.05 (none on 1-D
  params, biases, pos_embed and tokens); per-step cosine with linear warmup.
* data: RandomResizedCrop + flip + timm RandAugment ``rand-m9-mstd0.5-inc1`` (magnitude 9,
  magnitude std 0.5), bicubic, CLIP mean/std; test: resize + center crop with crop ratio 1.0
  (``crop_pct=1.0``: the whole image resized to the test size); no random erasing.

Effective batch size and fewer GPUs: one iteration = one optimizer step over
``dataloader.train.total_batch_size * train.grad_accum_steps`` images
(``total_batch_size`` is summed over all GPUs). Each recipe sets the paper's effective batch with a
per-step batch and an accumulation count; to run on other hardware keep the product fixed, e.g.
for the 512 of the IN-1K stage on 2 GPUs x 16 images:
``dataloader.train.total_batch_size=32 train.grad_accum_steps=16``. ``train.max_iter`` counts
optimizer steps, so it does not change.
"""
import copy

from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy

from eva_core import create_model
from eva_core.classification import ImageClassifier
from eva_core.config import LazyCall as L
from eva_core.data import (CLIP_MEAN, CLIP_STD, ImageFolderDataset, build_test_loader, build_train_loader,
                           build_transform)
from eva_core.evaluation import ClassificationEvaluator

from ..common.optim import AdamW
from ..common.schedule import cosine
from ..common.train import train

RAND_AUGMENT = "rand-m9-mstd0.5-inc1"  # RandAug (9, 0.5) in timm's notation


def epochs_to_iters(epochs, num_images, effective_batch):
    """Optimizer steps of ``epochs`` passes over ``num_images`` at ``effective_batch`` per step."""
    return int(round(epochs * num_images / effective_batch))


def classifier(model_name, num_classes, checkpoint=None, drop_path=0.4, global_pool="avg", **net_kwargs):
    """LazyCall of the fine-tuning model (label smoothing / CutMix are set by each recipe)."""
    return L(ImageClassifier)(
        net=L(create_model)(name=model_name, checkpoint_path=checkpoint, num_classes=num_classes,
                            drop_path_rate=drop_path, global_pool=global_pool, **net_kwargs),
        criterion=None,
        mixup=None,
        freeze_patch_embed=True,
    )


def cutmix_only(num_classes, label_smoothing):
    """timm Mixup configured as CutMix 1.0 on every batch, no mixup (the IN-21K stage)."""
    return L(Mixup)(mixup_alpha=0.0, cutmix_alpha=1.0, cutmix_minmax=None, prob=1.0, switch_prob=0.0,
                    mode="batch", label_smoothing=label_smoothing, num_classes=num_classes)


def label_smoothing_ce(smoothing):
    return L(LabelSmoothingCrossEntropy)(smoothing=smoothing)


def dataloaders(train_root, test_root, img_size, scale, total_batch_size, test_batch_size=64,
                num_workers=8, topk=(1, 5), auto_augment=RAND_AUGMENT, interpolation="bicubic",
                train_dataset=None, test_dataset=None):
    """Train / test loaders and the top-k evaluator for class-folder datasets."""
    train_tf = L(build_transform)(is_train=True, img_size=img_size, scale=scale, hflip=0.5,
                                  auto_augment=auto_augment, interpolation=interpolation,
                                  mean=CLIP_MEAN, std=CLIP_STD)
    test_tf = L(build_transform)(is_train=False, img_size=img_size, crop_pct=1.0,
                                 interpolation=interpolation, mean=CLIP_MEAN, std=CLIP_STD)
    return dict(
        train=L(build_train_loader)(
            dataset=train_dataset or L(ImageFolderDataset)(root=train_root, transform=train_tf),
            total_batch_size=total_batch_size, num_workers=num_workers, seed=0),
        test=L(build_test_loader)(
            dataset=test_dataset or L(ImageFolderDataset)(root=test_root, transform=test_tf),
            batch_size=test_batch_size, num_workers=num_workers),
        evaluator=L(ClassificationEvaluator)(topk=topk),
    )


def adamw(lr, layer_decay, betas, eps, weight_decay=0.05):
    opt = copy.deepcopy(AdamW)
    opt.lr = lr
    opt.betas = betas
    opt.eps = eps
    opt.weight_decay = weight_decay
    opt.params.weight_decay = weight_decay
    opt.params.layer_decay = layer_decay
    return opt


def warmup_cosine(warmup_epochs, epochs, warmup_factor=1e-3, min_ratio=0.0):
    sched = copy.deepcopy(cosine)
    sched.warmup_fraction = warmup_epochs / epochs
    sched.warmup_factor = warmup_factor
    sched.min_ratio = min_ratio
    return sched


def train_settings(output_dir, max_iter, grad_accum_steps, ema_decay=None, eval_period=None):
    """The shared engine settings with this stage's length, accumulation and EMA."""
    t = copy.deepcopy(train)
    t["output_dir"] = output_dir
    t["max_iter"] = max_iter
    t["grad_accum_steps"] = grad_accum_steps
    t["ema"]["enabled"] = ema_decay is not None
    t["ema"]["decay"] = ema_decay if ema_decay is not None else 0.9999
    t["amp"]["enabled"] = True  # bf16 autocast; EVA-g does not fit fp32 activations at 560
    t["eval_period"] = eval_period if eval_period is not None else max(1, max_iter // 10)
    t["checkpointer"]["period"] = max(1, max_iter // 10)
    t["seed"] = 0
    return t
