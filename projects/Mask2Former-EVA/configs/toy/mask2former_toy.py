"""Toy segmentation recipe: the EVA-g recipe's structure on a tiny model and the toy ADE20K set.

Same pieces as ``ADE20K/mask2former_eva_g_896.py`` (EVA encoder -> ViT-Adapter -> Mask2Former head,
Hungarian matching with point-sampled mask losses, AdamW + layer decay, poly schedule, mmseg's
augmentation with a 0.5-2.0 resize, ``cat_max_ratio`` crop, flip and photometric distortion),
scaled to run on a CPU in about a minute. The encoder is the toy MIM student of
``configs/pretrain/toy.py`` (64 wide, 2 blocks, 4 heads, MLP ratio 2) with patch 16 instead of 4: at
128 px its grid is the 8 x 8 of the MIM model at 32 px, and eva_core's loader resamples the 4 x 4
patch kernel of a MIM checkpoint to 16 x 16. Start from it with ``train.init_checkpoint=PATH``::

    python tools/make_toy_world.py --out datasets/toy_world --formats ade20k
    python tools/lazyconfig_train_net.py \\
        --config-file projects/Mask2Former-EVA/configs/toy/mask2former_toy.py

Data: the toy world's ADE20K-format set (class = shape type, 5 classes; background is ADE's
"other", ignored through reduce-zero-label). ``tests/test_mask2former_toy_proof.py`` measures it.
"""
from eva_core.config import LazyCall as L
from eva_core.data import toy_world
from mask2former_eva.data import ade20k_dataset

from ..common.data import sem_seg_loaders
from ..common.model import mask2former
from ..common.optim import AdamW, poly
from configs.common.train import train

num_classes = len(toy_world.SHAPES)
crop_size = 128
data_root = "datasets/toy_world/ade20k"
# the toy MIM encoder (configs/pretrain/toy.py) with patch 16, so its checkpoint loads key for key
arch = dict(embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0)

model = mask2former(
    num_classes, encoder_name="eva_tiny_patch16_224",
    encoder=dict(img_size=crop_size, drop_path_rate=0.0, **arch),
    # two blocks: one interaction per block, no per-output ViT maps (they need 4 interactions)
    adapter=dict(interaction_indexes=[[0, 0], [1, 1]], add_vit_feature=False, conv_inplane=16, n_points=4,
                 deform_num_heads=4, init_values=0.0, cffn_ratio=0.25, deform_ratio=0.5),
    head=dict(feat_channels=64, out_channels=64, num_queries=16, pixel_decoder_layers=2,
              pixel_decoder_heads=4, pixel_decoder_ffn=128, num_points=4, decoder_layers=3, decoder_heads=4,
              decoder_ffn=128, num_groups=8, dropout=0.0),
    criterion=dict(class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1, num_points=1024,
                   oversample_ratio=3.0, importance_sample_ratio=0.75),
    test=dict(test_mode="whole", test_scales=[1.0], test_flip=False))

dataloader = sem_seg_loaders(
    L(ade20k_dataset)(root=f"{data_root}", split="training", class_names=list(toy_world.SHAPES)),
    L(ade20k_dataset)(root=f"{data_root}", split="validation", class_names=list(toy_world.SHAPES)),
    num_classes, toy_world.SHAPES, crop_size=crop_size, scale=(4 * crop_size, crop_size), test_scale=None,
    total_batch_size=8, num_workers=0)
dataloader["test"].batch_size = 10

optimizer = AdamW
optimizer.lr = 5e-4
optimizer.params.layer_decay = 0.95
lr_multiplier = poly
lr_multiplier.warmup_iters = 10
lr_multiplier.warmup_factor = 1e-3

train = dict(train)
train.update(output_dir="./output/mask2former_toy", max_iter=100, eval_period=100, log_period=20, seed=0,
             device="cpu", init_checkpoint="")
train["amp"] = dict(train["amp"], enabled=False)  # CPU fp32
train["checkpointer"] = dict(train["checkpointer"], period=100, format="safetensors")
