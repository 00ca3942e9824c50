"""Evaluate the COCO model at 1536 (docs/recipes/detection.md#evaluation).

Images are resized to 1536 on the longer side and padded to 1536 x 1536; the 1280-trained position
table (stored at 224 / 16 with a CLS slot) is resized at run time and the global blocks' relative
position tables (sized for 1280 / 16 = 80 tokens) are resampled to 96 tokens when the checkpoint
loads (the load report lists them)::

    python tools/lazyconfig_train_net.py --num-gpus 8 \\
        --config-file projects/ViTDet-EVA/configs/COCO/cascade_mask_rcnn_vitdet_eva_1536.py \\
        --eval-only train.init_checkpoint=eva_coco_det.pth
"""
from .cascade_mask_rcnn_vitdet_eva import dataloader, lr_multiplier, model, optimizer, train

image_size = 1536

model.backbone.net.img_size = image_size
model.backbone.square_pad = image_size
dataloader.test.dataset.mapper.image_size = image_size
train.output_dir = "./output/vitdet_eva_coco_1536"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
