"""AdamW with layer-wise lr decay (EVA / BEiT fine-tuning).

The engine fills ``optimizer.params.model`` with the built model before instantiating.
"""
import torch

from eva_core.config import LazyCall as L
from eva_core.optim.layer_decay import param_groups_layer_decay

AdamW = L(torch.optim.AdamW)(
    params=L(param_groups_layer_decay)(
        model=None,
        weight_decay=0.05,
        layer_decay=0.75,
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.05,
)
