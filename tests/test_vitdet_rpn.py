"""ViTDet-EVA region proposal network with detectron2's conventions.

Spec: docs/recipes/detection.md#heads and #detectron2-state-dict-names
(RPN: 2 convs, ``proposal_generator.rpn_head.*``).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import box_iou

from eva_core.config import L, instantiate
from vitdet_eva import (
    RPN,
    Box2BoxTransform,
    DefaultAnchorGenerator,
    ImageList,
    Instances,
    Matcher,
    StandardRPNHead,
    find_top_rpn_proposals,
    subsample_labels,
)

LEVELS = ["p2", "p3", "p4", "p5", "p6"]
STRIDES = [4, 8, 16, 32, 64]


def _random_boxes(n: int, seed: int, max_xy: float = 200.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * max_xy
    wh = torch.rand(n, 2, generator=g) * 100 + 10  # sides 10..110: size ratios stay below the scale clamp
    return torch.cat([xy, xy + wh], dim=1)


def _vitdet_rpn(channels: int = 8, **kw) -> RPN:
    """ViTDet's RPN settings (mask_rcnn_vitdet config) at a toy width."""
    args = dict(
        in_features=LEVELS,
        head=StandardRPNHead(in_channels=channels, num_anchors=3, conv_dims=(-1, -1)),
        anchor_generator=DefaultAnchorGenerator(sizes=[[32], [64], [128], [256], [512]],
                                                aspect_ratios=[[0.5, 1.0, 2.0]], strides=STRIDES, offset=0.0),
        anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)),
        batch_size_per_image=256, positive_fraction=0.5,
        pre_nms_topk=(2000, 1000), post_nms_topk=(1000, 1000), nms_thresh=0.7,
    )
    args.update(kw)
    return RPN(**args)


