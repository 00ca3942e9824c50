"""Objects365 intermediate fine-tuning, phase 1: the first 320k of 380k iterations at 1024.

Paper appendix A.3 / Table 17 (docs/recipes/detection.md#objects365-intermediate; the EVA-01 release
has no Objects365 config): AdamW (0.9, 0.999, 1e-8), lr 1e-4, weight decay 0.1, layer decay 0.9 over
40 blocks, batch 128, drop path 0.6; initialised from the MIM encoder converted to patch 16
(``eva_psz14to16.pt``, docs/recipes/encoder.md). The paper gives no lr schedule: the lr stays at 1e-4
after a 250-iteration warmup. Objects365 in COCO format (365 classes, read from the json).
Phase 2 (``cascade_mask_rcnn_vitdet_eva_1280.py``) continues at 1280 for the last 60k iterations.
"""
from eva_core.config import LazyCall as L
from vitdet_eva.data import json_num_classes

from ..COCO.cascade_mask_rcnn_vitdet_eva import dataloader, lr_multiplier, model, optimizer, train

image_size = 1024

model.backbone.net.img_size = image_size
model.backbone.square_pad = image_size
model.roi_heads.num_classes = L(json_num_classes)(json_file="${dataloader.train.dataset.dicts.json_file}")

dataloader.train.dataset.dicts.json_file = "datasets/objects365/annotations/zhiyuan_objv2_train.json"
dataloader.train.dataset.dicts.image_root = "datasets/objects365/train"
dataloader.test.dataset.dicts.json_file = "datasets/objects365/annotations/zhiyuan_objv2_val.json"
dataloader.test.dataset.dicts.image_root = "datasets/objects365/val"
dataloader.train.dataset.mapper.image_size = image_size
dataloader.test.dataset.mapper.image_size = image_size
dataloader.train.total_batch_size = 128

optimizer.lr = 1e-4

lr_multiplier.steps = []
lr_multiplier.warmup_iters = 250

train.output_dir = "./output/vitdet_eva_o365_1024"
train.init_checkpoint = "eva_psz14to16.pt"
train.max_iter = 320000
train.eval_period = 20000
train.checkpointer.period = 10000

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
