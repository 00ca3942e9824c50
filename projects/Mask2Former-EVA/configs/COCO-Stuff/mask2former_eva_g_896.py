"""EVA-g ViT-Adapter + Mask2Former on COCO-Stuff-164K (171 classes), crop 896: 53.4 mIoU in the paper.

docs/recipes/segmentation.md: init ``eva_psz14to16.pt`` (the EVA-g encoder with patch 16), lr 1.5e-5,
60k iterations, warmup 1500, batch 32, AdamW wd 0.05, layer decay 0.95, poly (power 1), slide
inference 896 / 512. Data: ``datasets/coco_stuff164k/{images,annotations}/{train2017,val2017}``
(the ``*_labelTrainIds.png`` maps of mmseg's converter)::

    python tools/lazyconfig_train_net.py --num-gpus 8 \\
        --config-file projects/Mask2Former-EVA/configs/COCO-Stuff/mask2former_eva_g_896.py \\
        train.init_checkpoint=eva_psz14to16.pt
"""
from eva_core.config import LazyCall as L
from mask2former_eva.data import COCO_STUFF_CLASSES, coco_stuff164k_dataset

from ..common.data import sem_seg_loaders
from ..common.model import eva_g_mask2former
from ..common.optim import AdamW, poly
from configs.common.train import train

num_classes = 171
crop_size = 896
data_root = "datasets/coco_stuff164k"

model = eva_g_mask2former(num_classes, img_size=crop_size)

dataloader = sem_seg_loaders(
    L(coco_stuff164k_dataset)(root=data_root, split="train2017"),
    L(coco_stuff164k_dataset)(root=data_root, split="val2017"),
    num_classes, COCO_STUFF_CLASSES, crop_size=crop_size, scale=(4 * crop_size, crop_size),
    test_scale=(4 * crop_size, crop_size), total_batch_size=32, num_workers=4)

optimizer = AdamW
optimizer.lr = 1.5e-5
lr_multiplier = poly
lr_multiplier.warmup_iters = 1500

train = dict(train)  # a copy: the shared defaults stay untouched
train.update(output_dir="./output/mask2former_eva_g_coco_stuff_896", init_checkpoint="eva_psz14to16.pt",
             max_iter=60000, eval_period=8000, log_period=50, seed=0)
train["amp"] = dict(train["amp"], enabled=True, dtype="bfloat16")
train["checkpointer"] = dict(train["checkpointer"], period=4000, max_to_keep=3)
