"""ViTDet-EVA Cascade Mask R-CNN RoI heads: detectron2's pooler, box/mask heads, losses and cascade."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import MultiScaleRoIAlign, box_iou, generalized_box_iou_loss, roi_align

from vitdet_eva.box_head import FastRCNNConvFCHead
from vitdet_eva.box_regression import Box2BoxTransform
from vitdet_eva.cascade_rcnn import CascadeROIHeads
from vitdet_eva.fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from vitdet_eva.layers import ShapeSpec
from vitdet_eva.mask_head import (MaskRCNNConvUpsampleHead, mask_rcnn_inference, mask_rcnn_loss,
                                  paste_masks_in_image)
from vitdet_eva.matcher import Matcher
from vitdet_eva.poolers import ROIPooler, assign_boxes_to_levels
from vitdet_eva.structures import Instances

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
FEATS = ["p2", "p3", "p4", "p5"]
STEPS = 120
STAGE_WEIGHTS = [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]


def _square(side: float, x0: float = 0.0) -> list[float]:
    return [x0, 0.0, x0 + side, side]


def test_roi_pooler_assigns_levels_by_sqrt_area_canonical_224_at_level_4():
    boxes = torch.tensor([_square(224), _square(112), _square(111), _square(448), _square(447),
                          _square(16), _square(2000), [0, 0, 448, 112]])
    # floor(4 + log2(side / 224)) clamped to p2..p5, minus 2
    expected = torch.tensor([2, 1, 0, 3, 2, 0, 3, 2])
    assert torch.equal(assign_boxes_to_levels([boxes[:3], boxes[3:]], 2, 5), expected)


def test_roi_pooler_equals_aligned_roi_align_on_each_boxs_level():
    torch.manual_seed(0)
    feats = [torch.randn(2, 3, 256 // s, 256 // s) for s in (4, 8, 16, 32)]
    boxes = [torch.tensor([[3.0, 5.0, 40.0, 30.0], [10.0, 10.0, 250.0, 200.0]]),
             torch.tensor([[0.5, 1.5, 130.0, 140.0], [20.0, 30.0, 28.0, 39.0], [0.0, 0.0, 256.0, 256.0]])]
    pooler = ROIPooler(7, SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
    out = pooler(feats, boxes)
    assert out.shape == (5, 3, 7, 7)
    rows = 0
    for img, b in enumerate(boxes):
        for box in b:
            side = math.sqrt(float((box[2] - box[0]) * (box[3] - box[1])))
            level = min(max(math.floor(4 + math.log2(side / 224 + 1e-8)), 2), 5) - 2
            roi = torch.cat([torch.tensor([float(img)]), box])[None]
            ref = roi_align(feats[level], roi, (7, 7), SCALES[level], 0, aligned=True)
            torch.testing.assert_close(out[rows:rows + 1], ref)
            rows += 1


def test_roi_pooler_rejects_scales_that_are_not_powers_of_two():
    with pytest.raises(ValueError, match="power of 2"):
        ROIPooler(7, (1 / 4, 1 / 6))


def _cascade(num_classes: int, conv_dims=(256,) * 4, fc_dim=1024, mask_dims=(256,) * 5, channels=256,
             batch_size_per_image=512) -> CascadeROIHeads:
    pooled = ShapeSpec(channels=channels, height=7, width=7)
    box_heads = [FastRCNNConvFCHead(pooled, conv_dims=list(conv_dims), fc_dims=[fc_dim], conv_norm="LN")
                 for _ in range(3)]
    predictors = [FastRCNNOutputLayers(ShapeSpec(channels=fc_dim), box2box_transform=Box2BoxTransform(w),
                                       num_classes=num_classes, test_score_thresh=0.05,
                                       cls_agnostic_bbox_reg=True) for w in STAGE_WEIGHTS]
    return CascadeROIHeads(
        num_classes=num_classes, box_in_features=FEATS, box_pooler=ROIPooler(7, SCALES),
        box_heads=box_heads, box_predictors=predictors,
        proposal_matchers=[Matcher([t], [0, 1], allow_low_quality_matches=False) for t in (0.5, 0.6, 0.7)],
        batch_size_per_image=batch_size_per_image, positive_fraction=0.25,
        mask_in_features=FEATS, mask_pooler=ROIPooler(14, SCALES),
        mask_head=MaskRCNNConvUpsampleHead(ShapeSpec(channels=channels, width=14, height=14),
                                           num_classes=num_classes, conv_dims=list(mask_dims),
                                           conv_norm="LN"))


def _detectron2_vitdet_roi_heads_keys(num_classes: int) -> dict[str, tuple[int, ...]]:
    """detectron2's ViTDet cascade (4conv1fc LN box heads, 4conv + deconv LN mask head) key list.

    70 entries; with EVA-g's 603 encoder, 32 pyramid and 8 RPN entries that is the 713 of the released
    detector (docs/recipes/detection.md#facts-read-off-the-release-model).
    """
    keys = {}
    for s in range(3):
        for c in range(1, 5):
            keys[f"roi_heads.box_head.{s}.conv{c}.weight"] = (256, 256, 3, 3)
            keys[f"roi_heads.box_head.{s}.conv{c}.norm.weight"] = (256,)
            keys[f"roi_heads.box_head.{s}.conv{c}.norm.bias"] = (256,)
        keys[f"roi_heads.box_head.{s}.fc1.weight"] = (1024, 256 * 7 * 7)
        keys[f"roi_heads.box_head.{s}.fc1.bias"] = (1024,)
        keys[f"roi_heads.box_predictor.{s}.cls_score.weight"] = (num_classes + 1, 1024)
        keys[f"roi_heads.box_predictor.{s}.cls_score.bias"] = (num_classes + 1,)
        keys[f"roi_heads.box_predictor.{s}.bbox_pred.weight"] = (4, 1024)
        keys[f"roi_heads.box_predictor.{s}.bbox_pred.bias"] = (4,)
    for c in range(1, 5):
        keys[f"roi_heads.mask_head.mask_fcn{c}.weight"] = (256, 256, 3, 3)
        keys[f"roi_heads.mask_head.mask_fcn{c}.norm.weight"] = (256,)
        keys[f"roi_heads.mask_head.mask_fcn{c}.norm.bias"] = (256,)
    keys["roi_heads.mask_head.deconv.weight"] = (256, 256, 2, 2)
    keys["roi_heads.mask_head.deconv.bias"] = (256,)
    keys["roi_heads.mask_head.predictor.weight"] = (num_classes, 256, 1, 1)
    keys["roi_heads.mask_head.predictor.bias"] = (num_classes,)
    return keys


def test_cascade_state_dict_keys_equal_detectron2_vitdet_names_and_shapes():
    heads = _cascade(num_classes=80)
    got = {f"roi_heads.{k}": tuple(v.shape) for k, v in heads.state_dict().items()}
    assert len(got) == 70
    assert got == _detectron2_vitdet_roi_heads_keys(80)


def test_box_losses_are_normalised_by_all_sampled_rois_closed_form():
    torch.manual_seed(0)
    k = 3
    predictor = FastRCNNOutputLayers(8, box2box_transform=Box2BoxTransform((10, 10, 5, 5)), num_classes=k,
                                     cls_agnostic_bbox_reg=True)
    for p in predictor.parameters():
        torch.nn.init.zeros_(p)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 15.0], [0.0, 0.0, 4.0, 4.0],
                          [1.0, 1.0, 2.0, 2.0]])
    gt = torch.tensor([[1.0, 2.0, 11.0, 14.0], [5.0, 5.0, 25.0, 15.0], [0.0, 0.0, 4.0, 4.0],
                       [1.0, 1.0, 2.0, 2.0]])
    # RoI 0 foreground (class 1), RoI 1 foreground with a perfect box, RoIs 2-3 background
    props = Instances((32, 32), proposal_boxes=boxes, gt_boxes=gt, gt_classes=torch.tensor([1, 2, k, k]))
    losses = predictor.losses(predictor(torch.randn(4, 8)), [props])
    # deltas of RoI 0: dx = 10 * (6 - 5) / 10, dy = 10 * (8 - 5) / 10, dw = 5 log(1), dh = 5 log(12 / 10)
    expected_box = (1.0 + 3.0 + 0.0 + 5 * math.log(1.2)) / 4
    torch.testing.assert_close(losses["loss_box_reg"], torch.tensor(expected_box))
    # all-zero logits: uniform softmax over K + 1 classes
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(math.log(k + 1)))


def _toy_world(seed: int):
    """Two gt boxes with class-coded feature maps at strides 4-32 (indicator + coordinate channels)."""
    size = 128
    gt_boxes = torch.tensor([[12.0, 10.0, 60.0, 54.0], [70.0, 62.0, 122.0, 120.0]])
    gt_classes = torch.tensor([0, 1])
    masks = torch.zeros(2, size, size, dtype=torch.bool)
    masks[0, 10:54, 12:60] = True
    masks[1, 62:120, 70:122] = True
    feats = {}
    for name, stride in zip(FEATS, (4, 8, 16, 32)):
        n = size // stride
        c = (torch.arange(n) + 0.5) * stride
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        chans = [((xx >= b[0]) & (xx < b[2]) & (yy >= b[1]) & (yy < b[3])).float() for b in gt_boxes]
        feats[name] = torch.stack(chans + [xx / size, yy / size])[None]
    g = torch.Generator().manual_seed(seed)
    jitter = [b + torch.randn(24, 4, generator=g) * 0.12 * (b[2:] - b[:2]).repeat(2) for b in gt_boxes]
    xy = torch.rand(16, 2, generator=g) * 96
    wh = 8 + torch.rand(16, 2, generator=g) * 24
    boxes = torch.cat(jitter + [torch.cat([xy, xy + wh], dim=1)]).clamp(0, size)
    proposals = Instances((size, size), proposal_boxes=boxes, objectness_logits=torch.zeros(len(boxes)))
    targets = Instances((size, size), gt_boxes=gt_boxes, gt_classes=gt_classes, gt_masks=masks)
    return feats, proposals, targets


def _tiny_cascade() -> CascadeROIHeads:
    return _cascade(num_classes=2, conv_dims=(16, 16), fc_dim=64, mask_dims=(16, 16), channels=4,
                    batch_size_per_image=64)


def _held_out_losses(heads: CascadeROIHeads) -> dict[str, float]:
    """Training losses on one fixed batch and RoI draw (stage 0's RoIs do not depend on the model)."""
    feats, proposals, targets = _toy_world(seed=999)
    torch.manual_seed(123)
    with torch.no_grad():
        _, losses = heads(None, feats, [proposals], [targets])
    return {k: float(v) for k, v in losses.items()}


def test_cascade_learns_two_boxes_with_right_classes_and_masks_on_toy_features():
    torch.manual_seed(0)
    heads = _tiny_cascade()
    opt = torch.optim.Adam(heads.parameters(), lr=3e-3)
    before = _held_out_losses(heads)
    stage_losses = {f"{n}_stage{s}" for n in ("loss_cls", "loss_box_reg") for s in range(3)}
    assert set(before) == stage_losses | {"loss_mask"}
    for step in range(STEPS):
        feats, proposals, targets = _toy_world(seed=step)
        _, losses = heads(None, feats, [proposals], [targets])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    after = _held_out_losses(heads)
    for name in ("loss_cls_stage0", "loss_cls_stage1", "loss_cls_stage2", "loss_box_reg_stage0", "loss_mask"):
        assert after[name] < 0.6 * before[name], (name, before[name], after[name])

    heads.eval()
    feats, proposals, targets = _toy_world(seed=1000)
    with torch.no_grad():
        (inst,), _ = heads(None, feats, [proposals])
    assert inst.pred_masks.shape == (len(inst), 1, 28, 28)
    for c in (0, 1):
        mine = inst[inst.pred_classes == c]
        assert len(mine) > 0, f"no detection of class {c}"
        best = mine.pred_boxes[mine.scores.argmax()]
        assert float(box_iou(best[None], targets.gt_boxes[c][None])) > 0.5
        # masks cover the object: the box is the object, so most of the predicted mask is on
        assert float((mine.pred_masks[mine.scores.argmax()] > 0.5).float().mean()) > 0.5


def test_cascade_inference_scores_are_the_mean_of_per_stage_softmax():
    torch.manual_seed(0)
    heads = _tiny_cascade().eval()
    for p in heads.box_predictor:
        p.test_score_thresh, p.test_nms_thresh, p.test_topk_per_image = -1.0, 1.0, -1
    logits = []
    hooks = [p.register_forward_hook(lambda m, i, o: logits.append(o[0])) for p in heads.box_predictor]
    feats, proposals, _ = _toy_world(seed=0)
    with torch.no_grad():
        (inst,), _ = heads(None, feats, [proposals])
    for h in hooks:
        h.remove()
    assert len(logits) == 3
    mean = sum(F.softmax(x, dim=-1) for x in logits) / 3
    # threshold -1, NMS at IoU 1 and no top-k keep every (RoI, class) pair once
    expected = mean[:, :-1].flatten().sort(descending=True).values
    torch.testing.assert_close(inst.scores.sort(descending=True).values, expected)
    assert not torch.allclose(F.softmax(logits[0], -1), F.softmax(logits[2], -1))


def test_mask_inference_keeps_the_predicted_class_mask():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 28, 28)
    a = Instances((64, 64), pred_classes=torch.tensor([2, 0]))
    b = Instances((64, 64), pred_classes=torch.tensor([3]))
    mask_rcnn_inference(logits, [a, b])
    assert a.pred_masks.shape == (2, 1, 28, 28) and b.pred_masks.shape == (1, 1, 28, 28)
    torch.testing.assert_close(a.pred_masks[:, 0], torch.stack([logits[0, 2], logits[1, 0]]).sigmoid())
    torch.testing.assert_close(b.pred_masks[0, 0], logits[2, 3].sigmoid())


def test_mask_loss_is_bce_of_the_gt_class_mask_against_the_roi_aligned_gt_mask():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    gt_masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    gt_masks[0, :, :16] = True  # left half of the image
    gt_masks[1, 8:24, 8:24] = True
    # RoI 0 covers x 0..32: its target is the left half of the 8x8 grid; RoI 1 is exactly its mask's box
    inst = Instances((32, 32), proposal_boxes=torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 8.0, 24.0, 24.0]]),
                     gt_classes=torch.tensor([2, 1]), gt_masks=gt_masks)
    target = torch.zeros(2, 8, 8)
    target[0, :, :4] = 1
    target[1] = 1
    expected = F.binary_cross_entropy_with_logits(torch.stack([logits[0, 2], logits[1, 1]]), target)
    torch.testing.assert_close(mask_rcnn_loss(logits, [inst]), expected)


