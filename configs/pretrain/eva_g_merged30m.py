"""EVA-g MIM pre-training on merged-30M (paper Table 3; docs/recipes/pretrain.md).

Student: EVA-g/14 (1408 wide, 40 blocks) with mask token, final LayerNorm and lm_head 1408->768
(1,012,229,632 parameters). Teacher: OpenAI CLIP-L/14 at 224, frozen, fp16; target = its 256
patch tokens after ln_post times the visual projection. Loss: negative cosine over the 105
block-masked patches. Point ``teacher_weights`` at your copy of OpenAI's ViT-L-14 weights and
``data_list`` at a "path label" list of the merged-30M images (labels are ignored)::

    python tools/lazyconfig_train_net.py --config-file configs/pretrain/eva_g_merged30m.py \\
        --num-gpus 8 --num-machines 16 ... model.teacher.weights=/path/ViT-L-14.pt

Parameters and FLOPs without allocating weights::

    with torch.device("meta"):
        model = instantiate(cfg.model)
    eva_core.mim.pretraining_cost(model)
"""
import torch

from eva_core.config import LazyCall as L
from eva_core.data import FileListDataset, build_train_loader
from eva_core.mim import BlockMaskGenerator, ClipTeacher, EvaMIM, MaskedImageDataset, MIMTransform
from eva_core.models import create_model
from eva_core.optim.layer_decay import param_groups_layer_decay
from eva_core.optim.schedulers import cosine_with_warmup

from ..common.train import train

# ---------------------------------------------------------------- numbers of the recipe
image_size = 224
patch_size = 14
grid = image_size // patch_size  # 16 x 16 = 256 patches
num_masking_patches = 105  # ~40%
num_images = 29_600_000  # merged-30M: IN-21K, CC12M, CC3M, Object365, COCO, ADE20K
total_batch_size = 4096  # 128 GPUs x 32
epochs = 150
warmup_epochs = 2
iters_per_epoch = num_images // total_batch_size  # 7226
max_iter = epochs * iters_per_epoch  # 1,083,900
base_lr = 1e-3
warmup_lr = 1e-6
min_lr = 1e-5

data_list = "datasets/merged30m/train_list.txt"
data_root = "datasets/merged30m"
teacher_weights = "pretrained/openai_clip_vit_l14.pt"

model = L(EvaMIM)(
    encoder=L(create_model)(name="eva_giant_patch14_mim_224", drop_path_rate=0.1),
    teacher=L(ClipTeacher)(model_name="ViT-L-14", weights=teacher_weights, quick_gelu=True,
                           precision="fp16"),
)

dataloader = dict(
    train=L(build_train_loader)(
        dataset=L(MaskedImageDataset)(
            dataset=L(FileListDataset)(
                list_file=data_list, root=data_root,
                # the same crop and flip for student and teacher; CLIP mean/std; no colour jitter
                transform=L(MIMTransform)(img_size=image_size, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                                          hflip=0.5, interpolation="bicubic"),
            ),
            mask_generator=L(BlockMaskGenerator)(input_size=grid, num_masking_patches=num_masking_patches,
                                                 min_num_patches=16, max_num_patches=None,
                                                 min_aspect=0.3, max_aspect=1 / 0.3),
        ),
        total_batch_size=total_batch_size,
        num_workers=10,
        seed=0,
    ),
)

# AdamW; no decay for 1-D params, biases, pos_embed, cls_token, mask_token (model.no_weight_decay)
optimizer = L(torch.optim.AdamW)(
    params=L(param_groups_layer_decay)(model=None, weight_decay=0.05, layer_decay=None),
    lr=base_lr,
    betas=(0.9, 0.98),
    eps=1e-6,
    weight_decay=0.05,
)

# per-step cosine 1e-3 -> 1e-5 after a linear warmup of 2 epochs from 1e-6
lr_multiplier = L(cosine_with_warmup)(
    max_iter=max_iter,
    warmup_iters=warmup_epochs * iters_per_epoch,
    warmup_factor=warmup_lr / base_lr,
    min_ratio=min_lr / base_lr,
)

train.output_dir = "./output/eva_g_mim_merged30m"
train.max_iter = max_iter
train.clip_grad = 3.0
# fp16 with dynamic loss scaling: init 2^16, window 500, hysteresis 2, min scale 1 (train.amp.loss_scale)
train.amp.enabled = True
train.amp.dtype = "float16"
train.zero_stage = 1
train.checkpointer.period = 5 * iters_per_epoch
train.eval_period = 0
train.log_period = 50
train.seed = 0
# the same recipe through DeepSpeed (as the release trained it): set train.deepspeed = deepspeed
deepspeed = dict(
    train_micro_batch_size_per_gpu=32,
    gradient_clipping=3.0,
    zero_optimization=dict(stage=1),
    fp16=dict(enabled=True, initial_scale_power=16, loss_scale_window=500, hysteresis=2,
              min_loss_scale=1),
)
