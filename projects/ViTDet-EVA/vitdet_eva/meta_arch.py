"""detectron2's ``GeneralizedRCNN``: backbone -> RPN -> RoI heads, the whole ViTDet-EVA detector.

Input is detectron2's: a list with one dict per image, ``{"image": uint8 [3, H, W] (RGB for
ViTDet), "height", "width", "instances" (training)}``. Images are normalised with ``pixel_mean`` /
``pixel_std`` on the 0-255 scale and padded into one batch as the backbone asks (``square_pad``,
``ImageList.from_tensors``). In ``train()`` mode the forward returns the RPN and RoI-head losses (a
dict the engine sums, ``docs/DESIGN.md#contracts``); in ``eval()`` mode one
``{"instances": Instances(pred_boxes, scores, pred_classes, pred_masks)}`` per image, rescaled to the
image's ``height`` / ``width`` by :func:`~vitdet_eva.postprocessing.detector_postprocess`.

The state dict is detectron2's (``backbone.net.*``, ``backbone.simfp_*``,
``proposal_generator.rpn_head.*``, ``roi_heads.*``); ``pixel_mean`` / ``pixel_std`` are buffers that
are not saved, as in detectron2 (``docs/recipes/detection.md#detectron2-state-dict-names``).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from .backbone import Backbone
from .postprocessing import detector_postprocess
from .structures import ImageList, Instances

__all__ = ["GeneralizedRCNN"]

_INSTANCE_FIELDS = ("gt_boxes", "gt_classes", "gt_masks")


class GeneralizedRCNN(nn.Module):
    """Backbone, proposal generator and RoI heads (detectron2's keyword arguments).

    Args:
        backbone: a :class:`~vitdet_eva.backbone.Backbone` (ViTDet: ``SimpleFeaturePyramid``).
        proposal_generator: the :class:`~vitdet_eva.rpn.RPN`.
        roi_heads: the :class:`~vitdet_eva.cascade_rcnn.CascadeROIHeads`.
        pixel_mean, pixel_std: per-channel input normalisation on the 0-255 scale (ViTDet: ImageNet's
            ``[123.675, 116.28, 103.53]`` / ``[58.395, 57.12, 57.375]``, RGB order).
        input_format: channel order of ``"image"`` (``"RGB"`` or ``"BGR"``); the mean and std must be
            given in the same order (the model does not reorder channels, as in detectron2).
        vis_period: detectron2's training-time visualisation period; only 0 is supported (draw
            detections with ``projects/ViTDet-EVA/demo.py`` instead).

    Raises:
        ValueError: mean and std of different lengths, an unknown ``input_format`` or ``vis_period > 0``.
    """

    def __init__(self, *, backbone: Backbone, proposal_generator: nn.Module, roi_heads: nn.Module,
                 pixel_mean: Sequence[float], pixel_std: Sequence[float], input_format: str | None = "RGB",
                 vis_period: int = 0):
        super().__init__()
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(f"GeneralizedRCNN pixel_mean {list(pixel_mean)} and pixel_std {list(pixel_std)} "
                             "must have one value per channel each")
        if input_format not in (None, "RGB", "BGR"):
            raise ValueError(f"GeneralizedRCNN input_format={input_format!r}: expected 'RGB' or 'BGR'")
        if vis_period:
            raise ValueError(f"GeneralizedRCNN vis_period={vis_period}: training-time visualisation is not "
                             "implemented; keep 0 and draw detections with projects/ViTDet-EVA/demo.py")
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        self.input_format = input_format
        self.vis_period = int(vis_period)
        # not saved: detectron2 checkpoints carry no pixel statistics, the config does
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1),
                             persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ---- inputs -------------------------------------------------------------------------------------
    def preprocess_image(self, batched_inputs: Sequence[Mapping[str, Any]]) -> ImageList:
        """Normalise each ``"image"`` and pad them into one :class:`ImageList`.

        An input that carries ``"image_size"`` (the test mapper's unpadded size) is cropped to it first,
        so the model pads it as detectron2 does (zeros after normalisation) and the detections are
        rescaled from the real image area.
        """
        images = []
        for i, x in enumerate(batched_inputs):
            if not isinstance(x, Mapping) or "image" not in x:
                raise ValueError(f"GeneralizedRCNN input {i} must be a dict with 'image' (uint8 [C, H, W]); "
                                 f"got {type(x).__name__}{sorted(x) if isinstance(x, Mapping) else ''}")
            image = x["image"].to(self.device)
            if image.dim() != 3 or image.shape[0] != self.pixel_mean.shape[0]:
                raise ValueError(f"GeneralizedRCNN input {i}: image of shape {tuple(image.shape)}; expected "
                                 f"[{self.pixel_mean.shape[0]}, H, W]")
            if "image_size" in x:
                h, w = (int(s) for s in x["image_size"])
                image = image[:, :h, :w]
            images.append((image - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.backbone.size_divisibility,
                                      padding_constraints=self.backbone.padding_constraints)

    def _gt_instances(self, batched_inputs: Sequence[Mapping[str, Any]], images: ImageList
                      ) -> list[Instances]:
        out = []
        for i, (x, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            if "instances" not in x:
                raise ValueError(f"GeneralizedRCNN training needs 'instances' in every input; input {i} has "
                                 f"{sorted(x)}")
            inst = x["instances"]
            if isinstance(inst, Instances):
                out.append(inst.to(self.device))
                continue
            if not isinstance(inst, Mapping):
                raise ValueError(f"GeneralizedRCNN input {i}: 'instances' must be an Instances or a dict of "
                                 f"{_INSTANCE_FIELDS}; got {type(inst).__name__}")
            # the LSJ mapper gives a dict of tensors (picklable across loader workers)
            out.append(Instances(image_size, **{k: v.to(self.device) for k, v in inst.items()}))
        return out

    # ---- forward --------------------------------------------------------------------------------------
    def forward(self, batched_inputs: Sequence[Mapping[str, Any]]):
        """Training: the loss dict (RPN, per-stage cascade and mask losses); inference: :meth:`inference`."""
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = self._gt_instances(batched_inputs, images)
        features = self.backbone(images.tensor)
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        losses = {}
        losses.update(detector_losses)
        losses.update(proposal_losses)
        return losses

    def inference(self, batched_inputs: Sequence[Mapping[str, Any]],
                  detected_instances: Sequence[Instances] | None = None, do_postprocess: bool = True):
        """Detections per image.

        Args:
            batched_inputs: as for :meth:`forward`.
            detected_instances: known boxes (``pred_boxes``, ``pred_classes``) to predict masks for,
                instead of running the RPN and box heads.
            do_postprocess: rescale to each input's ``height`` / ``width`` (default: the input size).

        Returns:
            ``[{"instances": Instances}]`` with ``do_postprocess``, else the raw ``Instances`` list in
            network-input coordinates (masks still ``[N, 1, M, M]`` box-relative probabilities).
        """
        if self.training:
            raise RuntimeError("GeneralizedRCNN.inference needs eval mode (call model.eval() first)")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        if detected_instances is None:
            proposals, _ = self.proposal_generator(images, features, None)
            results, _ = self.roi_heads(images, features, proposals, None)
        else:
            results = self.roi_heads.forward_with_given_boxes(
                features, [x.to(self.device) for x in detected_instances])
        if not do_postprocess:
            return results
        return self._postprocess(results, batched_inputs, images.image_sizes)

    @staticmethod
    def _postprocess(instances: Sequence[Instances], batched_inputs: Sequence[Mapping[str, Any]],
                     image_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        processed = []
        for result, x, image_size in zip(instances, batched_inputs, image_sizes):
            height = x.get("height", image_size[0])
            width = x.get("width", image_size[1])
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed
