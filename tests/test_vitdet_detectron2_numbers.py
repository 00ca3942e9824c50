"""ViTDet-EVA's detection modules reproduce the numbers hard-coded in detectron2's own unit tests.

detectron2 cannot be installed here, so these tests rebuild each detectron2 test case with *our*
modules (``projects/ViTDet-EVA/vitdet_eva``) and assert the values detectron2's tests print: anchors,
matcher labels, RoIAlign outputs, box IoUs, DIoU / CIoU losses, and the seeded RPN / Fast R-CNN /
ROI-head losses and proposals. The seeded cases only reproduce because our modules create and
initialise their parameters in detectron2's order with detectron2's init functions (a change there fails
them). In these tiny cases every candidate anchor and RoI is sampled, so they do not check which ones
``subsample_labels`` would pick from a larger pool (swapping its two ``randperm`` calls still passes).

Each test names the detectron2 file, test function and the git commit of ``facebookresearch/detectron2``
its numbers were read from. Not reproduced: the rotated-box variants (``test_rrpn``, ``test_rroi_heads``,
``test_fast_rcnn_rotated``, ``test_rrpn_anchor_generator``; we have no rotated boxes), the TorchScript
tests, and tests without expected numbers that need COCO files or cv2 (``test_mask_ops``,
``test_roi_align.test_resize``). ``docs/recipes/detection.md#parity-with-detectron2s-unit-tests``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.ops import box_iou

from vitdet_eva import (
    RPN,
    Box2BoxTransform,
    CascadeROIHeads,
    DefaultAnchorGenerator,
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    ImageList,
    Instances,
    MaskRCNNConvUpsampleHead,
    Matcher,
    ROIPooler,
    ShapeSpec,
    StandardRPNHead,
)
from vitdet_eva.box_head import c2_msra_fill

D2 = "facebookresearch/detectron2"


def _detectron2_default_rpn() -> RPN:
    """The RPN of detectron2's default config (``get_cfg()``) on one ``res4`` map (1024 ch., stride 16):
    15 anchors per cell (sizes 32..512 x ratios 0.5/1/2, offset 0), one 3x3 conv, Matcher(0.3, 0.7) with
    low-quality matches, 256 anchors per image, half positive, pre/post-NMS top-k 12000/2000 in training."""
    return RPN(
        in_features=["res4"],
        head=StandardRPNHead(in_channels=1024, num_anchors=15),
        anchor_generator=DefaultAnchorGenerator(sizes=[[32, 64, 128, 256, 512]],
                                                aspect_ratios=[[0.5, 1.0, 2.0]], strides=[16], offset=0.0),
        anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=Box2BoxTransform((1.0, 1.0, 1.0, 1.0)),
        batch_size_per_image=256, positive_fraction=0.5,
        pre_nms_topk=(12000, 6000), post_nms_topk=(2000, 1000), nms_thresh=0.7, min_box_size=0.0,
        smooth_l1_beta=0.0,
    )


def _consume_rng_like_detectron2_resnet50(num_stages: int) -> None:
    """Draw from the global torch RNG exactly what detectron2's ``build_resnet_backbone(get_cfg())`` draws.

    detectron2's ``test_rpn`` builds a ResNet-50 before the RPN, so the RPN's random init depends on it.
    Its only random calls are each conv's construction (``nn.Conv2d.reset_parameters``) and
    ``c2_msra_fill`` (``resnet.py`` at commit 0af92994bc09a1ea256feb7a76f996cdc3930193): the stem's 7x7 conv;
    then per bottleneck block the shortcut (if channels change), conv1, conv2, conv3 are created in that
    order and filled in the order conv1, conv2, conv3, shortcut. FrozenBN draws nothing. We build convs of
    the same shapes with the same calls and throw them away. Older detectron2 built the stages up to the
    last output (``res4``: 3 stages); newer detectron2 builds all 4 and drops ``res5`` afterwards
    (``ResNet.__init__``: "Avoid keeping unused layers"), which draws more.
    """
    c2_msra_fill(nn.Conv2d(3, 64, kernel_size=7, bias=False))
    in_ch, out_ch, mid = 64, 256, 64
    for num_blocks in (3, 4, 6, 3)[:num_stages]:
        for _ in range(num_blocks):
            shortcut = nn.Conv2d(in_ch, out_ch, 1, bias=False) if in_ch != out_ch else None
            convs = [nn.Conv2d(in_ch, mid, 1, bias=False), nn.Conv2d(mid, mid, 3, bias=False),
                     nn.Conv2d(mid, out_ch, 1, bias=False)]
            for conv in convs + ([shortcut] if shortcut is not None else []):
                c2_msra_fill(conv)
            in_ch = out_ch
        out_ch, mid = out_ch * 2, mid * 2


def _run_detectron2_test_rpn(num_resnet_stages: int):
    """detectron2's ``test_rpn`` body: seed 121, backbone, RPN, random images and res4 features, 2 gt boxes
    (one per image) on a (15, 15) canvas; the RPN runs in training mode."""
    torch.manual_seed(121)
    _consume_rng_like_detectron2_resnet50(num_resnet_stages)
    rpn = _detectron2_default_rpn().train()
    images = ImageList(torch.rand(2, 20, 30), [(10, 10), (20, 30)])
    features = {"res4": torch.rand(2, 1024, 1, 2)}
    gt_boxes = torch.tensor([[1, 1, 3, 3], [2, 2, 6, 6]], dtype=torch.float32)
    gt_instances = Instances((15, 15), gt_boxes=gt_boxes)
    with torch.no_grad():
        return rpn(images, features, [gt_instances[0], gt_instances[1]])


def test_default_anchor_generator():
    """tests/modeling/test_anchor_generator.py::TestAnchorGenerator::test_default_anchor_generator
    (detectron2 commit 273e3b9746473a7469550bf793bbfb4c0a47c7d5): sizes [[32, 64]], ratios [[0.25, 1, 4]],
    stride 4, config offset 0.0, a 1x2 feature map."""
    gen = DefaultAnchorGenerator(sizes=[[32, 64]], aspect_ratios=[[0.25, 1, 4]], strides=[4], offset=0.0)
    expected = torch.tensor([
        [-32.0, -8.0, 32.0, 8.0], [-16.0, -16.0, 16.0, 16.0], [-8.0, -32.0, 8.0, 32.0],
        [-64.0, -16.0, 64.0, 16.0], [-32.0, -32.0, 32.0, 32.0], [-16.0, -64.0, 16.0, 64.0],
        [-28.0, -8.0, 36.0, 8.0], [-12.0, -16.0, 20.0, 16.0], [-4.0, -32.0, 12.0, 32.0],
        [-60.0, -16.0, 68.0, 16.0], [-28.0, -32.0, 36.0, 32.0], [-12.0, -64.0, 20.0, 64.0],
    ])
    anchors = gen([torch.rand(2, 96, 1, 2)])
    assert len(anchors) == 1
    torch.testing.assert_close(anchors[0], expected, rtol=0, atol=1e-6)


def test_default_anchor_generator_centered():
    """tests/modeling/test_anchor_generator.py::TestAnchorGenerator::test_default_anchor_generator_centered
    (commit 273e3b9746473a7469550bf793bbfb4c0a47c7d5). detectron2's test passes no ``offset``: the
    constructor default, 0.5 (the config default is 0.0), which is ours too."""
    gen = DefaultAnchorGenerator(sizes=[32, 64], aspect_ratios=[0.25, 1, 4], strides=[4])
    expected = torch.tensor([
        [-30.0, -6.0, 34.0, 10.0], [-14.0, -14.0, 18.0, 18.0], [-6.0, -30.0, 10.0, 34.0],
        [-62.0, -14.0, 66.0, 18.0], [-30.0, -30.0, 34.0, 34.0], [-14.0, -62.0, 18.0, 66.0],
        [-26.0, -6.0, 38.0, 10.0], [-10.0, -14.0, 22.0, 18.0], [-2.0, -30.0, 14.0, 34.0],
        [-58.0, -14.0, 70.0, 18.0], [-26.0, -30.0, 38.0, 34.0], [-10.0, -62.0, 22.0, 66.0],
    ])
    torch.testing.assert_close(gen([torch.rand(2, 96, 1, 2)])[0], expected, rtol=0, atol=1e-6)


def test_matcher_rpn_thresholds():
    """tests/modeling/test_matcher.py::TestMatcher::test_scriptability (commit
    33653a47d456194f20d2f2abee2a0ae38fbacd00): RPN thresholds (0.3, 0.7), labels (0, -1, 1), low-quality
    matches on."""
    matcher = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)
    quality = torch.tensor([[0.15, 0.45, 0.2, 0.6], [0.3, 0.65, 0.05, 0.1], [0.05, 0.4, 0.25, 0.4]])
    matches, labels = matcher(quality)
    assert matches.tolist() == [1, 1, 2, 0]
    assert labels.dtype == torch.int8 and labels.tolist() == [-1, 1, 0, 1]


def test_box2box_transform_reconstruction():
    """tests/modeling/test_box2box_transform.py::TestBox2BoxTransform::test_reconstruction (commit
    0e29b7ab8b77860b397aa02c2a164e1a8edcea8b): weights (5, 5, 10, 10); decoding the deltas of random boxes
    gives the boxes back (detectron2's ``random_boxes(10)``: corners ``rand * 50`` clamped to >= 1, the
    second corner offset from the first)."""
    b2b = Box2BoxTransform(weights=(5, 5, 10, 10))

    def random_boxes(n: int) -> torch.Tensor:
        boxes = (torch.rand(n, 4) * 50.0).clamp_(min=1.0)
        boxes[:, 2:] += boxes[:, :2]
        return boxes

    src, dst = random_boxes(10), random_boxes(10)
    deltas = b2b.get_deltas(src, dst)
    assert torch.allclose(b2b.apply_deltas(deltas, src), dst)


def test_pairwise_iou_used_by_the_matchers():
    """tests/structures/test_boxes.py::TestBoxIOU::test_pairwise_iou (commit
    0263797634b79208414db202b9f8e1343181412c), on ``torchvision.ops.box_iou``, which our RPN and RoI heads
    use where detectron2 uses ``pairwise_iou``."""
    boxes1 = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    boxes2 = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 1.0, 0.5],
                           [0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 1.5, 1.5]])
    row = [1.0, 0.5, 0.5, 0.25, 0.25, 0.25 / (2 - 0.25)]
    assert torch.allclose(box_iou(boxes1, boxes2), torch.tensor([row, row]))


def test_roi_align_forward_output():
    """tests/layers/test_roi_align.py::ROIAlignTest::test_forward_output (commit
    405ef0d4f466fb6fbc28fd219b6d03d5befb045a), through our ``ROIPooler`` (one level, scale 1): box
    (1, 1, 3, 3) on a 5x5 ramp at 4x4, without (``ROIAlign``) and with (``ROIAlignV2``) the half-pixel
    correction."""
    image = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5)
    box = [torch.tensor([[1.0, 1.0, 3.0, 3.0]])]
    old = ROIPooler(4, [1.0], sampling_ratio=0, pooler_type="ROIAlign")([image], box)[0, 0]
    aligned = ROIPooler(4, [1.0], sampling_ratio=0, pooler_type="ROIAlignV2")([image], box)[0, 0]
    old_results = [[7.5, 8, 8.5, 9], [10, 10.5, 11, 11.5], [12.5, 13, 13.5, 14], [15, 15.5, 16, 16.5]]
    correct_results = [[4.5, 5.0, 5.5, 6.0], [7.0, 7.5, 8.0, 8.5], [9.5, 10.0, 10.5, 11.0],
                       [12.0, 12.5, 13.0, 13.5]]
    assert torch.allclose(old, torch.tensor(old_results))
    assert torch.allclose(aligned, torch.tensor(correct_results))


def test_roi_align_empty_box():
    """tests/layers/test_roi_align.py::ROIAlignTest::test_empty_box (commit
    405ef0d4f466fb6fbc28fd219b6d03d5befb045a): a zero-height box pools zeros and passes no gradient."""
    image = torch.rand(1, 1, 5, 5, requires_grad=True)
    out = ROIPooler(7, [1.0], sampling_ratio=0, pooler_type="ROIAlignV2")([image],
                                                                           [torch.tensor([[3.0, 4, 5, 4]])])
    assert out.shape == (1, 1, 7, 7) and bool((out == 0).all())
    out.sum().backward()
    assert torch.equal(image.grad, torch.zeros_like(image))


def test_fast_rcnn_losses():
    """tests/modeling/test_fast_rcnn.py::FastRCNNTest::test_fast_rcnn (commit
    1d26ee7a1ab0b88dcca75dc8f4cf94b570ca36c2): seed 132, predictor on 8 channels, 5 classes,
    class-specific boxes with weights (10, 10, 5, 5); two proposals with gt classes 1, 2."""
    torch.manual_seed(132)
    predictor = FastRCNNOutputLayers(ShapeSpec(channels=8), num_classes=5,
                                     box2box_transform=Box2BoxTransform((10, 10, 5, 5)))
    predictions = predictor(torch.rand(2, 8))
    proposals = Instances(
        (10, 10), proposal_boxes=torch.tensor([[0.8, 1.1, 3.2, 2.8], [2.3, 2.5, 7, 8]], dtype=torch.float32),
        gt_boxes=torch.tensor([[1, 1, 3, 3], [2, 2, 6, 6]], dtype=torch.float32),
        gt_classes=torch.tensor([1, 2]))
    losses = predictor.losses(predictions, [proposals])
    assert torch.allclose(losses["loss_cls"], torch.tensor(1.7951188087))
    assert torch.allclose(losses["loss_box_reg"], torch.tensor(4.0357131958))


def test_fast_rcnn_empty_batch():
    """tests/modeling/test_fast_rcnn.py::FastRCNNTest::test_fast_rcnn_empty_batch (commit
    1d26ee7a1ab0b88dcca75dc8f4cf94b570ca36c2): no RoIs give zero losses that still backpropagate, and no
    detections."""
    predictor = FastRCNNOutputLayers(ShapeSpec(channels=10), num_classes=8,
                                     box2box_transform=Box2BoxTransform((10, 10, 5, 5)))
    logits = torch.randn(0, 100, requires_grad=True)
    deltas = torch.randn(0, 4, requires_grad=True)
    losses = predictor.losses([logits, deltas], [])
    for value in losses.values():
        assert torch.allclose(value, torch.zeros_like(value))
    sum(losses.values()).backward()
    assert logits.grad is not None and deltas.grad is not None
    predictions, _ = predictor.inference([logits, deltas], [])
    assert len(predictions) == 0


def test_rpn_losses_and_proposals_current_detectron2():
    """tests/modeling/test_rpn.py::RPNTest::test_rpn (commit 0c17ff468fd8c4e6e1ec638d73e2c350697d31fa, whose
    ResNet is built with all 4 stages before ``res5`` is dropped): losses and image 0's proposals."""
    proposals, losses = _run_detectron2_test_rpn(num_resnet_stages=4)
    assert torch.allclose(losses["loss_rpn_cls"], torch.tensor(0.08011703193))
    assert torch.allclose(losses["loss_rpn_loc"], torch.tensor(0.101470276))
    assert [p.image_size for p in proposals] == [(10, 10), (20, 30)]
    assert torch.allclose(proposals[0].proposal_boxes, torch.tensor([[0, 0, 10, 10], [7.2702, 0, 10, 10]]),
                          atol=1e-4)
    assert torch.allclose(proposals[0].objectness_logits, torch.tensor([0.1596, -0.0007]), atol=1e-4)


