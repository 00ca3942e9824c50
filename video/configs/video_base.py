"""Shared pieces of the EVA video recipes (docs/recipes/video.md); not a recipe by itself.

``k722_stage1.py``, ``k{400,600,700}_stage2.py`` and ``toy_video.py`` import it and set the numbers of
their stage.

* model: :class:`video.classification.VideoClassifier` around ``video.create_video_model`` (EvaVideo:
  Conv3d tubelet-1 patch embedding, joint space-time attention, mean pooling + ``fc_norm`` + head).
  ``model.net.checkpoint_path`` is loaded by ``create_video_model`` through
  ``video.load_video_checkpoint``: an IMAGE checkpoint (EVA-01 MIM / IN-21K fine-tuned, ours) is
  inflated (kernel copied along time / tubelet, position table repeated per frame), a VIDEO checkpoint
  (the stage-1 result at 8 frames) is resampled to this stage's 16 frames. ``train.init_checkpoint`` is
  loaded by the engine through ``eva_core.load_checkpoint`` and is for video checkpoints of this
  stage's geometry (e.g. to evaluate a release file).
* data: Kinetics ``path label`` lists (``video.data.KineticsListDataset``) decoded with PyAV, TSN
  sampling; training: multi-scale crop (1, .875, .75, .66), flip, colour jitter p 0.8, grayscale p 0.2;
  test: 4 temporal clips x 3 spatial crops averaged (``video.MultiViewVideoClassifier``), top-1 / top-5
  by eva_core's ``ClassificationEvaluator`` inside ``inference_on_dataset``.

Effective batch size and fewer GPUs: one iteration = one optimizer step over
``dataloader.train.total_batch_size * train.grad_accum_steps`` clips (``total_batch_size`` summed over
all GPUs). The recipes set the paper's 256 as 64 x 4; on 8 GPUs x 2 clips use
``dataloader.train.total_batch_size=16 train.grad_accum_steps=16``; ``train.max_iter`` counts optimizer
steps and does not change. Mixup/CutMix need an even per-step batch. EVA-g at 16 frames needs
activation checkpointing: ``model.net.grad_checkpointing=True`` (on in the recipes).
"""
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy

from eva_core.config import LazyCall as L
from eva_core.data import build_test_loader, build_train_loader
from eva_core.evaluation import ClassificationEvaluator
from video.classification import VideoClassifier
from video.data import KineticsListDataset, VideoTestTransform, VideoTrainTransform
from video.models.eva_video import create_video_model

from ...configs.classification.ft_base import adamw, epochs_to_iters, train_settings, warmup_cosine

__all__ = ["adamw", "epochs_to_iters", "train_settings", "warmup_cosine", "video_classifier", "clip_mixup",
           "label_smoothing_ce", "kinetics_loaders", "TEST_CLIPS", "TEST_CROPS"]

TEST_CLIPS, TEST_CROPS = 4, 3  # paper: 4 temporal clips x 3 spatial crops


def video_classifier(model_name, num_classes, num_frames, checkpoint=None, drop_path=0.3, **net_kwargs):
    """LazyCall of the video fine-tuning model (loss and Mixup are set by each stage)."""
    return L(VideoClassifier)(
        net=L(create_video_model)(name=model_name, checkpoint_path=checkpoint, num_classes=num_classes,
                                  num_frames=num_frames, drop_path_rate=drop_path, **net_kwargs),
        criterion=None,
        mixup=None,
    )


def clip_mixup(num_classes, label_smoothing, mixup_alpha=0.8, cutmix_alpha=1.0):
    """timm Mixup with mixup 0.8 / CutMix 1.0 (one of the two per batch, as timm's default switch)."""
    return L(Mixup)(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, cutmix_minmax=None, prob=1.0,
                    switch_prob=0.5, mode="batch", label_smoothing=label_smoothing, num_classes=num_classes)


def label_smoothing_ce(smoothing):
    return L(LabelSmoothingCrossEntropy)(smoothing=smoothing)


def kinetics_loaders(train_list, test_list, root, num_frames, total_batch_size, size=224,
                     test_clips=TEST_CLIPS, test_crops=TEST_CROPS, test_batch_size=4, num_workers=8,
                     topk=(1, 5), hflip=0.5,
                     resize_short=None):
    """Train / multi-view test loaders of Kinetics ``path label`` lists and the top-k evaluator.

    The test dataset yields ``[test_clips * test_crops, T, 3, S, S]`` per video; ``VideoClassifier``
    in eval mode averages the views' softmax, so the engine's evaluation is multi-view testing.
    """
    train_tf = L(VideoTrainTransform)(size=size, hflip=hflip, resize_short=resize_short)
    test_tf = L(VideoTestTransform)(size=size, num_crops=test_crops,
                                    resize_short=resize_short if test_crops == 1 else None)
    return dict(
        train=L(build_train_loader)(
            dataset=L(KineticsListDataset)(list_file=train_list, root=root, num_frames=num_frames,
                                           transform=train_tf, train=True),
            total_batch_size=total_batch_size, num_workers=num_workers, seed=0),
        test=L(build_test_loader)(
            dataset=L(KineticsListDataset)(list_file=test_list, root=root, num_frames=num_frames,
                                           transform=test_tf, train=False, num_clips=test_clips),
            batch_size=test_batch_size, num_workers=num_workers),
        evaluator=L(ClassificationEvaluator)(topk=topk),
    )
