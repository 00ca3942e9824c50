"""Stage 2 shared by ``k{400,600,700}_stage2.py`` (docs/recipes/video.md#stage-2-per-dataset-fine-tuning).

Paper Table 16: 16 frames at 224, lr 1e-6 constant (no warmup), layer decay 0.95, drop path 0.2, no
mixup / CutMix, label smoothing 0.1, batch 256, 1 epoch on K-400, 2 on K-600 and K-700. AdamW as stage 1
(betas (0.9, 0.98), eps 1e-6, weight decay 0.05). The encoder starts from the stage-1 checkpoint
(``model.net.checkpoint_path``, resampled from 8 to 16 frames by ``video.load_video_checkpoint``) and the
head from its K-722 rows (``model.head_init_checkpoint`` + ``model.head_init_rows``: the
``k722_to_<dataset>.json`` of ``tools/make_kinetics722.py``).

Effective batch on fewer GPUs: keep ``dataloader.train.total_batch_size * train.grad_accum_steps`` = 256
(32 x 8 here; 8 GPUs x 1 clip: ``dataloader.train.total_batch_size=8 train.grad_accum_steps=32``).
"""
from fvcore.common.param_scheduler import ConstantParamScheduler

from eva_core.config import LazyCall as L

from .video_base import (adamw, epochs_to_iters, kinetics_loaders, label_smoothing_ce, train_settings,
                         video_classifier)

NUM_FRAMES = 16
EFFECTIVE_BATCH = 256
PER_STEP_BATCH = 32
STAGE1_CHECKPOINT = "output/k722_stage1/model_final.pth"
DATA_ROOT = "datasets/kinetics"


def stage2(name, num_classes, num_clips, epochs):
    """model, dataloader, optimizer, lr_multiplier, train of the stage-2 run on Kinetics-``name``."""
    model = video_classifier("eva_video_giant_patch14_224_f16", num_classes, NUM_FRAMES,
                             checkpoint=STAGE1_CHECKPOINT, drop_path=0.2, grad_checkpointing=True)
    model.criterion = label_smoothing_ce(0.1)
    model.head_init_checkpoint = STAGE1_CHECKPOINT
    model.head_init_rows = f"{DATA_ROOT}/k722_to_{name}.json"
    dataloader = kinetics_loaders(f"{DATA_ROOT}/{name}_train.txt", f"{DATA_ROOT}/{name}_val.txt", DATA_ROOT,
                                  NUM_FRAMES, total_batch_size=PER_STEP_BATCH)
    optimizer = adamw(lr=1e-6, layer_decay=0.95, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05)
    lr_multiplier = L(ConstantParamScheduler)(value=1.0)
    train = train_settings(f"./output/{name}_stage2",
                           max_iter=epochs_to_iters(epochs, num_clips, EFFECTIVE_BATCH),
                           grad_accum_steps=EFFECTIVE_BATCH // PER_STEP_BATCH)
    return model, dataloader, optimizer, lr_multiplier, train
