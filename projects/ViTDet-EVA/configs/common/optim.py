"""AdamW with EVA's layer-wise lr decay over the ViT blocks (detectron2 ViTDet's ``get_vit_lr_decay_rate``).

Layer ids: ``backbone.net.{pos_embed, patch_embed}`` 0, ``backbone.net.blocks.i`` i + 1, everything else
(pyramid, RPN, RoI heads) L + 1; the lr of a group is scaled by ``layer_decay ** (L + 1 - id)``. As in
ViTDet, ``pos_embed`` gets no weight decay (nor do norms and biases). The engine fills in
``optimizer.params.model``. EVA: lr 2.5e-5 (COCO / LVIS) or 1e-4 (Objects365), weight decay 0.1,
layer decay 0.9 over the 40 blocks (docs/recipes/detection.md).
"""
import torch

from eva_core.config import LazyCall as L
from eva_core.optim.layer_decay import param_groups_layer_decay

AdamW = L(torch.optim.AdamW)(
    params=L(param_groups_layer_decay)(
        model=None,
        weight_decay=0.1,
        layer_decay=0.9,
        no_weight_decay_list=["backbone.net.pos_embed"],
    ),
    lr=2.5e-5,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.1,
)
