"""EVA-g intermediate fine-tuning on ImageNet-21K at 224 (paper Table 12;
docs/recipes/classification.md#in-21k-intermediate-fine-tuning).

From the MIM model (``eva_psz14.pt``) to ``eva_21k_224px_psz14.pt``: batch 4096, lr 1e-4,
layer decay 0.85, 60 epochs (15 warmup), drop path 0.4, RandAug (9, 0.5), label smoothing 0.1,
CutMix 1.0 (no mixup, no random erasing), RandomResizedCrop scale (0.5, 1), AdamW
betas (0.9, 0.98) eps 1e-6, weight decay 0.05, no EMA, patch embedding frozen.

Effective batch 4096 = ``dataloader.train.total_batch_size`` (1024, over all GPUs, e.g. 128 x 8)
x ``train.grad_accum_steps`` (4). On fewer GPUs keep the product, e.g. 32 GPUs x 8:
``dataloader.train.total_batch_size=256 train.grad_accum_steps=16``. CutMix needs an even
per-GPU batch.

    python tools/lazyconfig_train_net.py --config-file configs/classification/in21k_ft_224.py \\
        --num-gpus 8 model.net.checkpoint_path=eva_psz14.pt \\
        dataloader.train.dataset.root=/data/imagenet21k/train
"""
from .ft_base import (adamw, classifier, cutmix_only, dataloaders, epochs_to_iters, train_settings,
                      warmup_cosine)

num_classes = 21841           # ImageNet-21K (fall11) classes
num_train_images = 14_197_122  # ImageNet-21K (fall11) images
image_size = 224
epochs, warmup_epochs = 60, 15
effective_batch = 4096
total_batch_size, grad_accum_steps = 1024, 4

model = classifier("eva_giant_patch14_224", num_classes, checkpoint="eva_psz14.pt", drop_path=0.4)
model.mixup = cutmix_only(num_classes, label_smoothing=0.1)  # criterion: timm SoftTargetCrossEntropy

dataloader = dataloaders("datasets/imagenet21k/train", "datasets/imagenet21k/val", image_size,
                         scale=(0.5, 1.0), total_batch_size=total_batch_size)

optimizer = adamw(lr=1e-4, layer_decay=0.85, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05)
lr_multiplier = warmup_cosine(warmup_epochs, epochs)

train = train_settings("./output/in21k_ft_224",
                       max_iter=epochs_to_iters(epochs, num_train_images, effective_batch),
                       grad_accum_steps=grad_accum_steps, ema_decay=None)
