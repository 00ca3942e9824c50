"""EVA for action recognition: the video encoder built on ``eva_core`` and the Kinetics-722 tools.

``import video`` registers the video models (``create_video_model``) and the video checkpoint
layouts and the memory planner's example batch with ``eva_core`` (``docs/recipes/video.md#video-encoder``).
"""
from .models.eva_video import EvaVideo, PatchEmbed3D, create_video_model, list_video_models
from .models.video_layouts import fit_video_state_dict, load_video_checkpoint
from .evaluation import MultiViewVideoClassifier, average_view_scores, evaluate_multi_view
from .classification import ClipMixup, VideoClassifier
from . import memory  # noqa: F401  (registers the memory planner's video batch)

__all__ = ["EvaVideo", "PatchEmbed3D", "create_video_model", "list_video_models", "fit_video_state_dict",
           "load_video_checkpoint", "MultiViewVideoClassifier", "average_view_scores", "evaluate_multi_view",
           "ClipMixup", "VideoClassifier"]