def test_rpn_losses_and_proposals_older_detectron2():
    """tests/modeling/test_rpn.py::RPNTest::test_rpn (commit a097b53ee6bc276fc222562a8faa0fdb93284529, whose
    ResNet built only the stages up to ``res4``): losses and both images' proposals and logits."""
    proposals, losses = _run_detectron2_test_rpn(num_resnet_stages=3)
    assert torch.allclose(losses["loss_rpn_cls"], torch.tensor(0.0804563984))
    assert torch.allclose(losses["loss_rpn_loc"], torch.tensor(0.0990132466))
    expected_boxes = [
        torch.tensor([[0, 0, 10, 10], [7.3365392685, 0, 10, 10]]),
        torch.tensor([[0, 0, 30, 20], [0, 0, 16.7862777710, 13.1362524033], [0, 0, 30, 13.3173446655],
                      [0, 0, 10.8602609634, 20], [7.7165775299, 0, 27.3875980377, 20]]),
    ]
    expected_logits = [
        torch.tensor([0.1225359365, -0.0133192837]),
        torch.tensor([0.1415634006, 0.0989848152, 0.0565387346, -0.0072308783, -0.0428492837]),
    ]
    for prop, boxes, logits in zip(proposals, expected_boxes, expected_logits):
        assert len(prop) == len(boxes)
        assert torch.allclose(prop.proposal_boxes, boxes)
        assert torch.allclose(prop.objectness_logits, logits)


