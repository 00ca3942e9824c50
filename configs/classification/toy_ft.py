"""Toy fine-tuning recipe: the EVA fine-tuning recipe shrunk to a tiny EVA on the toy colour set.

Same structure as ``in1k_ft_336.py`` (ImageClassifier with mean pooling + fc_norm, frozen patch
embedding, layer-wise lr decay, AdamW, warmup + cosine, label smoothing, crop ratio 1.0), scaled
to run on a CPU in seconds. The encoder is the toy MIM student of ``configs/pretrain/toy.py``
(``tools/eva_toy_pipeline.py`` writes its checkpoint to ``OUT/mim/model_final.safetensors``); start
from it with ``model.net.checkpoint_path=PATH`` (``None`` trains from scratch)::

    python tools/make_toy_world.py --out datasets/toy_world --formats imagefolder_color
    python tools/eva_toy_pipeline.py --out output/eva_toy_pipeline
    python tools/lazyconfig_train_net.py --config-file configs/classification/toy_ft.py \\
        model.net.checkpoint_path=output/eva_toy_pipeline/mim/model_final.safetensors

Data: the toy world's colour ImageFolder (class = colour of the one drawn shape, 8 classes);
``tests/test_classification_toy_transfer.py`` fine-tunes it from few labels.
"""
from .ft_base import adamw, classifier, dataloaders, label_smoothing_ce, train_settings, warmup_cosine

num_classes = 8  # toy_world.COLORS
image_size = 32
data_root = "datasets/toy_world/imagefolder_color"
# the toy MIM encoder (configs/pretrain/toy.py), so its checkpoint loads without mismatches
arch = dict(img_size=image_size, patch_size=4, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0)

model = classifier("eva_tiny_patch16_224", num_classes, checkpoint=None, drop_path=0.1, **arch)
model.criterion = label_smoothing_ce(0.1)

dataloader = dataloaders(f"{data_root}/train", f"{data_root}/val", image_size, scale=(0.5, 1.0),
                         total_batch_size=32, test_batch_size=64, num_workers=0, topk=(1,),
                         auto_augment=None, interpolation="bilinear")

optimizer = adamw(lr=1e-3, layer_decay=0.75, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
lr_multiplier = warmup_cosine(warmup_epochs=1, epochs=10)

train = train_settings("./output/toy_ft", max_iter=100, grad_accum_steps=1, ema_decay=None,
                       eval_period=100)
train["amp"]["enabled"] = False  # CPU fp32
train["device"] = "cpu"
train["log_period"] = 20
train["checkpointer"]["period"] = 100  # one final checkpoint