def test_fast_rcnn_inference_runs_nms_per_class_and_keeps_top_k():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.5, 0.0, 10.5, 10.0], [20.0, 20.0, 30.0, 30.0]])
    # columns: class 0, class 1, background
    scores = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.15, 0.05], [0.01, 0.6, 0.39]])
    (inst,), (rois,) = fast_rcnn_inference([boxes], [scores], [(32, 32)], score_thresh=0.1, nms_thresh=0.5,
                                           topk_per_image=100)
    # RoI 1's class-0 box is suppressed by RoI 0's, but its class-1 box survives (another class)
    assert inst.pred_classes.tolist() == [0, 1, 1]
    assert rois.tolist() == [0, 2, 1]
    torch.testing.assert_close(inst.scores, torch.tensor([0.9, 0.6, 0.15]))
    (top,), _ = fast_rcnn_inference([boxes], [scores], [(32, 32)], 0.1, 0.5, topk_per_image=1)
    assert len(top) == 1 and float(top.scores[0]) == pytest.approx(0.9)


def test_cascade_scales_the_pooled_feature_gradient_by_one_over_the_stage_count():
    torch.manual_seed(0)
    heads = _tiny_cascade()
    feats, proposals, targets = _toy_world(seed=0)
    feats = {k: v.requires_grad_(True) for k, v in feats.items()}
    sampled = heads.label_and_sample_proposals([proposals], [targets])
    grads = []
    for scale_on in (True, False):
        heads.train(scale_on)  # the scale applies in training only; the forward is the same either way
        pred = heads._run_stage([feats[f] for f in FEATS], sampled, 0)
        grads.append(torch.autograd.grad(pred[0].sum(), feats["p2"])[0])
    torch.testing.assert_close(grads[0], grads[1] / 3)