def _features(size: int = 128, channels: int = 8, seed: int = 0, batch: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(batch, channels, size // s, size // s, generator=g)
            for name, s in zip(LEVELS, STRIDES)}


# --------------------------------------------------------------------------- Box2BoxTransform

def test_box2box_transform_equals_torchvision_box_coder_both_ways():
    weights = (10.0, 10.0, 5.0, 5.0)
    src, tgt = _random_boxes(64, 0), _random_boxes(64, 1)
    ours = Box2BoxTransform(weights)
    theirs = BoxCoder(weights, bbox_xform_clip=math.log(1000.0 / 16))
    torch.testing.assert_close(ours.get_deltas(src, tgt), theirs.encode_single(tgt, src),
                               rtol=1e-5, atol=1e-5)
    # large deltas exercise the scale clamp, which both libraries put at log(1000 / 16)
    deltas = torch.randn(64, 4, generator=torch.Generator().manual_seed(2)) * 30
    torch.testing.assert_close(ours.apply_deltas(deltas, src), theirs.decode_single(deltas, src),
                               rtol=1e-5, atol=1e-4)


def test_box2box_transform_round_trip_and_class_specific_deltas():
    t = Box2BoxTransform((20.0, 20.0, 10.0, 10.0))
    src, tgt = _random_boxes(32, 3), _random_boxes(32, 4)
    torch.testing.assert_close(t.apply_deltas(t.get_deltas(src, tgt), src), tgt, rtol=1e-5, atol=1e-3)
    # [N, 4k]: k boxes per row, each decoded against the same source box
    two = torch.cat([t.get_deltas(src, tgt), t.get_deltas(src, src)], dim=1)
    torch.testing.assert_close(t.apply_deltas(two, src), torch.cat([tgt, src], dim=1), rtol=1e-5, atol=1e-3)
    # a log size ratio above log(1000 / 16) is clamped: the box grows 62.5x, not e^10
    grown = t.apply_deltas(torch.tensor([[0.0, 0.0, 100.0, 0.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    torch.testing.assert_close(grown[0, 2] - grown[0, 0], torch.tensor(1000.0))
    with pytest.raises(ValueError, match="weights"):
        Box2BoxTransform((1.0, 1.0, 1.0))


# --------------------------------------------------------------------------- anchors

def test_cell_anchors_of_size_32_are_detectron2s_unrounded_boxes():
    gen = DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[[0.5, 1.0, 2.0]], strides=[4], offset=0.0)
    # ratio h / w = 0.5 at area 32^2: w = 32 * sqrt(2), h = 32 / sqrt(2); ratio 2 swaps them
    long, short = 16 * math.sqrt(2), 8 * math.sqrt(2)
    expected = torch.tensor([[-long, -short, long, short], [-16.0, -16.0, 16.0, 16.0],
                             [-short, -long, short, long]])
    torch.testing.assert_close(gen.cell_anchors[0], expected)
    # the grid: anchor (y, x, a) sits at index (y * W + x) * A + a, centred on (x, y) * stride
    anchors = gen([torch.zeros(1, 1, 2, 3)])[0]
    assert anchors.shape == (2 * 3 * 3, 4)
    torch.testing.assert_close(anchors[(1 * 3 + 2) * 3 + 1],
                               torch.tensor([8.0 - 16, 4.0 - 16, 8.0 + 16, 4.0 + 16]))
    assert list(gen.state_dict()) == []  # anchors come from the config, never from a checkpoint


def test_anchors_equal_torchvision_anchor_generator_when_cells_are_integers():
    # ratios 1/4, 1, 4 give integer cells, so torchvision's rounding changes nothing and the two agree
    sizes, ratios = ((32,), (64,), (128,)), ((0.25, 1.0, 4.0),) * 3
    ours = DefaultAnchorGenerator(sizes=[list(s) for s in sizes], aspect_ratios=[[0.25, 1.0, 4.0]],
                                  strides=[4, 8, 16], offset=0.0)
    feats = [torch.zeros(1, 1, 16 // f, 24 // f) for f in (1, 2, 4)]
    theirs = AnchorGenerator(sizes, ratios)(TVImageList(torch.zeros(1, 3, 64, 96), [(64, 96)]), feats)[0]
    torch.testing.assert_close(torch.cat(ours(feats)), theirs)
    # ViTDet's 0.5 / 2 cells are not integers: torchvision rounds them, detectron2 (and we) do not
    vitdet = DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[[0.5, 1.0, 2.0]], strides=[4], offset=0.0)
    tv = AnchorGenerator(((32,),), ((0.5, 1.0, 2.0),))
    torch.testing.assert_close(vitdet.cell_anchors[0].round(), tv.cell_anchors[0])
    assert not torch.equal(vitdet.cell_anchors[0], tv.cell_anchors[0])


def test_anchor_offset_defaults_to_detectron2s_constructor_default_and_the_configs_pass_zero():
    from eva_core.config import LazyConfig

    assert DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[[1.0]], strides=[4]).offset == 0.5
    repo = Path(__file__).resolve().parents[1]
    cfg = LazyConfig.load(str(repo / "projects/ViTDet-EVA/configs/common/models/cascade_mask_rcnn_vitdet.py"))
    assert cfg.model.proposal_generator.anchor_generator.offset == 0.0


def test_anchor_generator_refuses_a_wrong_number_of_levels():
    flat = DefaultAnchorGenerator(sizes=[32, 64], aspect_ratios=[0.5, 1.0, 2.0], strides=[4, 8])
    assert flat.num_cell_anchors == [6, 6]  # a flat list is every level's, as in detectron2
    with pytest.raises(ValueError, match="sizes has 2 lists"):
        DefaultAnchorGenerator(sizes=[[32], [64]], aspect_ratios=[[1.0]], strides=[4, 8, 16])
    gen = DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[[1.0]], strides=[4, 8])
    with pytest.raises(ValueError, match="got 1 feature maps"):
        gen([torch.zeros(1, 1, 4, 4)])


# --------------------------------------------------------------------------- matcher and sampling

IOU = torch.tensor([
    [0.10, 0.75, 0.50, 0.20, 0.00],  # gt 0: best prediction 1 (a real match)
    [0.25, 0.20, 0.60, 0.60, 0.05],  # gt 1: best predictions 2 and 3 (a tie, both become positive)
    [0.28, 0.00, 0.00, 0.00, 0.00],  # gt 2: best prediction 0 at IoU 0.28, a low-quality match
])


def test_matcher_bins_iou_and_adds_low_quality_matches_with_ties():
    strict = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=False)
    matches, labels = strict(IOU)
    assert matches.tolist() == [2, 0, 1, 1, 1]
    assert labels.tolist() == [0, 1, -1, -1, 0] and labels.dtype == torch.int8
    matches, labels = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)(IOU)
    assert matches.tolist() == [2, 0, 1, 1, 1]
    assert labels.tolist() == [1, 1, 1, 1, 0]
    matches, labels = strict(torch.zeros(0, 4))  # an image without gt: every prediction is background
    assert matches.tolist() == [0, 0, 0, 0] and labels.tolist() == [0, 0, 0, 0]


def test_matcher_keeps_the_best_gt_index_for_a_low_quality_match():
    # prediction 0 is gt 1's best, but gt 0 overlaps it more: detectron2 relabels it 1 and keeps index 0
    iou = torch.tensor([[0.5, 0.9], [0.4, 0.1]])
    matches, labels = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)(iou)
    assert matches.tolist() == [0, 0] and labels.tolist() == [1, 1]


