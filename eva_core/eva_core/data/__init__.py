"""Shared data layer: datasets returning dicts, resumable loaders, transforms, toy world."""
from eva_core.data.annotations import (AnnotationFormatError, load_coco_json, load_lvis_api,
                                       load_lvis_json)
from eva_core.data.datasets import (CorruptImageError, FileListDataset, ImageFolderDataset,
                                    ImageSampleDataset, ListFileError, WebDatasetImages,
                                    read_file_list)
from eva_core.data.datasets import UnreadableSampleError, exclude_unreadable
from eva_core.data.loader import (TestLoader, TrainLoader, batch_num_skipped, build_test_loader,
                                  build_train_loader)
from eva_core.data.samplers import InferenceSampler, ResumableTrainSampler, sample_seed
from eva_core.data.transforms import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD,
                                      build_transform)

__all__ = ["AnnotationFormatError", "load_coco_json", "load_lvis_api", "load_lvis_json",
           "CorruptImageError", "FileListDataset", "ImageFolderDataset", "ImageSampleDataset",
           "ListFileError", "WebDatasetImages", "read_file_list", "TrainLoader",
           "build_test_loader", "build_train_loader", "InferenceSampler", "ResumableTrainSampler",
           "sample_seed", "CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD",
           "build_transform", "TestLoader", "batch_num_skipped", "UnreadableSampleError",
           "exclude_unreadable"]