def test_cascade_trains_on_an_image_without_gt_on_negatives_only():
    torch.manual_seed(0)
    heads = _tiny_cascade()
    feats, proposals, _ = _toy_world(seed=0)
    empty = Instances((128, 128), gt_boxes=torch.zeros(0, 4), gt_classes=torch.zeros(0, dtype=torch.int64),
                      gt_masks=torch.zeros(0, 128, 128, dtype=torch.bool))
    sampled, losses = heads(None, feats, [proposals], [empty])
    assert (sampled[0].gt_classes == 2).all()
    assert float(losses["loss_box_reg_stage0"].detach()) == 0.0 and float(losses["loss_mask"].detach()) == 0.0
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_training_proposals_include_the_gt_boxes_with_their_targets():
    torch.manual_seed(0)
    heads = _tiny_cascade()
    _, proposals, targets = _toy_world(seed=0)
    # no RPN proposal overlaps: only the appended gt boxes can be foreground
    far = Instances((128, 128), proposal_boxes=torch.tensor([[0.0, 100.0, 4.0, 104.0]]),
                    objectness_logits=torch.zeros(1))
    (sampled,) = heads.label_and_sample_proposals([far], [targets])
    fg = sampled.gt_classes < 2
    assert sorted(sampled.gt_classes[fg].tolist()) == [0, 1]
    torch.testing.assert_close(sampled.proposal_boxes[fg], sampled.gt_boxes[fg])
    assert sampled.gt_masks.shape == (3, 128, 128)


