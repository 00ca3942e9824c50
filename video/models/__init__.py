"""Video models: :class:`EvaVideo` (joint space-time EVA) and its checkpoint layouts."""
from .eva_video import EvaVideo, PatchEmbed3D, create_video_model, list_video_models
from .video_layouts import fit_video_state_dict, load_video_checkpoint

__all__ = ["EvaVideo", "PatchEmbed3D", "create_video_model", "list_video_models", "fit_video_state_dict",
           "load_video_checkpoint"]
