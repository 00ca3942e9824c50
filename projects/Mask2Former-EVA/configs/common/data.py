"""Train / test loaders and the evaluator of a segmentation set (mmseg's EVA pipeline).

Training: random resize (ratio 0.5-2.0 of ``scale``), crop with ``cat_max_ratio`` 0.75, flip 0.5,
photometric distortion, normalise, pad to the crop (docs/recipes/segmentation.md#data). Test: the
image keep-ratio resized to ``scale``, one image per batch, scored at its original size.
"""
from eva_core.config import LazyCall as L
from eva_core.evaluation import SemSegEvaluator
from mask2former_eva.data import (SegTestTransform, SegTrainTransform, build_sem_seg_test_loader,
                                  build_sem_seg_train_loader)


def sem_seg_loaders(train_dataset, test_dataset, num_classes, class_names, *, crop_size=896,
                    scale=(3584, 896), test_scale=(3584, 896), total_batch_size=16, num_workers=4,
                    ratio_range=(0.5, 2.0), cat_max_ratio=0.75, flip_prob=0.5, photometric=True):
    """``dict(train=, test=, evaluator=)``; the datasets are LazyCall nodes without a transform."""
    train_dataset.transform = L(SegTrainTransform)(
        crop_size=[crop_size, crop_size], scale=list(scale), ratio_range=list(ratio_range),
        cat_max_ratio=cat_max_ratio, flip_prob=flip_prob, photometric=photometric)
    test_dataset.transform = L(SegTestTransform)(scale=list(test_scale) if test_scale is not None else None)
    return dict(
        train=L(build_sem_seg_train_loader)(dataset=train_dataset, total_batch_size=total_batch_size,
                                            num_workers=num_workers, seed=0),
        test=L(build_sem_seg_test_loader)(dataset=test_dataset, batch_size=1, num_workers=num_workers),
        evaluator=L(SemSegEvaluator)(num_classes=num_classes, ignore_label=255, class_names=list(class_names),
                                     output_dir="${train.output_dir}"),
    )
