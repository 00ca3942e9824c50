"""EVA-g ViTDet backbone: ``model.backbone = SimpleFeaturePyramid(net=ViT(...))`` with detectron2's keys.

Numbers: docs/recipes/detection.md (backbone, simple feature pyramid). Overrides read as in
detectron2, e.g. ``model.backbone.net.drop_path_rate=0.4`` or ``model.backbone.net.img_size=1536``.
"""
from omegaconf import OmegaConf

from eva_core.config import LazyCall as L
from vitdet_eva import LastLevelMaxPool, SimpleFeaturePyramid, ViT

embed_dim, depth, num_heads, mlp_ratio, image_size = 1408, 40, 16, 6144 / 1408, 1280

model = OmegaConf.create()
model.backbone = L(SimpleFeaturePyramid)(
    net=L(ViT)(
        img_size=image_size,
        patch_size=16,  # from the 14 -> 16 converted EVA file (docs/recipes/encoder.md)
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=True,
        drop_path_rate=0.6,
        window_size=16,
        # global attention in blocks 3, 7, ..., 39; window attention everywhere else
        window_block_indexes=[i for i in range(depth) if i % 4 != 3],
        residual_block_indexes=[],
        use_abs_pos=True,
        use_rel_pos=True,
        rel_pos_zero_init=True,
        use_act_checkpoint=True,
        pretrain_img_size=224,
        pretrain_use_cls_token=True,
        freeze_patch_embed=True,
        out_feature="last_feat",
    ),
    in_feature="${.net.out_feature}",
    out_channels=256,
    scale_factors=(4.0, 2.0, 1.0, 0.5),
    top_block=L(LastLevelMaxPool)(),
    norm="LN",
    square_pad=image_size,
)