def test_roi_heads_losses():
    """tests/modeling/test_roi_heads.py::ROIHeadsTest::test_roi_heads (commit
    1ba62f1cde55a541df949e1e792282855909783a): seed 121, default-config RPN, then ``StandardROIHeads`` with
    ``FastRCNNConvFCHead`` (2 fc of 1024 on 14x14 ``ROIAlignV2`` res4 features), 80 classes, box weights
    (10, 10, 5, 5) and the default mask head (no convs, deconv 256, 80 masks); RoI sampling 512 per image,
    a quarter positive, IoU 0.5.

    Our ``CascadeROIHeads`` with one stage is ``StandardROIHeads`` in training: stage 0 samples RoIs the same
    way, and the gradient scale 1 / stages is 1. Its losses carry a ``_stage0`` suffix. The fc1 layer
    (200704 x 1024) must be built at full size: its init draws from the RNG that later samples the RoIs.
    """
    torch.manual_seed(121)
    images = ImageList(torch.rand(2, 20, 30), [(10, 10), (20, 30)])
    features = {"res4": torch.rand(2, 1024, 1, 2)}
    gt0 = Instances((15, 15), gt_boxes=torch.tensor([[1, 1, 3, 3], [2, 2, 6, 6]], dtype=torch.float32),
                    gt_classes=torch.tensor([2, 1]))
    gt0.gt_masks = torch.rand((2, 15, 15)) > 0.5
    gt1 = Instances((15, 15), gt_boxes=torch.tensor([[1, 5, 2, 8], [7, 3, 10, 5]], dtype=torch.float32),
                    gt_classes=torch.tensor([1, 2]))
    gt1.gt_masks = torch.rand((2, 15, 15)) > 0.5

    rpn = _detectron2_default_rpn().train()
    box_head = FastRCNNConvFCHead(ShapeSpec(channels=1024, height=14, width=14), fc_dims=[1024, 1024])
    box_predictor = FastRCNNOutputLayers(box_head.output_shape, num_classes=80,
                                         box2box_transform=Box2BoxTransform((10, 10, 5, 5)))
    mask_head = MaskRCNNConvUpsampleHead(ShapeSpec(channels=1024), num_classes=80, conv_dims=[256])
    roi_heads = CascadeROIHeads(
        num_classes=80, box_in_features=["res4"], box_pooler=ROIPooler(14, [1 / 16], 0, "ROIAlignV2"),
        box_heads=[box_head], box_predictors=[box_predictor], proposal_matchers=[Matcher([0.5], [0, 1])],
        batch_size_per_image=512, positive_fraction=0.25, proposal_append_gt=True,
        mask_in_features=["res4"], mask_pooler=ROIPooler(14, [1 / 16], 0, "ROIAlignV2"), mask_head=mask_head,
    ).train()
    with torch.no_grad():
        proposals, losses = rpn(images, features, [gt0, gt1])
        _, detector_losses = roi_heads(images, features, proposals, [gt0, gt1])
    losses.update({k.replace("_stage0", ""): v for k, v in detector_losses.items()})
    expected = {
        "loss_cls": 4.5253729820251465,
        "loss_box_reg": 0.009785720147192478,
        "loss_mask": 0.693184494972229,
        "loss_rpn_cls": 0.08186662942171097,
        "loss_rpn_loc": 0.1104838103055954,
    }
    assert sorted(losses) == sorted(expected)
    for name, value in expected.items():
        assert torch.allclose(losses[name], torch.tensor(value)), (name, float(losses[name]), value)