def test_matcher_refuses_bad_settings_and_negative_quality():
    with pytest.raises(ValueError, match="3 labels"):
        Matcher([0.3, 0.7], [0, 1])
    with pytest.raises(ValueError, match="labels"):
        Matcher([0.5], [0, 2])
    with pytest.raises(ValueError, match="negative"):
        Matcher([0.5], [0, 1])(torch.tensor([[-0.1, 0.5]]))


def test_subsample_labels_draws_at_most_the_positive_fraction_and_never_ignored():
    torch.manual_seed(0)
    labels = torch.zeros(1000, dtype=torch.int64)
    labels[:10] = 1
    labels[10:20] = -1
    pos, neg = subsample_labels(labels, 256, 0.5, 0)
    assert sorted(pos.tolist()) == list(range(10)) and len(neg) == 246
    assert (labels[neg] == 0).all()
    labels[:300] = 1
    pos, neg = subsample_labels(labels, 256, 0.5, 0)
    assert len(pos) == 128 and len(neg) == 128 and (labels[pos] == 1).all() and (labels[neg] == 0).all()


# --------------------------------------------------------------------------- head and RPN

def test_rpn_head_state_dict_names_are_detectron2s_in_a_full_model():
    model = nn.Module()
    model.proposal_generator = _vitdet_rpn(channels=16)
    keys = sorted(model.state_dict())
    assert keys == sorted(f"proposal_generator.rpn_head.{m}.{p}" for m in
                          ("conv.conv0", "conv.conv1", "objectness_logits", "anchor_deltas")
                          for p in ("weight", "bias"))
    head = model.proposal_generator.rpn_head
    assert head.objectness_logits.weight.shape == (3, 16, 1, 1)
    assert head.anchor_deltas.weight.shape == (12, 16, 1, 1)
    assert list(StandardRPNHead(in_channels=4, num_anchors=3).state_dict())[0] == "conv.weight"  # one conv


def _toy_image(batch: int = 1):
    gt = torch.tensor([[10.0, 20.0, 60.0, 70.0], [70.0, 40.0, 120.0, 100.0]])
    images = ImageList(torch.zeros(batch, 3, 128, 128), [(128, 128)] * batch)
    return images, [Instances((128, 128), gt_boxes=gt) for _ in range(batch)], gt


