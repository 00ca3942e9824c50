"""The segmentor as a LazyConfig tree: EVA encoder -> ViT-Adapter -> Mask2Former head + criterion.

``eva_g_mask2former(num_classes)`` is the EVA-01 release (docs/recipes/segmentation.md): EVA-g with
patch 16 at 896, drop path 0.5, activation checkpointing; adapter conv stem 64, 16 deformable
heads, 4 points, cffn 0.25, deform ratio 0.5, interactions [[0, 9], [10, 19], [20, 29], [30, 39]];
head width 1024, 200 queries, 6 pixel-decoder layers (32 heads, FFN 4096), 8 decoder layers;
losses class 2 / mask 5 / dice 5, no-object 0.1, 12544 points (oversample 3, importance 0.75);
slide inference 896 / 512.
"""
from eva_core.config import LazyCall as L
from eva_core.models import create_model
from mask2former_eva.mask2former_head import Mask2FormerHead
from mask2former_eva.segmentor import EncoderDecoderMask2Former, build_criterion
from mask2former_eva.vit_adapter import EVAAdapter


def mask2former(num_classes, *, encoder_name, encoder, adapter, head, criterion, test):
    """``EncoderDecoderMask2Former`` from keyword groups (each a plain dict, editable in configs)."""
    width = encoder["embed_dim"] if "embed_dim" in encoder else None
    return L(EncoderDecoderMask2Former)(
        backbone=L(EVAAdapter)(
            encoder=L(create_model)(name=encoder_name, num_classes=0, global_pool="",
                                    use_post_transformer_norm=False, **encoder),
            **adapter),
        decode_head=L(Mask2FormerHead)(in_channels=[width] * 4, num_classes=num_classes, **head),
        criterion=L(build_criterion)(num_classes=num_classes, num_aux=head["decoder_layers"], **criterion),
        **test)


def eva_g_mask2former(num_classes, img_size=896):
    """The release's EVA-g ViT-Adapter + Mask2Former for ``num_classes`` classes."""
    return mask2former(
        num_classes, encoder_name="eva_giant_patch16_224",
        encoder=dict(img_size=img_size, embed_dim=1408, drop_path_rate=0.5),
        adapter=dict(interaction_indexes=[[0, 9], [10, 19], [20, 29], [30, 39]], conv_inplane=64, n_points=4,
                     deform_num_heads=16, init_values=0.0, cffn_ratio=0.25, deform_ratio=0.5,
                     drop_path_rate=0.5, grad_checkpointing=True),
        head=dict(feat_channels=1024, out_channels=1024, num_queries=200, pixel_decoder_layers=6,
                  pixel_decoder_heads=32, pixel_decoder_ffn=4096, num_points=4, decoder_layers=8,
                  decoder_heads=32, decoder_ffn=4096, num_groups=32, dropout=0.0),
        criterion=dict(class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1,
                       num_points=12544, oversample_ratio=3.0, importance_sample_ratio=0.75),
        test=dict(test_mode="slide", crop_size=img_size, stride=512, test_scales=[1.0], test_flip=False))
