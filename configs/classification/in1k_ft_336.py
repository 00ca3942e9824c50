"""EVA-g fine-tuning on ImageNet-1K at 336 (docs/recipes/classification.md#in-1k-fine-tuning) -> 89.6 top-1.

From the IN-21K intermediate model (``eva_21k_224px_psz14.pt``; its 16x16 position grid is
resampled to 24x24 on load, its 21841-class head is replaced): batch 512, lr 3e-5, layer decay
0.95, 10 epochs (2 warmup), drop path 0.4, RandAug (9, 0.5), label smoothing 0.3, no
CutMix / mixup / random erasing, RandomResizedCrop scale (0.08, 1), AdamW betas (0.9, 0.999)
eps 1e-8, weight decay 0.05, EMA 0.9999 (evaluated as ``ema/top1``), test crop ratio 1.0, patch
embedding frozen.

Effective batch 512 = ``dataloader.train.total_batch_size`` (128 over all GPUs, e.g. 16 x 8)
x ``train.grad_accum_steps`` (4). On 2 GPUs x 16: ``dataloader.train.total_batch_size=32
train.grad_accum_steps=16``.
"""
from .ft_base import (adamw, classifier, dataloaders, epochs_to_iters, label_smoothing_ce,
                      train_settings, warmup_cosine)

num_classes = 1000
num_train_images = 1_281_167  # ImageNet-1K train
image_size = 336
epochs, warmup_epochs = 10, 2
effective_batch = 512
total_batch_size, grad_accum_steps = 128, 4

model = classifier("eva_giant_patch14_336", num_classes, checkpoint="eva_21k_224px_psz14.pt", drop_path=0.4)
model.criterion = label_smoothing_ce(0.3)

dataloader = dataloaders("datasets/imagenet/train", "datasets/imagenet/val", image_size,
                         scale=(0.08, 1.0), total_batch_size=total_batch_size)

optimizer = adamw(lr=3e-5, layer_decay=0.95, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
lr_multiplier = warmup_cosine(warmup_epochs, epochs)

train = train_settings("./output/in1k_ft_336",
                       max_iter=epochs_to_iters(epochs, num_train_images, effective_batch),
                       grad_accum_steps=grad_accum_steps, ema_decay=0.9999)