def test_rpn_losses_are_normalised_by_256_anchors_per_image():
    torch.manual_seed(0)
    rpn = _vitdet_rpn().train()
    # logits 0 and deltas 0: both losses are known in closed form
    nn.init.zeros_(rpn.rpn_head.objectness_logits.weight)
    nn.init.zeros_(rpn.rpn_head.anchor_deltas.weight)
    images, gts, gt = _toy_image(batch=2)
    _, losses = rpn(images, _features(batch=2), gts)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
    # every image has more than 256 anchors to sample: 256 BCE terms of log 2 each, over 256 per image
    torch.testing.assert_close(losses["loss_rpn_cls"], torch.tensor(math.log(2.0)))
    # fewer than 128 positives, so all are drawn: L1 of their target deltas (beta 0) summed over 256 per image
    anchors = torch.cat(rpn.anchor_generator([f for f in _features().values()]))
    matches, labels = rpn.anchor_matcher(box_iou(gt, anchors))
    pos = labels == 1
    assert 0 < int(pos.sum()) < 128
    l1 = rpn.box2box_transform.get_deltas(anchors[pos], gt[matches[pos]]).abs().sum()
    torch.testing.assert_close(losses["loss_rpn_loc"], 2 * l1 / (256 * 2))


def test_rpn_losses_fall_when_trained_on_a_toy_image_with_two_boxes():
    torch.manual_seed(0)
    rpn = _vitdet_rpn().train()
    feats = _features()
    images, gts, gt = _toy_image()
    opt = torch.optim.Adam(rpn.parameters(), lr=1e-2)
    history = []
    for _ in range(40):
        _, losses = rpn(images, feats, gts)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    first = {k: sum(h[k] for h in history[:3]) / 3 for k in history[0]}
    last = {k: sum(h[k] for h in history[-3:]) / 3 for k in history[0]}
    assert last["loss_rpn_cls"] < 0.3 * first["loss_rpn_cls"], (first, last)
    assert last["loss_rpn_loc"] < 0.6 * first["loss_rpn_loc"], (first, last)
    # and its best proposals now find both boxes
    with torch.no_grad():
        (proposals,), _ = rpn.eval()(images, feats)
    assert (box_iou(gt, proposals.proposal_boxes[:10]).max(dim=1).values > 0.6).all()


def test_rpn_proposals_in_eval_respect_topk_nms_and_image_bounds():
    torch.manual_seed(0)
    rpn = _vitdet_rpn(pre_nms_topk=(2000, 7), post_nms_topk=(1000, 1000))
    with torch.no_grad():  # large random deltas so that boxes overlap the border and each other
        for p in rpn.rpn_head.parameters():
            p.normal_(0, 0.3)
    rpn.eval()
    images = ImageList(torch.zeros(2, 3, 128, 128), [(100, 80), (128, 128)])
    proposals, losses = rpn(images, _features(batch=2))
    assert losses == {}
    assert len(proposals) == 2
    for inst, (h, w) in zip(proposals, images.image_sizes):
        boxes, scores = inst.proposal_boxes, inst.objectness_logits
        assert inst.image_size == (h, w)
        assert 0 < len(boxes) <= 7 * 5  # pre-NMS top-k per level, 5 levels
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
        assert torch.equal(scores, scores.sort(descending=True).values)
    rpn.post_nms_topk[False] = 4
    proposals, _ = rpn(images, _features(batch=2))
    assert all(len(p) == 4 for p in proposals)


def test_proposal_nms_runs_within_a_level_at_07():
    # one level, three boxes: B overlaps A at IoU 0.81 (suppressed), C overlaps A at IoU 0.6 (kept)
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [0.0, 0.0, 10.0, 6.0]]])
    logits = torch.tensor([[3.0, 2.0, 1.0]])
    (inst,) = find_top_rpn_proposals([boxes], [logits], [(20, 20)], 0.7, 10, 10, 0.0, False)
    assert inst.objectness_logits.tolist() == [3.0, 1.0]
    # the same boxes on two levels are not suppressed across levels
    (inst,) = find_top_rpn_proposals([boxes[:, :1], boxes[:, 1:2]], [logits[:, :1], logits[:, 1:2]],
                                     [(20, 20)], 0.7, 10, 10, 0.0, False)
    assert inst.objectness_logits.tolist() == [3.0, 2.0]


