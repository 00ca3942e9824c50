"""Toy ViTDet-EVA on the toy world's LVIS v1 set (long-tailed colour + shape classes).

The toy COCO detector (``cascade_mask_rcnn_toy_coco.py``) with the LVIS recipe's additions
(``LVIS/cascade_mask_rcnn_vitdet_eva.py``): repeat-factor sampling (t = 0.001), sigmoid CE + federated
loss (weights image_count ** 0.5 from the train json; with fewer than 50 drawable classes all are
taken), score threshold 0.001 and 1000 detections per image, and the LVIS evaluator (AP, APr, APc,
APf)::

    python tools/make_toy_world.py --out datasets/toy_world --formats coco lvis
    python tools/lazyconfig_train_net.py \\
        --config-file projects/ViTDet-EVA/configs/toy/cascade_mask_rcnn_toy_lvis.py
"""
from ..common.lvis_loader_lsj import dataloader, lvis_roi_heads
from .cascade_mask_rcnn_toy_coco import image_size, lr_multiplier, model, optimizer, train

data_root = "datasets/toy_world/lvis"

_train_set = dataloader.train.dataset.dataset
_train_set.dicts.json_file = f"{data_root}/lvis_v1_train.json"
_train_set.dicts.image_root = f"{data_root}/train2017"
_train_set.mapper.image_size = image_size
_train_set.mapper.min_scale = 0.5
_train_set.mapper.max_scale = 1.5
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 0
dataloader.test.dataset.dicts.json_file = f"{data_root}/lvis_v1_val.json"
dataloader.test.dataset.dicts.image_root = f"{data_root}/val2017"
dataloader.test.dataset.mapper.image_size = image_size
dataloader.test.batch_size = 8
dataloader.test.num_workers = 0

lvis_roi_heads(model)

train.output_dir = "./output/toy_vitdet_lvis"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
