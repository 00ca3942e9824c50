"""Toy classification recipe: a tiny EVA (64 wide, 2 blocks) trained from scratch on CPU.

Data: the toy world's colour ImageFolder (class = colour of the one drawn shape;
``python tools/make_toy_world.py --out datasets/toy_world`` writes
``datasets/toy_world/imagefolder_color/{train,val}/<colour>/``), or any other class-folder set::

    python tools/lazyconfig_train_net.py --config-file configs/classification/toy_imagefolder.py \\
        dataloader.train.dataset.root=DIR/train dataloader.test.dataset.root=DIR/val \\
        model.net.num_classes=4

150 iterations of batch 32 take about 10 s on one CPU core and reach ~100% val top-1 on the
colour set (tests/test_train_net.py). The toy world's shape set (``imagefolder``, class = shape
type) is not learned within a CPU-minute budget: with patch_size 4, depth 2-4, lr 1e-3-2e-3, crop
scale (0.6-1.0, 1.0) and 400-600 iterations, val top-1 stayed at 20-31% (a small CNN: 40%).
"""
from eva_core.classification import ImageClassifier
from eva_core.config import LazyCall as L
from eva_core.data import ImageFolderDataset, build_test_loader, build_train_loader, build_transform
from eva_core.evaluation import ClassificationEvaluator
from eva_core.models import create_model

from ..common.optim import AdamW as optimizer
from ..common.schedule import cosine as lr_multiplier
from ..common.train import train

image_size = 32
num_classes = 8  # toy-world colours
data_root = "datasets/toy_world/imagefolder_color"

model = L(ImageClassifier)(
    net=L(create_model)(
        name="eva_tiny_patch16_224",
        img_size=image_size,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=4,
        global_pool="avg",
        num_classes=num_classes,
    ),
)

dataloader = dict(
    train=L(build_train_loader)(
        dataset=L(ImageFolderDataset)(
            root=f"{data_root}/train",
            transform=L(build_transform)(is_train=True, img_size=image_size, scale=(0.6, 1.0),
                                         interpolation="bilinear"),
        ),
        total_batch_size=32,
        num_workers=0,
        seed=0,
    ),
    test=L(build_test_loader)(
        dataset=L(ImageFolderDataset)(
            root=f"{data_root}/val",
            transform=L(build_transform)(is_train=False, img_size=image_size, crop_pct=1.0,
                                         interpolation="bilinear"),
        ),
        batch_size=64,
        num_workers=0,
    ),
    evaluator=L(ClassificationEvaluator)(topk=(1,)),
)

optimizer.lr = 2e-3
optimizer.params.layer_decay = 1.0  # tiny model trained from scratch: no layer decay
lr_multiplier.warmup_fraction = 0.1

train.output_dir = "./output/toy_imagefolder"
train.max_iter = 150
train.eval_period = 150
train.log_period = 25
train.checkpointer.period = 150
train.seed = 0
