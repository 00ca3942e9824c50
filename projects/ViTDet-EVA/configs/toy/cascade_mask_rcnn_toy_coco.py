"""Toy ViTDet-EVA: the EVA-g recipe's detector at toy width on the toy world's COCO set, on a CPU.

The same tree as ``COCO/cascade_mask_rcnn_vitdet_eva.py`` (same keys, same module layout, levels
p2-p6 at strides 4-64) with a tiny encoder (the toy MIM encoder's width: 64 wide, 2 blocks, 4 heads,
MLP ratio 2; patch 16 on 128 px images gives an 8 x 8 token grid; block 0 windowed 4 x 4, block 1
global), a 32-channel pyramid and heads, anchors 8-128 px for the toy shapes, milder jitter
(scale 0.8-1.25), fewer RoIs and a higher learning rate (3e-3: a short CPU run from scratch; measured
in docs/recipes/detection.md#toy-world-proof). Data::

    python tools/make_toy_world.py --out datasets/toy_world --formats coco lvis
    python tools/lazyconfig_train_net.py \\
        --config-file projects/ViTDet-EVA/configs/toy/cascade_mask_rcnn_toy_coco.py

Metrics land nested in ``metrics.json`` (``eval/bbox/AP``, ``eval/segm/AP``); ``--eval-only
train.init_checkpoint=output/toy_vitdet_coco/model_final.pth`` writes ``coco_instances_results.json``.
"""
from vitdet_eva import ShapeSpec

from ..COCO.cascade_mask_rcnn_vitdet_eva import dataloader, lr_multiplier, model, optimizer, train

image_size = 128
data_root = "datasets/toy_world/coco"
dim, channels, fc_dim = 64, 32, 64

_net = model.backbone.net
_net.img_size = image_size
_net.pretrain_img_size = image_size  # pos_embed stored for the 8 x 8 grid (the toy MIM encoder's)
_net.embed_dim, _net.depth, _net.num_heads, _net.mlp_ratio = dim, 2, 4, 2.0
_net.window_size = 4
_net.window_block_indexes = [0]
_net.drop_path_rate = 0.0
_net.use_act_checkpoint = False
_net.freeze_patch_embed = False  # trained from scratch here (ViTDet freezes a pre-trained one)
model.backbone.square_pad = image_size
model.backbone.out_channels = channels

_rpn = model.proposal_generator
_rpn.head.in_channels = channels
_rpn.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
_rpn.pre_nms_topk = (500, 500)
_rpn.post_nms_topk = (200, 100)

_heads = model.roi_heads
_heads.batch_size_per_image = 64
for _box_head in _heads.box_heads:
    _box_head.input_shape = ShapeSpec(channels=channels, height=7, width=7)
    _box_head.conv_dims = [channels] * 4
    _box_head.fc_dims = [fc_dim]
for _predictor in _heads.box_predictors:
    _predictor.input_shape = ShapeSpec(channels=fc_dim)
_heads.mask_head.input_shape = ShapeSpec(channels=channels, width=14, height=14)
_heads.mask_head.conv_dims = [channels] * 5

dataloader.train.dataset.dicts.json_file = f"{data_root}/annotations/instances_train2017.json"
dataloader.train.dataset.dicts.image_root = f"{data_root}/train2017"
dataloader.train.dataset.mapper.image_size = image_size
# the toy shapes are 10-26 px, at one scale in val: milder jitter learns faster in a short run
# (measured, patch-8 variant at lr 3e-3, 150 steps: box AP50 19.0 at 0.5-1.5, 21.7 at 0.8-1.25)
dataloader.train.dataset.mapper.min_scale = 0.8
dataloader.train.dataset.mapper.max_scale = 1.25
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 0
dataloader.test.dataset.dicts.json_file = f"{data_root}/annotations/instances_val2017.json"
dataloader.test.dataset.dicts.image_root = f"{data_root}/val2017"
dataloader.test.dataset.mapper.image_size = image_size
dataloader.test.batch_size = 8
dataloader.test.num_workers = 0

# measured (patch-8 variant, 150 steps): lr 1e-3 box AP50 11.1, 3e-3 19.0, 6e-3 10.3
optimizer.lr = 3e-3
optimizer.params.layer_decay = 1.0  # from scratch: no layer decay
optimizer.weight_decay = 0.05
optimizer.params.weight_decay = 0.05

lr_multiplier.steps = []  # constant after warmup: any train.max_iter override works
lr_multiplier.warmup_iters = 20

train.output_dir = "./output/toy_vitdet_coco"
train.init_checkpoint = ""
train.max_iter = 300
train.eval_period = 300
train.log_period = 20
train.checkpointer.period = 300
train.amp.enabled = False
train.device = "cpu"
train.seed = 0

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
