"""EVA-g fine-tuning on ImageNet-1K at 560 (docs/recipes/classification.md#in-1k-fine-tuning) -> 89.7 top-1.

The 336 recipe (``in1k_ft_336.py``) at 560 px for 15 epochs (2 warmup), with activation
checkpointing: the IN-21K model's 16x16 position grid is resampled to 40x40 on load. Every other
number is the 336 recipe's.

Effective batch 512 = ``dataloader.train.total_batch_size`` (64 over all GPUs, e.g. 8 x 8)
x ``train.grad_accum_steps`` (8). On 2 GPUs x 8: ``dataloader.train.total_batch_size=16
train.grad_accum_steps=32``.
"""
from .ft_base import classifier, dataloaders, epochs_to_iters, train_settings, warmup_cosine
from .in1k_ft_336 import effective_batch, model, num_classes, num_train_images, optimizer

image_size = 560
epochs, warmup_epochs = 15, 2
total_batch_size, grad_accum_steps = 64, 8

# activation checkpointing: EVA-g's activations at 40x40 tokens do not fit without it
model.net = classifier("eva_giant_patch14_560", num_classes, checkpoint="eva_21k_224px_psz14.pt",
                       drop_path=0.4, grad_checkpointing=True).net
dataloader = dataloaders("datasets/imagenet/train", "datasets/imagenet/val", image_size,
                         scale=(0.08, 1.0), total_batch_size=total_batch_size)
lr_multiplier = warmup_cosine(warmup_epochs, epochs)
train = train_settings("./output/in1k_ft_560",
                       max_iter=epochs_to_iters(epochs, num_train_images, effective_batch),
                       grad_accum_steps=grad_accum_steps, ema_decay=0.9999)
