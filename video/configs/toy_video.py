"""Toy video recipe: a tiny EVA video model (64 wide, 2 blocks, 32 px, 8 frames, tubelet 2), toy motions.

Data: the toy world's Kinetics-format clips (class = motion direction of one shape; a single frame
cannot tell it)::

    python tools/make_toy_world.py --out datasets/toy_world --formats kinetics imagefolder_color
    python tools/lazyconfig_train_net.py --config-file video/configs/toy_video.py \\
        model.net.checkpoint_path=output/toy_imagefolder/model_final.pth

``model.net.checkpoint_path`` takes an IMAGE checkpoint of the same tiny EVA
(``configs/classification/toy_imagefolder.py``: 32 px, patch 8, width 64, depth 2) and inflates it
(``video.load_video_checkpoint``); ``None`` trains from scratch. Flip is off: a horizontal flip turns
``moving_left`` into ``moving_right`` without changing the label. The test is one centre clip x one crop
(the paper's 4 x 3 views are ``kinetics_loaders``' defaults). ``model.net.num_frames`` and the two
datasets' ``num_frames`` set the clip length together (``tests/test_video_toy_transfer.py`` compares 8
frames with 1: val top-1 0.50 against 0.22, chance 0.25).

Tubelet 2 (the encoder's option; EVA uses 1): each token sees two frames, so a displacement is visible
inside one token. With tubelet 1 this tiny model stayed at chance (28% after 500 steps of batch 32):
motion then has to be read from per-frame positions, which an inflated table does not separate at first.
Decoding costs ~0.3 s per batch of 16 clips on one CPU core, so 600 steps take minutes here; the test
serves clips decoded once from memory.
"""
from .video_base import adamw, kinetics_loaders, train_settings, video_classifier, warmup_cosine

num_classes = 4  # toy_world.MOTIONS
num_frames = 8
image_size = 32
data_root = "datasets/toy_world/kinetics"
# the tiny image EVA of configs/classification/toy_imagefolder.py, so its checkpoint inflates key for key
arch = dict(img_size=image_size, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0,
            tubelet_size=2)

model = video_classifier("eva_video_tiny_patch14_224_f8", num_classes, num_frames, checkpoint=None,
                         drop_path=0.0, **arch)

dataloader = kinetics_loaders(f"{data_root}/train_list.txt", f"{data_root}/val_list.txt", data_root,
                              num_frames, total_batch_size=32, size=image_size, test_clips=1, test_crops=1,
                              test_batch_size=32, num_workers=0, topk=(1,), hflip=0.0,
                              resize_short=image_size + 4)

optimizer = adamw(lr=2e-3, layer_decay=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
lr_multiplier = warmup_cosine(warmup_epochs=1, epochs=10)

train = train_settings("./output/toy_video", max_iter=600, grad_accum_steps=1, eval_period=600)
train["amp"]["enabled"] = False  # CPU fp32
train["device"] = "cpu"
train["log_period"] = 20
train["checkpointer"]["period"] = 600  # one final checkpoint
