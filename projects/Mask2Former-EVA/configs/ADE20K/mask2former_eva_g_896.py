"""EVA-g ViT-Adapter + Mask2Former on ADE20K (150 classes), crop 896, from the COCO-Stuff model:
61.5 mIoU single-scale (62.3 multi-scale) in the paper.

docs/recipes/segmentation.md: lr 2.5e-5, 20k iterations, warmup 500, batch 64, AdamW wd 0.05,
layer decay 0.95, poly (power 1), slide inference 896 / 512; initialised from the COCO-Stuff model
(``configs/COCO-Stuff/mask2former_eva_g_896.py``), whose 171-way class layer is not loaded (the
load line lists it). Data: ``datasets/ADEChallengeData2016`` (reduce-zero-label).
Multi-scale + flip test: ``model.test_scales=[0.5,0.75,1.0,1.25,1.5,1.75] model.test_flip=True``::

    python tools/lazyconfig_train_net.py --num-gpus 8 \\
        --config-file projects/Mask2Former-EVA/configs/ADE20K/mask2former_eva_g_896.py
"""
from eva_core.config import LazyCall as L
from mask2former_eva.data import ADE20K_CLASSES, ade20k_dataset

from ..common.data import sem_seg_loaders
from ..common.model import eva_g_mask2former
from ..common.optim import AdamW, poly
from configs.common.train import train

num_classes = 150
crop_size = 896
data_root = "datasets/ADEChallengeData2016"

model = eva_g_mask2former(num_classes, img_size=crop_size)

dataloader = sem_seg_loaders(
    L(ade20k_dataset)(root=data_root, split="training"),
    L(ade20k_dataset)(root=data_root, split="validation"),
    num_classes, ADE20K_CLASSES, crop_size=crop_size, scale=(4 * crop_size, crop_size),
    test_scale=(4 * crop_size, crop_size), total_batch_size=64, num_workers=4)

optimizer = AdamW
optimizer.lr = 2.5e-5
lr_multiplier = poly
lr_multiplier.warmup_iters = 500

train = dict(train)
train.update(output_dir="./output/mask2former_eva_g_ade20k_896",
             init_checkpoint="./output/mask2former_eva_g_coco_stuff_896/model_final.pth",
             max_iter=20000, eval_period=4000, log_period=50, seed=0)
train["amp"] = dict(train["amp"], enabled=True, dtype="bfloat16")
train["checkpointer"] = dict(train["checkpointer"], period=2000, max_to_keep=3)
