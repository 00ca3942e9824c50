"""ViTDet-EVA data: instance jsons as dataset dicts, the LSJ mappers, repeat-factor sampling and the
federated loss (``docs/recipes/detection.md#datasets``)."""
from .datasets import BoxMode, DetectionDataset, is_lvis_json, json_num_classes, load_detection_json
from .federated import federated_sigmoid_ce_loss, get_fed_loss_classes, get_fed_loss_cls_weights
from .mapper import LSJTrainMapper, MappedDataset, ResizeTestMapper, mask_boxes, trivial_batch_collator
from .samplers import RepeatFactorDataset, repeat_factor_indices, repeat_factors_from_category_frequency

__all__ = ["BoxMode", "DetectionDataset", "is_lvis_json", "json_num_classes", "load_detection_json",
           "federated_sigmoid_ce_loss",
           "get_fed_loss_classes", "get_fed_loss_cls_weights", "LSJTrainMapper", "MappedDataset",
           "ResizeTestMapper", "mask_boxes", "trivial_batch_collator", "RepeatFactorDataset",
           "repeat_factor_indices", "repeat_factors_from_category_frequency"]
