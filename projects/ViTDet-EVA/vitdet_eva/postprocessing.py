"""detectron2's ``detector_postprocess``: detections from the network's input size to the image's size.

The model sees each image resized (the test mapper bounds the longer side by the target size); the
evaluator and the user want boxes and masks in the original image's pixels (its ``height`` /
``width``). Boxes are scaled by ``(width / input_w, height / input_h)``, clipped to the output
image, and boxes left empty are dropped; ``M x M`` box-relative mask probabilities are pasted into
the output image and thresholded (``docs/recipes/detection.md#heads``).
"""
from __future__ import annotations

from .mask_head import paste_masks_in_image
from .structures import Instances

__all__ = ["detector_postprocess"]


def detector_postprocess(results: Instances, output_height: int, output_width: int,
                         mask_threshold: float = 0.5) -> Instances:
    """Rescale one image's detections to ``(output_height, output_width)`` (detectron2's rule).

    Args:
        results: detections with ``pred_boxes`` (or, for RPN output, ``proposal_boxes``) in the
            coordinates of ``results.image_size`` (the network's unpadded input), and optionally
            ``pred_masks`` ``[N, 1, M, M]`` probabilities relative to each box.
        output_height, output_width: the size to map to (the dataset dict's ``height`` / ``width``).
        mask_threshold: pasted masks are ``prob >= mask_threshold`` (bool); a negative value keeps
            uint8 probabilities ``prob * 255``.

    Returns:
        New ``Instances`` of size ``(output_height, output_width)``: boxes scaled and clipped, boxes
        with a side of 0 after clipping removed (with their other fields), ``pred_masks`` as
        ``[N, output_height, output_width]`` full-image masks.

    Raises:
        ValueError: ``results`` has neither ``pred_boxes`` nor ``proposal_boxes``.
    """
    output_height, output_width = int(output_height), int(output_width)
    in_h, in_w = results.image_size
    scale_x, scale_y = output_width / in_w, output_height / in_h
    fields = results.get_fields()
    box_key = "pred_boxes" if "pred_boxes" in fields else "proposal_boxes"
    if box_key not in fields:
        raise ValueError(f"detector_postprocess needs pred_boxes or proposal_boxes; the results have "
                         f"{sorted(fields)}")
    boxes = fields[box_key].clone()
    boxes[:, 0::2] = (boxes[:, 0::2] * scale_x).clamp(min=0, max=output_width)
    boxes[:, 1::2] = (boxes[:, 1::2] * scale_y).clamp(min=0, max=output_height)
    fields[box_key] = boxes
    out = Instances((output_height, output_width), **fields)
    # detectron2's Boxes.nonempty(): both sides strictly positive
    keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
    if not bool(keep.all()):
        out = out[keep]
    if out.has("pred_masks"):
        masks = out.pred_masks
        if masks.dim() == 4 and masks.shape[1] == 1:
            out.pred_masks = paste_masks_in_image(masks, out.get(box_key), (output_height, output_width),
                                                  threshold=mask_threshold)
        elif masks.dim() != 3 or tuple(masks.shape[-2:]) != (output_height, output_width):
            raise ValueError(f"pred_masks of shape {tuple(masks.shape)}: expected [N, 1, M, M] box-relative "
                             f"probabilities or [N, {output_height}, {output_width}] image masks")
    return out

