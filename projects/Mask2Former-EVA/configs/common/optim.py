"""AdamW with layer decay and mmseg's poly schedule with linear warmup (EVA segmentation).

AdamW (0.9, 0.999, 1e-8), weight decay 0.05, layer decay 0.95 over the 40 EVA-g blocks (stem 0,
block i -> i + 1, adapter and head at full lr), lr ``1 - progress`` (power 1) after a linear warmup
from 1e-6 of the lr (mmseg's ``warmup_ratio``).
"""
import torch

from eva_core.config import LazyCall as L
from eva_core.optim.layer_decay import param_groups_layer_decay
from eva_core.optim.schedulers import poly_with_warmup

AdamW = L(torch.optim.AdamW)(
    params=L(param_groups_layer_decay)(model=None, weight_decay=0.05, layer_decay=0.95),
    lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)

poly = L(poly_with_warmup)(max_iter="${train.max_iter}", power=1.0, warmup_iters=1500, warmup_factor=1e-6)
