"""Toy EVA MIM recipe: a tiny EVA student regresses a tiny frozen teacher's patch features on CPU.

The teacher is an eva_core classifier trained on the toy world (``tools/eva_toy_pipeline.py``
trains it and writes ``teacher_checkpoint``); the student sees 32x32 crops on an 8x8 patch grid
with 26 block-masked patches (~40%, as EVA's 105/256)::

    python tools/lazyconfig_train_net.py --config-file configs/pretrain/toy.py \\
        dataloader.train.dataset.dataset.root=OUT/toy_world/imagefolder_color/train \\
        model.teacher.checkpoint=OUT/teacher.safetensors
"""
import torch

from eva_core.config import LazyCall as L
from eva_core.data import ImageFolderDataset, build_train_loader
from eva_core.mim import BlockMaskGenerator, EvaMIM, EvaTeacher, MaskedImageDataset, MIMTransform
from eva_core.models import create_model
from eva_core.optim.layer_decay import param_groups_layer_decay
from eva_core.optim.schedulers import cosine_with_warmup

from ..common.train import train

image_size = 32
patch_size = 4
grid = image_size // patch_size  # 8 x 8
num_classes = 8  # teacher classes (toy world colours)
arch = dict(img_size=image_size, patch_size=patch_size, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0)
data_root = "output/eva_toy_pipeline/toy_world/imagefolder_color/train"
teacher_checkpoint = "output/eva_toy_pipeline/teacher.safetensors"

model = L(EvaMIM)(
    encoder=L(create_model)(name="eva_tiny_patch16_224", num_classes=0, use_mask_token=True,
                            use_fc_norm=False, global_pool="token", **arch),
    teacher=L(EvaTeacher)(model="eva_tiny_patch16_224",
                          model_overrides=dict(num_classes=num_classes, **arch),
                          checkpoint=teacher_checkpoint, precision="fp32"),
)

dataloader = dict(
    train=L(build_train_loader)(
        dataset=L(MaskedImageDataset)(
            dataset=L(ImageFolderDataset)(
                root=data_root,
                transform=L(MIMTransform)(img_size=image_size, scale=(0.2, 1.0), interpolation="bilinear"),
            ),
            mask_generator=L(BlockMaskGenerator)(input_size=grid, num_masking_patches=26, min_num_patches=4),
        ),
        total_batch_size=32,
        num_workers=0,
        seed=0,
    ),
)

optimizer = L(torch.optim.AdamW)(
    params=L(param_groups_layer_decay)(model=None, weight_decay=0.05, layer_decay=None),
    lr=1.5e-3,
    betas=(0.9, 0.98),
    eps=1e-6,
    weight_decay=0.05,
)
lr_multiplier = L(cosine_with_warmup)(warmup_fraction=0.1, warmup_factor=1e-3, min_ratio=0.01)

train.output_dir = "output/eva_toy_pipeline/mim"
train.max_iter = 250
train.clip_grad = 3.0
train.checkpointer.period = 250
train.checkpointer.format = "safetensors"
train.eval_period = 0
train.log_period = 10
train.device = "cpu"
train.seed = 0
