"""ViTDet's Cascade Mask R-CNN on EVA-g: ``model`` with detectron2's LazyConfig keys.

detectron2's ``common/models/mask_rcnn_vitdet.py`` + ``cascade_mask_rcnn_vitdet.py`` tree: RPN with two
convs, three cascade stages (IoU 0.5 / 0.6 / 0.7, regression weights (10, 10, 5, 5) / (20, 20, 10, 10) /
(30, 30, 15, 15), class-agnostic), 4conv1fc box heads and a 4-conv mask head with LayerNorm, RGB input
normalised on the 0-255 scale (docs/recipes/detection.md). A detectron2 user's overrides apply
unchanged, e.g. ``model.roi_heads.num_classes=3 model.backbone.net.drop_path_rate=0.1``.
"""
from eva_core.config import LazyCall as L
from vitdet_eva import (
    Box2BoxTransform,
    CascadeROIHeads,
    DefaultAnchorGenerator,
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead,
    Matcher,
    ROIPooler,
    RPN,
    ShapeSpec,
    StandardRPNHead,
)
from vitdet_eva.meta_arch import GeneralizedRCNN

from ..backbone import model as _backbone

model = L(GeneralizedRCNN)(
    backbone=_backbone.backbone,
    proposal_generator=L(RPN)(
        in_features=["p2", "p3", "p4", "p5", "p6"],
        head=L(StandardRPNHead)(in_channels=256, num_anchors=3, conv_dims=[-1, -1]),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[32], [64], [128], [256], [512]],
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32, 64],
            offset=0.0,
        ),
        anchor_matcher=L(Matcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(2000, 1000),
        post_nms_topk=(1000, 1000),
        nms_thresh=0.7,
    ),
    roi_heads=L(CascadeROIHeads)(
        num_classes=80,
        batch_size_per_image=512,
        positive_fraction=0.25,
        box_in_features=["p2", "p3", "p4", "p5"],
        box_pooler=L(ROIPooler)(output_size=7, scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32),
                                sampling_ratio=0, pooler_type="ROIAlignV2"),
        box_heads=[
            L(FastRCNNConvFCHead)(input_shape=ShapeSpec(channels=256, height=7, width=7),
                                  conv_dims=[256, 256, 256, 256], fc_dims=[1024], conv_norm="LN")
            for _ in range(3)
        ],
        box_predictors=[
            L(FastRCNNOutputLayers)(
                input_shape=ShapeSpec(channels=1024),
                test_score_thresh=0.05,
                test_nms_thresh=0.5,
                test_topk_per_image=100,
                box2box_transform=L(Box2BoxTransform)(weights=(w1, w1, w2, w2)),
                cls_agnostic_bbox_reg=True,
                num_classes="${...num_classes}",
            )
            for (w1, w2) in [(10, 5), (20, 10), (30, 15)]
        ],
        proposal_matchers=[
            L(Matcher)(thresholds=[th], labels=[0, 1], allow_low_quality_matches=False)
            for th in [0.5, 0.6, 0.7]
        ],
        mask_in_features=["p2", "p3", "p4", "p5"],
        mask_pooler=L(ROIPooler)(output_size=14, scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32),
                                 sampling_ratio=0, pooler_type="ROIAlignV2"),
        mask_head=L(MaskRCNNConvUpsampleHead)(
            input_shape=ShapeSpec(channels=256, width=14, height=14),
            num_classes="${..num_classes}",
            conv_dims=[256, 256, 256, 256, 256],
            conv_norm="LN",
        ),
    ),
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
)
