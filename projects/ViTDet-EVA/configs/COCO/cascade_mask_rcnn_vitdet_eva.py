"""EVA-g ViTDet Cascade Mask R-CNN fine-tuned on COCO at 1280 from the Objects365 model.

Paper Table 18 (docs/recipes/detection.md#coco-fine-tuning): AdamW (0.9, 0.999, 1e-8), lr 2.5e-5,
weight decay 0.1, layer decay 0.9, batch 64, input 1280, drop path 0.6, 45k iterations with the lr
divided by 10 at 40k, warmup 500, AMP, at most 100 detections per image -> 64.2 box / 55.0 mask AP on
val (without TTA). Evaluate at 1536 with ``cascade_mask_rcnn_vitdet_eva_1536.py``::

    python tools/lazyconfig_train_net.py --num-gpus 8 \\
        --config-file projects/ViTDet-EVA/configs/COCO/cascade_mask_rcnn_vitdet_eva.py \\
        train.init_checkpoint=output/vitdet_eva_o365_1280/model_final.pth

The Objects365 model has 365 classes: its box / mask predictors do not fit 80 classes and are
reported as expected shape mismatches (they start from scratch), everything else loads.
"""
import copy

from omegaconf import OmegaConf

from configs.common.train import train as _train
from eva_core.config import LazyCall as L
from vitdet_eva.data import json_num_classes

from ..common.coco_loader_lsj import dataloader
from ..common.models.cascade_mask_rcnn_vitdet import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import step as lr_multiplier

image_size = 1280

model.backbone.net.img_size = image_size
model.backbone.square_pad = image_size
# the class count is the train json's (80 for COCO; a custom json brings its own)
model.roi_heads.num_classes = L(json_num_classes)(json_file="${dataloader.train.dataset.dicts.json_file}")

dataloader.train.dataset.mapper.image_size = image_size
dataloader.test.dataset.mapper.image_size = image_size
dataloader.train.total_batch_size = 64

optimizer.lr = 2.5e-5
optimizer.params.layer_decay = 0.9

lr_multiplier.steps = [40000]
lr_multiplier.warmup_iters = 500

train = OmegaConf.create(copy.deepcopy(_train))
train.output_dir = "./output/vitdet_eva_coco"
train.init_checkpoint = "output/vitdet_eva_o365_1280/model_final.pth"
train.max_iter = 45000
train.eval_period = 5000
train.checkpointer.period = 5000
train.amp.enabled = True
