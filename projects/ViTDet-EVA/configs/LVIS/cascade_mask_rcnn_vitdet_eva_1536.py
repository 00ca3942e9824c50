"""Evaluate the LVIS model at 1536 (position and relative-position tables resized; see the COCO
``_1536`` config)::

    python tools/lazyconfig_train_net.py --num-gpus 8 \\
        --config-file projects/ViTDet-EVA/configs/LVIS/cascade_mask_rcnn_vitdet_eva_1536.py \\
        --eval-only train.init_checkpoint=eva_lvis.pth
"""
from .cascade_mask_rcnn_vitdet_eva import dataloader, lr_multiplier, model, optimizer, train

image_size = 1536

model.backbone.net.img_size = image_size
model.backbone.square_pad = image_size
dataloader.test.dataset.mapper.image_size = image_size
train.output_dir = "./output/vitdet_eva_lvis_1536"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