def test_sigmoid_ce_and_federated_loss_match_their_definitions():
    torch.manual_seed(0)
    logits = torch.randn(4, 4)
    gt = torch.tensor([0, 3, 3, 1])  # class 2 absent: the federated draw adds it (weights > 0)
    props = Instances((32, 32), proposal_boxes=torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 4),
                      gt_boxes=torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 4), gt_classes=gt)
    sig = FastRCNNOutputLayers(8, box2box_transform=Box2BoxTransform((10, 10, 5, 5)), num_classes=3,
                               use_sigmoid_ce=True)
    target = F.one_hot(gt, 4)[:, :3].float()
    expected = F.binary_cross_entropy_with_logits(logits[:, :3], target, reduction="sum") / 4
    torch.testing.assert_close(sig.losses((logits, torch.zeros(4, 4)), [props])["loss_cls"], expected)
    # with the federated class set covering all 3 classes the federated loss is the same sum
    fed = FastRCNNOutputLayers(8, box2box_transform=Box2BoxTransform((10, 10, 5, 5)), num_classes=3,
                               use_fed_loss=True, fed_loss_num_classes=50,
                               get_fed_loss_cls_weights=lambda: torch.tensor([1.0, 4.0, 9.0]))
    torch.testing.assert_close(fed.losses((logits, torch.zeros(4, 4)), [props])["loss_cls"], expected)
    torch.testing.assert_close(fed.predict_probs((logits, None), [props])[0], logits.sigmoid())
    with pytest.raises(ValueError, match="get_fed_loss_cls_weights"):
        FastRCNNOutputLayers(8, box2box_transform=Box2BoxTransform((1, 1, 1, 1)), num_classes=3,
                             use_fed_loss=True)