def test_roi_heads_inf_nan_features_give_no_detections():
    """tests/modeling/test_model_e2e.py::MaskRCNNE2ETest::test_roiheads_inf_nan_data (commit
    3179e09a04716b97f630dde95f2fbc3313522cbe): RoI heads on all-inf or all-NaN p2-p5 maps (a 512 input)
    with one proposal (10, 10, 20, 20) return no detection. detectron2 runs its Mask R-CNN FPN heads; here
    ViTDet's three-stage cascade with LN convs and a mask head, at toy widths."""
    torch.manual_seed(0)
    levels, scales = ["p2", "p3", "p4", "p5"], [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    weights = [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]
    roi_heads = CascadeROIHeads(
        num_classes=80, box_in_features=levels, box_pooler=ROIPooler(7, scales),
        box_heads=[FastRCNNConvFCHead(ShapeSpec(256, 7, 7), conv_dims=[16], fc_dims=[32], conv_norm="LN")
                   for _ in weights],
        box_predictors=[FastRCNNOutputLayers(ShapeSpec(channels=32), box2box_transform=Box2BoxTransform(w),
                                             num_classes=80, cls_agnostic_bbox_reg=True,
                                             test_score_thresh=0.05)
                        for w in weights],
        proposal_matchers=[Matcher([t], [0, 1]) for t in (0.5, 0.6, 0.7)],
        mask_in_features=levels, mask_pooler=ROIPooler(14, scales),
        mask_head=MaskRCNNConvUpsampleHead(ShapeSpec(channels=256), num_classes=80, conv_dims=[16, 16],
                                           conv_norm="LN"),
    ).eval()
    for fill in (float("inf"), float("nan")):
        features = {f"p{k}": torch.full((1, 256, 512 // 2**k, 512 // 2**k), fill) for k in (2, 3, 4, 5)}
        proposals = [Instances((510, 510), proposal_boxes=torch.tensor([[10.0, 10, 20, 20]]),
                               objectness_logits=torch.tensor([1.0]))]
        with torch.no_grad():
            detections, _ = roi_heads(None, features, proposals)
        assert len(detections) == 1 and len(detections[0]) == 0, fill


def test_diou_and_ciou_losses_of_the_box_predictor():
    """tests/layers/test_losses.py::TestLosses::test_diou_loss and ::test_ciou_loss (commit
    405ef0d4f466fb6fbc28fd219b6d03d5befb045a), on the losses ``FastRCNNOutputLayers`` uses for
    ``box_reg_loss_type="diou"`` / ``"ciou"`` (torchvision's, where detectron2 has its own)."""
    from vitdet_eva.fast_rcnn import _BOX_IOU_LOSSES

    box, box2 = torch.tensor([[-1.0, -1, 1, 1]]), torch.tensor([[0.0, -1, 1, 1]])
    box3, box4 = torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[1.0, 1, 2, 2]])
    expected = {"diou": (0.53125, 1.25, 1.78125, 0.890625), "ciou": (0.5345, 1.25, 1.7845, 0.89225)}
    for name, (half, diagonal, total, mean) in expected.items():
        loss = _BOX_IOU_LOSSES[name]
        assert torch.allclose(loss(box, box, reduction="none"), torch.tensor([0.0])), name
        assert torch.allclose(loss(box, box2, reduction="none"), torch.tensor([half])), name
        assert torch.allclose(loss(box3, box4, reduction="none"), torch.tensor([diagonal])), name
        pairs = (torch.cat([box, box3]), torch.cat([box2, box4]))
        assert torch.allclose(loss(*pairs, reduction="sum"), torch.tensor(total)), name
        assert torch.allclose(loss(*pairs, reduction="mean"), torch.tensor(mean)), name
