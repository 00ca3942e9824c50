"""COCO-format data with large-scale jitter (detectron2's ViTDet ``common/coco_loader_lsj.py``).

Any instances json in COCO format (COCO, Objects365, a custom set) is read by
``vitdet_eva.data.load_detection_json``; the class names come from its ``categories``, and recipes set
``model.roi_heads.num_classes`` from the train json (``json_num_classes``), so a custom dataset is one
override of the paths, e.g.::

    dataloader.train.dataset.dicts.json_file=my/train.json \\
    dataloader.train.dataset.dicts.image_root=my/images \\
    dataloader.test.dataset.dicts.json_file=my/val.json dataloader.test.dataset.dicts.image_root=my/images

Training: random flip, resize-scale 0.1-2.0 of ``image_size``, fixed-size crop, pad to square, boxes
recomputed from the cropped masks (ViTDet's ``recompute_boxes=True``); images without a non-crowd
annotation are dropped (detectron2's ``filter_empty``). Test: longest side resized to ``image_size``,
no padding (the model pads to ``model.backbone.square_pad``). Numbers: docs/recipes/detection.md.
"""
from omegaconf import OmegaConf

from eva_core.config import LazyCall as L
from eva_core.data import build_test_loader, build_train_loader
from eva_core.evaluation import COCOEvaluator
from vitdet_eva.data import (LSJTrainMapper, MappedDataset, ResizeTestMapper, load_detection_json,
                             trivial_batch_collator)

image_size = 1024

dataloader = OmegaConf.create()
dataloader.train = L(build_train_loader)(
    dataset=L(MappedDataset)(
        dicts=L(load_detection_json)(
            json_file="datasets/coco/annotations/instances_train2017.json",
            image_root="datasets/coco/train2017",
            filter_empty=True,
        ),
        mapper=L(LSJTrainMapper)(image_size=image_size, min_scale=0.1, max_scale=2.0, flip_prob=0.5,
                                 use_masks=True, recompute_boxes=True),
    ),
    total_batch_size=64,
    num_workers=4,
    seed=0,
    collate_fn=trivial_batch_collator,
)
dataloader.test = L(build_test_loader)(
    dataset=L(MappedDataset)(
        dicts=L(load_detection_json)(
            json_file="datasets/coco/annotations/instances_val2017.json",
            image_root="datasets/coco/val2017",
            filter_empty=False,
        ),
        mapper=L(ResizeTestMapper)(image_size=image_size, pad=False),
    ),
    batch_size=1,
    num_workers=4,
    collate_fn=trivial_batch_collator,
)
# rank 0 writes coco_instances_results.json into the run's output folder (as detectron2's evaluator
# does when given an output_dir)
dataloader.evaluator = L(COCOEvaluator)(
    dataset_json="${..test.dataset.dicts.json_file}",
    output_dir="${train.output_dir}",
    max_dets_per_image=100,
)