def test_roi_pooler_legacy_roialign_equals_torchvision_multiscale_roi_align():
    # torchvision's MultiScaleRoIAlign is not aligned (detectron2's "ROIAlign") and maps levels alike
    torch.manual_seed(0)
    feats = {n: torch.randn(2, 3, 256 // s, 256 // s) for n, s in zip(FEATS, (4, 8, 16, 32))}
    boxes = [torch.tensor([[3.0, 5.0, 40.0, 30.0], [10.0, 10.0, 250.0, 200.0]]),
             torch.tensor([[0.5, 1.5, 130.0, 140.0], [20.0, 30.0, 28.0, 39.0], [0.0, 0.0, 256.0, 256.0]])]
    ours = ROIPooler(7, SCALES, sampling_ratio=2, pooler_type="ROIAlign")([feats[n] for n in FEATS], boxes)
    ref = MultiScaleRoIAlign(FEATS, 7, 2)(feats, boxes, [(256, 256), (256, 256)])
    torch.testing.assert_close(ours, ref)


def test_giou_box_loss_is_torchvisions_on_the_decoded_foreground_boxes():
    predictor = FastRCNNOutputLayers(8, box2box_transform=Box2BoxTransform((10, 10, 5, 5)), num_classes=2,
                                     cls_agnostic_bbox_reg=True, box_reg_loss_type="giou")
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 15.0]])
    gt = torch.tensor([[2.0, 1.0, 12.0, 14.0], [0.0, 0.0, 1.0, 1.0]])
    props = Instances((32, 32), proposal_boxes=boxes, gt_boxes=gt, gt_classes=torch.tensor([1, 2]))
    loss = predictor.losses((torch.zeros(2, 3), torch.zeros(2, 4)), [props])["loss_box_reg"]
    torch.testing.assert_close(loss, generalized_box_iou_loss(boxes[:1], gt[:1], reduction="sum") / 2)
    with pytest.raises(ValueError, match="box_reg_loss_type"):
        FastRCNNOutputLayers(8, box2box_transform=Box2BoxTransform((1, 1, 1, 1)), num_classes=2,
                             box_reg_loss_type="l2")


