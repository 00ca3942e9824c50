"""LVIS v1 data with large-scale jitter and repeat-factor sampling (detectron2 ViTDet's LVIS loader).

The COCO LSJ loader (``coco_loader_lsj.py``) with the LVIS v1 jsons, the training set wrapped in a
``RepeatFactorDataset`` (t = 0.001: an image is repeated ``max over its classes of
max(1, sqrt(t / f(c)))`` times) and the LVIS evaluator (AP, APr, APc, APf; box and mask). LVIS names
images by their COCO url: ``image_root`` is the COCO folder (``<image_root>/{train2017,val2017}/<file>``,
as detectron2 reads them; LVIS v1 val mixes images of both COCO splits).
"""
from eva_core.config import LazyCall as L
from eva_core.evaluation import LVISEvaluator
from vitdet_eva.data import (RepeatFactorDataset, get_fed_loss_cls_weights, json_num_classes,
                             repeat_factors_from_category_frequency)

from .coco_loader_lsj import dataloader

_train_set = dataloader.train.dataset
_train_set.dicts.json_file = "datasets/lvis/lvis_v1_train.json"
_train_set.dicts.image_root = "datasets/coco"
dataloader.train.dataset = L(RepeatFactorDataset)(
    dataset=_train_set,
    repeat_factors=L(repeat_factors_from_category_frequency)(dataset_dicts="${..dataset.dicts}",
                                                             repeat_thresh=0.001),
    seed=0,
)
dataloader.test.dataset.dicts.json_file = "datasets/lvis/lvis_v1_val.json"
dataloader.test.dataset.dicts.image_root = "datasets/coco"
# the lvis API keeps the 300 best detections per image (standard LVIS v1 scoring); fixed_ap=True
# switches to the per-class cap of the LVIS challenge
dataloader.evaluator = L(LVISEvaluator)(
    dataset_json="${..test.dataset.dicts.json_file}",
    output_dir="${train.output_dir}",
    max_dets_per_image=300,
)


#: the train json, as a reference the class count and the federated-loss weights read at build time
TRAIN_JSON = "${dataloader.train.dataset.dataset.dicts.json_file}"


def lvis_roi_heads(model) -> None:
    """The LVIS recipe's RoI heads on ``model``: class count from the train json, sigmoid CE with the
    federated loss (50 classes, weights image_count ** 0.5), score threshold 0.001, 1000 detections."""
    model.roi_heads.num_classes = L(json_num_classes)(json_file=TRAIN_JSON)
    for predictor in model.roi_heads.box_predictors:
        predictor.test_score_thresh = 0.001
        predictor.test_topk_per_image = 1000
        predictor.use_sigmoid_ce = True
        predictor.use_fed_loss = True
        predictor.fed_loss_num_classes = 50
        # called once by the predictor: image_count ** 0.5 per class of the train json
        predictor.get_fed_loss_cls_weights = L(get_fed_loss_cls_weights)(
            dataset=TRAIN_JSON, freq_weight_power=0.5, _partial_=True)
