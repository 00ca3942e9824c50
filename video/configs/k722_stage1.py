"""Stage 1: EVA-g video fine-tuning on Kinetics-722 at 8 frames (docs/recipes/video.md#stage-1-kinetics-722).

Paper Table 15: 8 frames at 224, AdamW betas (0.9, 0.98), eps 1e-6, weight decay 0.05, lr 8e-6, cosine
over 40 epochs with 5 warmup, batch 256, drop path 0.3, mixup 0.8 / CutMix 1.0, label smoothing 0.1, no
layer decay. 629,395 clips (``tools/make_kinetics722.py`` writes ``k722_train.txt``)::

    python tools/lazyconfig_train_net.py --config-file video/configs/k722_stage1.py \\
        model.net.checkpoint_path=PATH/TO/eva_image_checkpoint.pt

``model.net.checkpoint_path`` is an IMAGE checkpoint of EVA-g, inflated to the video model on load.
Effective batch on fewer GPUs: keep ``dataloader.train.total_batch_size * train.grad_accum_steps`` =
256 (64 x 4 here; 8 GPUs x 2 clips: ``dataloader.train.total_batch_size=16 train.grad_accum_steps=16``).
"""
from .video_base import (adamw, clip_mixup, epochs_to_iters, kinetics_loaders, train_settings,
                         video_classifier, warmup_cosine)

num_classes = 722
num_frames = 8
num_clips = 629_395  # K-722 training clips (paper Table 14)
effective_batch = 256
epochs = 40
data_root = "datasets/kinetics"

model = video_classifier("eva_video_giant_patch14_224_f8", num_classes, num_frames,
                         checkpoint="eva_psz14.pt", drop_path=0.3, grad_checkpointing=True)
model.mixup = clip_mixup(num_classes, label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0)

# K-722 has no validation set of its own; the K-400 validation list is the progress check
dataloader = kinetics_loaders(f"{data_root}/k722_train.txt", f"{data_root}/k400_val.txt", data_root,
                              num_frames, total_batch_size=64)

optimizer = adamw(lr=8e-6, layer_decay=1.0, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05)
lr_multiplier = warmup_cosine(warmup_epochs=5, epochs=epochs)

train = train_settings("./output/k722_stage1", max_iter=epochs_to_iters(epochs, num_clips, effective_batch),
                       grad_accum_steps=effective_batch // 64)