def test_roi_heads_build_from_detectron2s_vitdet_cascade_lazyconfig_tree_with_a_class_override():
    from omegaconf import OmegaConf

    from eva_core.config import L, LazyConfig, instantiate

    ch, fc = 8, 16
    roi_heads = L(CascadeROIHeads)(
        num_classes=80, batch_size_per_image=512, positive_fraction=0.25, box_in_features=FEATS,
        box_pooler=L(ROIPooler)(output_size=7, scales=SCALES, sampling_ratio=0, pooler_type="ROIAlignV2"),
        box_heads=[L(FastRCNNConvFCHead)(input_shape=ShapeSpec(channels=ch, height=7, width=7),
                                         conv_dims=[ch] * 4, fc_dims=[fc], conv_norm="LN") for _ in range(3)],
        box_predictors=[L(FastRCNNOutputLayers)(
            input_shape=ShapeSpec(channels=fc), test_score_thresh=0.05,
            box2box_transform=L(Box2BoxTransform)(weights=(w1, w1, w2, w2)), cls_agnostic_bbox_reg=True,
            num_classes="${...num_classes}") for w1, w2 in [(10, 5), (20, 10), (30, 15)]],
        proposal_matchers=[L(Matcher)(thresholds=[t], labels=[0, 1], allow_low_quality_matches=False)
                           for t in (0.5, 0.6, 0.7)],
        mask_in_features=FEATS,
        mask_pooler=L(ROIPooler)(output_size=14, scales=SCALES, sampling_ratio=0, pooler_type="ROIAlignV2"),
        mask_head=L(MaskRCNNConvUpsampleHead)(input_shape=ShapeSpec(channels=ch, width=14, height=14),
                                              num_classes="${..num_classes}", conv_dims=[ch] * 5,
                                              conv_norm="LN"),
    )
    cfg = OmegaConf.create({"model": {"roi_heads": roi_heads}})
    LazyConfig.apply_overrides(cfg, ["model.roi_heads.num_classes=3"])
    heads = instantiate(cfg.model.roi_heads)
    assert [p.cls_score.out_features for p in heads.box_predictor] == [4, 4, 4]
    assert [p.box2box_transform.weights for p in heads.box_predictor] == [
        (10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)]
    assert [m.thresholds[1] for m in heads.proposal_matchers] == [0.5, 0.6, 0.7]
    assert heads.mask_head.predictor.out_channels == 3


def test_paste_masks_puts_box_relative_masks_on_their_box_pixels():
    full = torch.ones(28, 28)
    left = torch.zeros(28, 28)
    left[:, :14] = 1
    boxes = torch.tensor([[10.0, 10.0, 30.0, 20.0], [10.0, 10.0, 30.0, 20.0], [5.0, 5.0, 5.0, 9.0]])
    out = paste_masks_in_image(torch.stack([full, left, full])[:, None], boxes, (40, 36))
    expected = torch.zeros(3, 40, 36, dtype=torch.bool)
    expected[0, 10:20, 10:30] = True
    expected[1, 10:20, 10:20] = True  # the left half of the mask covers the left half of the box
    assert out.dtype == torch.bool and torch.equal(out, expected)
    soft = paste_masks_in_image(full[None], boxes[:1], (40, 36), threshold=-1)
    assert soft.dtype == torch.uint8 and int(soft[0, 15, 15]) == 255 and int(soft[0, 0, 0]) == 0