def test_non_finite_proposals_fail_in_training_and_are_dropped_in_eval():
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [float("nan"), 0.0, 5.0, 5.0]]])
    logits = torch.tensor([[1.0, 2.0]])
    with pytest.raises(FloatingPointError, match="diverged"):
        find_top_rpn_proposals([boxes], [logits], [(20, 20)], 0.7, 10, 10, 0.0, True)
    (inst,) = find_top_rpn_proposals([boxes], [logits], [(20, 20)], 0.7, 10, 10, 0.0, False)
    assert inst.objectness_logits.tolist() == [1.0]


def test_rpn_training_without_gt_or_with_a_missing_level_fails_clearly():
    rpn = _vitdet_rpn().train()
    images, _, _ = _toy_image()
    with pytest.raises(ValueError, match="gt_instances"):
        rpn(images, _features())
    feats = _features()
    del feats["p6"]
    with pytest.raises(KeyError, match="p6"):
        rpn(images, feats)


def test_instances_index_fields_together_and_refuse_unequal_lengths():
    inst = Instances((20, 30), gt_boxes=torch.arange(12.0).view(3, 4), gt_classes=torch.tensor([5, 6, 7]))
    picked = inst[torch.tensor([True, False, True])]
    assert len(picked) == 2 and picked.image_size == (20, 30)
    assert picked.gt_classes.tolist() == [5, 7] and picked.gt_boxes[1].tolist() == [8.0, 9.0, 10.0, 11.0]
    assert inst[1].gt_classes.tolist() == [6]
    with pytest.raises(ValueError, match="gt_masks.*length 2.*have 3"):
        inst.gt_masks = torch.zeros(2, 4, 4)
    with pytest.raises(AttributeError, match="gt_keypoints"):
        inst.gt_keypoints


def _rpn_pair(levels: list[str], strides: list[int], sizes: list[int]):
    """Our RPN and torchvision's with the same weights and integer cell anchors (ratios 1/4, 1, 4), so that
    torchvision's rounding of cell anchors changes nothing; both use 2 convs, Matcher(0.3, 0.7) with
    low-quality matches, 256 samples per image, half positive, NMS 0.7 per level."""
    torch.manual_seed(0)
    ours = _vitdet_rpn(
        in_features=levels, smooth_l1_beta=1 / 9, pre_nms_topk=(2000, 50), post_nms_topk=(1000, 30),
        anchor_generator=DefaultAnchorGenerator(sizes=[[s] for s in sizes], aspect_ratios=[[0.25, 1.0, 4.0]],
                                                strides=strides, offset=0.0))
    with torch.no_grad():  # weights large enough that proposals move well away from their anchors
        for p in ours.rpn_head.parameters():
            p.normal_(0, 0.2)
    head = RPNHead(8, 3, conv_depth=2)
    names = {"conv.conv0": "conv.0.0", "conv.conv1": "conv.1.0", "objectness_logits": "cls_logits",
             "anchor_deltas": "bbox_pred"}
    head.load_state_dict({names[k.rsplit(".", 1)[0]] + "." + k.rsplit(".", 1)[1]: v
                          for k, v in ours.rpn_head.state_dict().items()})
    theirs = RegionProposalNetwork(
        AnchorGenerator(tuple((s,) for s in sizes), ((0.25, 1.0, 4.0),) * len(sizes)), head,
        fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
        pre_nms_top_n=dict(training=2000, testing=50), post_nms_top_n=dict(training=1000, testing=30),
        nms_thresh=0.7, score_thresh=0.0)
    return ours, theirs


def test_rpn_proposals_equal_torchvisions_region_proposal_network():
    ours, theirs = _rpn_pair(LEVELS, STRIDES, [32, 64, 128, 256, 512])
    feats = _features(batch=2)
    sizes = [(100, 80), (128, 128)]
    with torch.no_grad():
        proposals, _ = ours.eval()(ImageList(torch.zeros(2, 3, 128, 128), sizes), feats)
        boxes, _ = theirs.eval()(TVImageList(torch.zeros(2, 3, 128, 128), sizes), feats)
    for inst, ref in zip(proposals, boxes):
        assert len(inst) == len(ref) == 30
        torch.testing.assert_close(inst.proposal_boxes, ref)


