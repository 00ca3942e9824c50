"""Video data: Kinetics lists and csv (:mod:`.datasets`), clip transforms (:mod:`.transforms`) and the
Kinetics-722 merge (:mod:`.kinetics722`)."""
from .datasets import (CorruptVideoError, KineticsCsvDataset, KineticsListDataset, VideoClipDataset,
                       decode_frames, measure_decode_throughput, tsn_indices)
from .transforms import VideoTestTransform, VideoTrainTransform, multiscale_crop_box, three_crop_boxes

__all__ = ["CorruptVideoError", "KineticsCsvDataset", "KineticsListDataset", "VideoClipDataset",
           "decode_frames", "measure_decode_throughput", "tsn_indices", "VideoTestTransform",
           "VideoTrainTransform", "multiscale_crop_box", "three_crop_boxes"]
