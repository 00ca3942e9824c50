"""ViTDet-EVA inference additions: soft-NMS, maskness rescoring, score-threshold override, top-k."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import batched_nms

from vitdet_eva.box_head import FastRCNNConvFCHead
from vitdet_eva.box_regression import Box2BoxTransform
from vitdet_eva.cascade_rcnn import CascadeROIHeads
from vitdet_eva.fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from vitdet_eva.layers import ShapeSpec
from vitdet_eva.mask_head import MaskRCNNConvUpsampleHead, maskness, maskness_rescore
from vitdet_eva.matcher import Matcher
from vitdet_eva.poolers import ROIPooler
from vitdet_eva.soft_nms import batched_soft_nms, soft_nms, soft_nms_per_box
from vitdet_eva.structures import Instances


def _random_detections(seed: int, n: int, num_classes: int, tie_every: int = 0):
    g = torch.Generator().manual_seed(seed)
    # clustered boxes so that many pairs overlap above 0.6
    centres = torch.rand(4, 2, generator=g) * 80
    c = centres[torch.randint(0, 4, (n,), generator=g)] + torch.randn(n, 2, generator=g) * 4
    wh = 10 + torch.rand(n, 2, generator=g) * 12
    boxes = torch.cat([c - wh / 2, c + wh / 2], dim=1)
    scores = torch.rand(n, generator=g)
    if tie_every:
        scores = (scores * tie_every).round() / tie_every  # a handful of distinct values: many ties
    idxs = torch.randint(0, num_classes, (n,), generator=g)
    return boxes, scores, idxs


@pytest.mark.parametrize("method", ["linear", "gaussian", "hard"])
@pytest.mark.parametrize("seed,tie_every", [(0, 0), (1, 4), (2, 0), (3, 2)])
def test_batched_soft_nms_equals_the_per_box_reference_loop(method, seed, tie_every):
    boxes, scores, idxs = _random_detections(seed, n=60, num_classes=3, tie_every=tie_every)
    duplicate = boxes[:5].clone()  # identical boxes with identical scores: IoU 1, exact ties
    boxes, scores, idxs = (torch.cat([boxes, duplicate]), torch.cat([scores, scores[:5]]),
                           torch.cat([idxs, idxs[:5]]))
    keep, new_scores = batched_soft_nms(boxes, scores, idxs, method, iou_threshold=0.6, sigma=0.5,
                                        min_score=1e-3)
    ref_keep, ref_scores = soft_nms_per_box(boxes, scores, idxs, method, 0.6, 0.5, 1e-3)
    assert keep.tolist() == ref_keep.tolist()
    torch.testing.assert_close(new_scores, ref_scores, rtol=0, atol=1e-6)
    if method == "linear":
        assert (new_scores < scores[keep]).any(), "some scores must have been decayed"


def test_soft_nms_of_empty_input_and_of_boxes_all_below_min_score_is_empty():
    for boxes, scores in [(torch.zeros(0, 4), torch.zeros(0)),
                          (torch.tensor([[0.0, 0, 10, 10], [1, 1, 9, 9]]), torch.tensor([1e-4, 5e-4]))]:
        keep, new_scores = soft_nms(boxes, scores, "linear", 0.6, 0.5, 1e-3)
        assert keep.shape == (0,) and keep.dtype == torch.int64 and new_scores.shape == (0,)


def test_linear_soft_nms_decays_by_one_minus_iou_only_above_the_threshold():
    boxes = torch.tensor([[0.0, 0, 10, 10],    # kept first
                          [0.0, 0, 10, 8],     # IoU 0.8 with it: score 0.8 -> 0.8 * 0.2
                          [0.0, 0, 10, 5]])    # IoU 0.5 <= 0.6: untouched (and IoU 0.625 with box 1 ...)
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep, new_scores = soft_nms(boxes, scores, "linear", iou_threshold=0.6)
    # box 2 is kept second (0.7 > 0.16); its IoU with box 1 is 50/80 = 0.625 > 0.6: 0.16 * 0.375
    expected = torch.tensor([0.9, 0.7, 0.8 * 0.2 * (1 - 0.625)])
    assert keep.tolist() == [0, 2, 1]
    torch.testing.assert_close(new_scores, expected)
    ref_keep, ref_scores = soft_nms_per_box(boxes, scores, torch.zeros(3, dtype=torch.int64), "linear", 0.6)
    assert ref_keep.tolist() == [0, 2, 1]
    torch.testing.assert_close(ref_scores, expected)


def test_hard_soft_nms_keeps_what_torchvision_batched_nms_keeps():
    boxes, scores, idxs = _random_detections(5, n=200, num_classes=4)
    keep, new_scores = batched_soft_nms(boxes, scores, idxs, "hard", iou_threshold=0.5, min_score=1e-6)
    ref = batched_nms(boxes, scores, idxs, 0.5)
    assert sorted(keep.tolist()) == sorted(ref.tolist())
    torch.testing.assert_close(new_scores, scores[keep])


def test_soft_nms_rejects_unknown_method_and_bad_shapes():
    with pytest.raises(ValueError, match="method='cubic'"):
        soft_nms(torch.zeros(1, 4), torch.ones(1), "cubic")
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        soft_nms(torch.zeros(3, 5), torch.ones(3))


def _one_image_detections():
    boxes, _, _ = _random_detections(7, n=40, num_classes=1)
    g = torch.Generator().manual_seed(7)
    probs = torch.softmax(torch.randn(40, 4, generator=g) * 2, dim=1)  # 3 classes + background
    return boxes, probs


def test_fast_rcnn_inference_default_is_nms_and_soft_nms_option_gives_the_decayed_scores():
    boxes, probs = _one_image_detections()
    (hard,), _ = fast_rcnn_inference([boxes], [probs], [(100, 100)], 0.05, 0.5, 100)
    (soft,), _ = fast_rcnn_inference([boxes], [probs], [(100, 100)], 0.05, 0.5, 100, use_soft_nms=True,
                                     method="linear", iou_threshold=0.6)
    # the default path is plain per-class NMS (unchanged)
    cand = probs[:, :-1] > 0.05
    r, c = cand.nonzero(as_tuple=True)
    ref = batched_nms(boxes[r], probs[r, c], c, 0.5)
    assert hard.scores.tolist() == probs[r, c][ref].tolist()
    # the soft path equals batched_soft_nms on the same candidates, scores decayed
    keep, new_scores = batched_soft_nms(boxes[r], probs[r, c], c, "linear", 0.6, 0.5, 1e-3)
    torch.testing.assert_close(soft.scores, new_scores)
    torch.testing.assert_close(soft.pred_boxes, boxes[r][keep])
    assert soft.pred_classes.tolist() == c[keep].tolist()
    assert len(soft) > len(hard)  # soft-NMS keeps overlapping boxes at lower scores


def test_override_score_thresh_replaces_the_predictor_threshold():
    boxes, probs = _one_image_detections()
    (strict,), _ = fast_rcnn_inference([boxes], [probs], [(100, 100)], 0.5, 1.0, -1)
    (loose,), _ = fast_rcnn_inference([boxes], [probs], [(100, 100)], 0.5, 1.0, -1, override_score_thresh=0.0)
    assert strict.scores.min() > 0.5
    assert len(loose) == 40 * 3  # NMS at IoU 1 keeps every (RoI, class) with a score > 0


def test_lvis_setting_keeps_1000_detections_per_image_above_0_001():
    g = torch.Generator().manual_seed(0)
    n, k = 400, 20
    xy = torch.rand(n, 2, generator=g) * 900
    boxes = torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 50], dim=1)
    probs = torch.softmax(torch.randn(n, k + 1, generator=g), dim=1)
    (det,), _ = fast_rcnn_inference([boxes], [probs], [(1000, 1000)], 0.001, 0.5, 1000)
    assert len(det) == 1000
    assert float(det.scores.min()) > 0.001
    assert bool((det.scores[:-1] >= det.scores[1:]).all())


def test_maskness_is_the_mean_probability_above_the_threshold_on_hand_made_masks():
    masks = torch.zeros(3, 1, 2, 2)
    masks[0, 0] = torch.tensor([[0.9, 0.7], [0.3, 0.1]])   # inside: 0.9, 0.7 -> 0.8
    masks[1, 0] = torch.tensor([[0.5, 0.4], [0.2, 0.0]])   # nothing strictly above 0.5 -> 0
    masks[2, 0] = torch.tensor([[1.0, 1.0], [0.6, 0.0]])   # (1 + 1 + 0.6) / 3
    torch.testing.assert_close(maskness(masks, 0.5), torch.tensor([0.8, 0.0, 2.6 / 3]))
    inst = Instances((8, 8), pred_boxes=torch.zeros(3, 4), scores=torch.tensor([0.5, 0.9, 0.6]),
                     pred_classes=torch.tensor([0, 1, 2]), pred_masks=masks)
    out = maskness_rescore(inst, 0.5)
    torch.testing.assert_close(out.scores, torch.tensor([0.6 * 2.6 / 3, 0.5 * 0.8, 0.0]))
    assert out.pred_classes.tolist() == [2, 0, 1]
    assert out.pred_masks.shape == masks.shape


def _tiny_cascade(**options) -> CascadeROIHeads:
    scales, feats = (1 / 4, 1 / 8), ["p2", "p3"]
    pooled = ShapeSpec(channels=4, height=7, width=7)
    return CascadeROIHeads(
        num_classes=2, box_in_features=feats, box_pooler=ROIPooler(7, scales),
        box_heads=[FastRCNNConvFCHead(pooled, conv_dims=[8], fc_dims=[16], conv_norm="LN") for _ in range(3)],
        box_predictors=[FastRCNNOutputLayers(ShapeSpec(channels=16), box2box_transform=Box2BoxTransform(w),
                                             num_classes=2, test_score_thresh=0.05,
                                             cls_agnostic_bbox_reg=True)
                        for w in [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]],
        proposal_matchers=[Matcher([t], [0, 1], allow_low_quality_matches=False) for t in (0.5, 0.6, 0.7)],
        mask_in_features=feats, mask_pooler=ROIPooler(14, scales),
        mask_head=MaskRCNNConvUpsampleHead(ShapeSpec(channels=4), num_classes=2, conv_dims=[8, 8],
                                           conv_norm="LN"),
        **options)


def test_cascade_roi_heads_take_evas_option_names_soft_nms_and_maskness():
    torch.manual_seed(0)
    base = _tiny_cascade().eval()
    with torch.no_grad():  # make the mask logits vary so maskness differs between detections
        base.mask_head.predictor.weight.normal_(std=1.0)
    g = torch.Generator().manual_seed(1)
    feats = {"p2": torch.randn(1, 4, 16, 16, generator=g), "p3": torch.randn(1, 4, 8, 8, generator=g)}
    xy = torch.rand(30, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + 10 + torch.rand(30, 2, generator=g) * 14], 1)
    proposals = Instances((64, 64), proposal_boxes=boxes, objectness_logits=torch.zeros(30))
    eva = _tiny_cascade(use_soft_nms=True, method="linear", iou_threshold=0.6, override_score_thresh=0.0,
                        maskness_thresh=0.5).eval()
    eva.load_state_dict(base.state_dict())
    with torch.no_grad():
        (plain,), _ = base(None, feats, [proposals])
        (mine,), _ = eva(None, feats, [proposals])
        # the same pipeline by hand: soft-NMS detections, then masks, then maskness
        boxes_only = _tiny_cascade(use_soft_nms=True, method="linear", iou_threshold=0.6,
                                   override_score_thresh=0.0).eval()
        boxes_only.load_state_dict(base.state_dict())
        (soft,), _ = boxes_only(None, feats, [proposals])
    assert len(soft) > len(plain)  # threshold 0 and soft decay keep more than 0.05 + NMS 0.5
    expected = maskness_rescore(soft, 0.5)
    torch.testing.assert_close(mine.scores, expected.scores)
    torch.testing.assert_close(mine.pred_boxes, expected.pred_boxes)
    assert not torch.allclose(mine.scores.sort().values, soft.scores.sort().values)


def test_maskness_needs_the_mask_branch():
    with pytest.raises(ValueError, match="maskness_thresh=0.5 needs the mask branch"):
        CascadeROIHeads(num_classes=1, box_in_features=["p2"], box_pooler=ROIPooler(7, (1 / 4,)),
                        box_heads=[torch.nn.Identity()], box_predictors=[torch.nn.Identity()],
                        proposal_matchers=[Matcher([0.5], [0, 1])], maskness_thresh=0.5)
