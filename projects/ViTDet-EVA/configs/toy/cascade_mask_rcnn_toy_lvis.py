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
from eva_core.config import LazyCall as L
from vitdet_eva.data import get_fed_loss_cls_weights, json_num_classes

from ..common.lvis_loader_lsj import dataloader
from .cascade_mask_rcnn_toy_coco import image_size, lr_multiplier, model, optimizer, train

data_root = "datasets/toy_world/lvis"
_train_json = "${dataloader.train.dataset.dataset.dicts.json_file}"

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

model.roi_heads.num_classes = L(json_num_classes)(json_file=_train_json)
for _predictor in model.roi_heads.box_predictors:
    _predictor.test_score_thresh = 0.001
    _predictor.test_topk_per_image = 1000
    _predictor.use_sigmoid_ce = True
    _predictor.use_fed_loss = True
    _predictor.fed_loss_num_classes = 50
    _predictor.get_fed_loss_cls_weights = L(get_fed_loss_cls_weights)(
        dataset=_train_json, freq_weight_power=0.5, _partial_=True)

train.output_dir = "./output/toy_vitdet_lvis"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