def test_rpn_losses_equal_torchvisions_up_to_detectron2s_normaliser():
    # 3 levels of a 64 x 64 image have 252 anchors (< 256): every labelled anchor is sampled in both
    ours, theirs = _rpn_pair(LEVELS[1:4], STRIDES[1:4], [16, 32, 64])
    feats = {k: v for k, v in _features(size=64).items() if k in LEVELS[1:4]}
    gt = torch.tensor([[6.0, 8.0, 30.0, 40.0], [34.0, 20.0, 60.0, 50.0]])
    _, losses = ours.train()(ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]), feats,
                             [Instances((64, 64), gt_boxes=gt)])
    _, ref = theirs.train()(TVImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]), feats, [{"boxes": gt}])
    anchors = torch.cat(ours.anchor_generator(list(feats.values())))
    _, labels = ours.anchor_matcher(box_iou(gt, anchors))
    sampled = int((labels >= 0).sum())
    assert len(anchors) == 252 and 0 < int((labels == 1).sum()) < sampled
    # torchvision averages over the sampled anchors, detectron2 divides by 256 per image
    torch.testing.assert_close(losses["loss_rpn_cls"] * 256 / sampled, ref["loss_objectness"])
    torch.testing.assert_close(losses["loss_rpn_loc"] * 256 / sampled, ref["loss_rpn_box_reg"])


def test_detectron2s_vitdet_rpn_config_instantiates_and_takes_a_users_override():
    # model.proposal_generator as detectron2's mask_rcnn_vitdet LazyConfig writes it (flat aspect_ratios)
    cfg = L(RPN)(
        in_features=LEVELS,
        head=L(StandardRPNHead)(in_channels=256, num_anchors=3, conv_dims=[-1, -1]),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[32], [64], [128], [256], [512]], aspect_ratios=[0.5, 1.0, 2.0], strides=STRIDES,
            offset=0.0),
        anchor_matcher=L(Matcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256, positive_fraction=0.5,
        pre_nms_topk=(2000, 1000), post_nms_topk=(1000, 1000), nms_thresh=0.7,
    )
    cfg.head.in_channels = 8  # the user's override of model.proposal_generator.head.in_channels
    rpn = instantiate(cfg)
    assert rpn.rpn_head.conv.conv0.in_channels == 8
    assert rpn.anchor_generator.num_cell_anchors == [3] * 5
    assert rpn.pre_nms_topk == {True: 2000, False: 1000} and rpn.post_nms_topk == {True: 1000, False: 1000}
    proposals, _ = rpn.eval()(ImageList(torch.zeros(1, 3, 128, 128), [(128, 128)]), _features())
    assert 0 < len(proposals[0]) <= 1000


def test_an_image_without_boxes_trains_on_negatives_only():
    rpn = _vitdet_rpn().train()
    images = ImageList(torch.zeros(1, 3, 128, 128), [(128, 128)])
    _, losses = rpn(images, _features(), [Instances((128, 128), gt_boxes=torch.zeros(0, 4))])
    assert float(losses["loss_rpn_loc"].detach()) == 0.0
    assert torch.isfinite(losses["loss_rpn_cls"]) and float(losses["loss_rpn_cls"].detach()) > 0


def test_anchor_boundary_thresh_ignores_anchors_that_leave_the_image():
    torch.manual_seed(0)
    rpn = _vitdet_rpn(anchor_boundary_thresh=0.0, batch_size_per_image=100000)
    images, gts, gt = _toy_image()
    feats = list(_features().values())
    anchors = torch.cat(rpn.anchor_generator(feats))
    (labels,), _ = rpn.label_and_sample_anchors(rpn.anchor_generator(feats), gts)
    _, unbounded = rpn.anchor_matcher(box_iou(gt, anchors))  # every anchor is sampled at this batch size
    inside = (anchors[:, :2] >= 0).all(dim=1) & (anchors[:, 2] < 128) & (anchors[:, 3] < 128)
    assert (unbounded[~inside] >= 0).any()  # some of the ignored anchors would have been trained on
    assert (labels[~inside] == -1).all()
    assert torch.equal(labels[inside], unbounded[inside])
