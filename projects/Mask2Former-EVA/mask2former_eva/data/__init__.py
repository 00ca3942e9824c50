"""Segmentation data: ADE20K / COCO-Stuff-164K / custom datasets, mmseg's training pipeline, batches."""
from .build import (build_sem_seg_test_loader, build_sem_seg_train_loader, collate_sem_seg_test,
                    collate_sem_seg_train)
from .classes import ADE20K_CLASSES, ADE20K_PALETTE, COCO_STUFF_CLASSES, palette_for
from .datasets import (LabelMapError, SemSegDataset, ade20k_dataset, coco_stuff164k_dataset,
                       custom_sem_seg_dataset, read_class_list)
from .transforms import SegTestTransform, SegTrainTransform, photo_metric_distortion, random_crop

__all__ = ["SemSegDataset", "ade20k_dataset", "coco_stuff164k_dataset", "custom_sem_seg_dataset",
           "read_class_list", "LabelMapError", "SegTrainTransform", "SegTestTransform",
           "photo_metric_distortion", "random_crop", "collate_sem_seg_train", "collate_sem_seg_test",
           "build_sem_seg_train_loader", "build_sem_seg_test_loader", "ADE20K_CLASSES", "ADE20K_PALETTE",
           "COCO_STUFF_CLASSES", "palette_for"]
