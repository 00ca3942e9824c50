"""Video data: Kinetics lists and csv (:mod:`.datasets`), clip transforms (:mod:`.transforms`) the
Kinetics-722 merge (:mod:`.kinetics722`) and clips decoded once for toy runs (:mod:`.decoded`)."""
from .datasets import (CorruptVideoError, KineticsCsvDataset, KineticsListDataset, VideoClipDataset,
                       decode_frames, measure_decode_throughput, tsn_indices)
from .decoded import DecodedClips, OneFrameClips
from .transforms import VideoTestTransform, VideoTrainTransform, multiscale_crop_box, three_crop_boxes

__all__ = ["CorruptVideoError", "KineticsCsvDataset", "KineticsListDataset", "VideoClipDataset",
           "decode_frames", "measure_decode_throughput", "DecodedClips", "OneFrameClips", "tsn_indices",
           "VideoTestTransform", "VideoTrainTransform", "multiscale_crop_box", "three_crop_boxes"]
