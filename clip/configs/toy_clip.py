"""Toy EVA-CLIP recipe: a tiny EVA-CLIP trained contrastively on the toy world's captions, on CPU,
and evaluated zero-shot on the toy colour ImageFolder (``docs/recipes/clip.md#toy-eva-clip``).

Data: ``python tools/make_toy_world.py --out datasets/toy_world`` writes
``captions/shards/captions-{000000..000003}.tar`` (webdataset, ``key.jpg`` + ``key.txt``: "a red circle
and a blue square") and ``imagefolder_color/val/<colour>/``. Zero-shot prompts are
"a photo of a {colour} shape."; class names are the toy colours in label order (the sorted folder
names, as ``ImageFolderDataset`` assigns labels)::

    python tools/lazyconfig_train_net.py --config-file clip/configs/toy_clip.py \\
        dataloader.train.dataset.urls='DIR/captions/shards/captions-{000000..000003}.tar' \\
        dataloader.test.dataset.root=DIR/imagefolder_color/val

The csv form of the same data: ``dataloader.train.dataset=L(CaptionCsvDataset)(csv_file=...)``.
"""
import copy

import torch

from clip.data import CaptionWebDataset
from clip.model import create_eva_clip, get_tokenizer
from clip.zero_shot import ZeroShotClassifier
from configs.common.schedule import cosine
from configs.common.train import train as _train
from eva_core.config import LazyCall as L
from eva_core.data import ImageFolderDataset, build_test_loader, build_train_loader, build_transform
from eva_core.data.toy_world import COLORS
from eva_core.evaluation import ClassificationEvaluator
from eva_core.optim.layer_decay import param_groups_layer_decay

image_size = 32
data_root = "datasets/toy_world"
# ImageFolderDataset labels classes by sorted folder name
classnames = sorted(COLORS)

model = L(ZeroShotClassifier)(
    model=L(create_eva_clip)(
        name="eva_clip_tiny",
        vision_cfg=dict(img_size=image_size, patch_size=8),
        # on several ranks: every rank's features with their gradients, each rank scoring its own
        # samples (the full-batch gradient: docs/recipes/clip.md); nothing changes on one process
        local_loss=True,
        gather_with_grad=True,
    ),
    classnames=classnames,
    templates=["a photo of a {} shape."],
)

dataloader = dict(
    train=L(build_train_loader)(
        dataset=L(CaptionWebDataset)(
            urls=f"{data_root}/captions/shards/captions-{{000000..000003}}.tar",
            # mild crops and no flip: captions name every shape, left to right
            transform=L(build_transform)(is_train=True, img_size=image_size, scale=(0.8, 1.0), hflip=0.0,
                                         interpolation="bilinear"),
            tokenizer=L(get_tokenizer)(context_length=77),
        ),
        total_batch_size=32,
        num_workers=0,
        seed=0,
    ),
    test=L(build_test_loader)(
        dataset=L(ImageFolderDataset)(
            root=f"{data_root}/imagefolder_color/val",
            transform=L(build_transform)(is_train=False, img_size=image_size, crop_pct=1.0,
                                         interpolation="bilinear"),
        ),
        batch_size=64,
        num_workers=0,
    ),
    evaluator=L(ClassificationEvaluator)(topk=(1, 5)),
)

optimizer = L(torch.optim.AdamW)(
    params=L(param_groups_layer_decay)(model=None, weight_decay=0.05, layer_decay=1.0),
    lr=1e-3,
    betas=(0.9, 0.98),  # CLIP's beta2
    eps=1e-6,
    weight_decay=0.05,
)
lr_multiplier = copy.deepcopy(cosine)
lr_multiplier.warmup_fraction = 0.1

train = copy.deepcopy(_train)
train.update(output_dir="./output/toy_clip", max_iter=300, eval_period=300, log_period=25, seed=0,
             device="cpu")
train["checkpointer"]["period"] = 300
