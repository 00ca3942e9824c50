"""Objects365 intermediate fine-tuning, phase 2: the last 60k of 380k iterations at 1280.

Starts from phase 1's final model (``cascade_mask_rcnn_vitdet_eva_1024.py``, every tensor loads:
``train.min_loaded.init=1.0``); the relative-position tables of the global blocks (sized for 64 tokens
at 1024) are resampled to 80 tokens when it loads. Same optimiser, lr 1e-4 without warmup.
"""
from .cascade_mask_rcnn_vitdet_eva_1024 import dataloader, lr_multiplier, model, optimizer, train

image_size = 1280

model.backbone.net.img_size = image_size
model.backbone.square_pad = image_size
dataloader.train.dataset.mapper.image_size = image_size
dataloader.test.dataset.mapper.image_size = image_size

lr_multiplier.warmup_iters = 0

train.output_dir = "./output/vitdet_eva_o365_1280"
train.init_checkpoint = "output/vitdet_eva_o365_1024/model_final.pth"
train.min_loaded.init = 1.0
train.max_iter = 60000

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
