"""EVA-CLIP on the toy world: the stage of the main job (``tools/eva_toy_pipeline.py``) and its pieces.

The paper's loop at toy scale (``docs/recipes/clip.md#toy-eva-clip-in-the-main-job``): a tiny CLIP
trained on toy captions teaches EVA by masked feature prediction, and the EVA encoder then
initialises the vision tower of a new EVA-CLIP. Both CLIP trainings are
``clip/configs/toy_clip.py`` through :func:`eva_core.engine.defaults.train_from_config`, with the
vision tower given the toy MIM encoder's architecture (:func:`toy_clip_config`), CLIP normalisation
(the MIM recipe feeds its teacher CLIP-normalised crops) and a short text context (toy captions
are at most 14 tokens).

:func:`run_toy_stage` is the main-job stage contract (``docs/DESIGN.md``): it writes its own toy data,
trains EVA-CLIP from the MIM encoder checkpoint and returns the zero-shot top-1 on the toy colours.
"""
from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any, Mapping

__all__ = ["TOY_CLIP_CONFIG", "TOY_TEXT_CFG", "TOY_TEMPLATE", "make_toy_clip_data",
           "make_long_tailed_captions", "toy_clip_config", "train_toy_clip", "run_toy_stage"]

TOY_CLIP_CONFIG = Path(__file__).resolve().parent / "configs" / "toy_clip.py"
#: the toy recipe's text tower with a 24-token context: the longest toy caption ("a red circle, a
#: blue square and an orange cross") is 14 tokens with SOT/EOT, and 77 would triple the text cost
TOY_TEXT_CFG = dict(context_length=24, vocab_size=49408, width=32, heads=2, layers=2)
#: the zero-shot prompt of the toy recipe (the word "shape" never occurs in a caption)
TOY_TEMPLATE = "a photo of a {} shape."
#: data and step budgets of the stage (``fast``: the main job's ``--fast`` and the tests). 150 steps:
#: the budget at which the MIM-initialised tower is measured ahead of one from scratch
#: (``docs/recipes/clip.md#toy-eva-clip-in-the-main-job``; at 300 steps scratch catches up)
STAGE = dict(num_captions=640, val_per_class=25, steps=150)
STAGE_FAST = dict(num_captions=320, val_per_class=15, steps=150)


def make_toy_clip_data(out: str | Path, *, num_captions: int, val_per_class: int, seed: int = 0,
                       caption_size: int = 64, val_size: int = 32) -> dict[str, str]:
    """Toy caption shards (drawn at ``caption_size``, resized by the transform) and the colour val set.

    Returns:
        ``eva_core.data.toy_world`` paths: ``captions_shards``, ``captions_csv``, ``imagefolder_color_val``...
    """
    from eva_core.data.toy_world import make_captions, make_imagefolder

    paths = make_captions(out, num_images=num_captions, img_size=caption_size, seed=seed, shard_size=100)
    paths.update(make_imagefolder(out, train_per_class=1, val_per_class=val_per_class, img_size=val_size,
                                  seed=seed, label="color"))
    return paths


def make_long_tailed_captions(out: str | Path, counts: Mapping[str, int], *, img_size: int = 64,
                              seed: int = 0, shard_size: int = 500) -> str:
    """A long-tailed toy caption pool: ``counts[colour]`` images of one shape of that colour each.

    Shapes are drawn as the toy world's caption set draws them (random kind, 10-20 % of the side, on
    its textured background), captioned "a red circle", shuffled and written as webdataset shards
    (``key.jpg`` + ``key.txt``, LAION layout) under ``out/long_tail/``.

    Returns:
        The shards' brace pattern (for ``CaptionWebDataset`` and the MetaCLIP count pass).
    """
    import numpy as np

    from eva_core.data.toy_world import (COLORS, SHAPES, caption_for, draw_shapes, render_background,
                                         sample_shapes)

    unknown = sorted(set(counts) - set(COLORS))
    if unknown:
        raise ValueError(f"make_long_tailed_captions: unknown colour(s) {unknown}; toy colours: "
                         f"{list(COLORS)}")
    rng = np.random.default_rng(seed)
    colours = [c for c, n in counts.items() for _ in range(int(n))]
    colours = [colours[i] for i in rng.permutation(len(colours))]
    root = Path(out) / "long_tail"
    root.mkdir(parents=True, exist_ok=True)
    num_shards = (len(colours) + shard_size - 1) // shard_size
    for shard in range(num_shards):
        with tarfile.open(root / f"pool-{shard:06d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(shard * shard_size, min(len(colours), (shard + 1) * shard_size)):
                spec = [(SHAPES[int(rng.integers(len(SHAPES)))], colours[i])]
                shapes = sample_shapes(rng, img_size, spec, min_frac=0.1, max_frac=0.2)
                buf = io.BytesIO()
                draw_shapes(render_background(rng, img_size), shapes).save(buf, format="JPEG", quality=95,
                                                                          subsampling=0)
                for name, payload in ((f"{i:06d}.jpg", buf.getvalue()),
                                      (f"{i:06d}.txt", caption_for(shapes).encode("utf-8"))):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(root / f"pool-{{000000..{num_shards - 1:06d}}}.tar")


def toy_clip_config(data: Mapping[str, str], out_dir: str | Path, vision_cfg: Mapping[str, Any], *,
                    steps: int, seed: int = 0, vision_init: str | Path | None = None,
                    train_shards: str | None = None, batch_size: int = 32):
    """``clip/configs/toy_clip.py`` with the given vision tower, CLIP normalisation and run settings.

    Args:
        data: paths from :func:`make_toy_clip_data` (``captions_shards``, ``imagefolder_color_val``).
        out_dir: the run's ``train.output_dir``.
        vision_cfg: :class:`~eva_core.models.eva.Eva` architecture of the vision tower (the toy MIM
            encoder's ``img_size``, ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``).
        steps: ``train.max_iter`` (evaluated zero-shot once, at the end).
        seed: data order and initialisation seed.
        vision_init: an EVA encoder checkpoint for the vision tower (``EvaCLIP(vision_init=...)``).
        train_shards: training shards other than ``data["captions_shards"]``.
        batch_size: total batch size.
    """
    from eva_core.config import LazyConfig
    from eva_core.data import CLIP_MEAN, CLIP_STD

    cfg = LazyConfig.load(str(TOY_CLIP_CONFIG))
    img_size = int(vision_cfg["img_size"])
    clip_cfg = cfg.model.model
    clip_cfg.vision_cfg = dict(vision_cfg)
    clip_cfg.text_cfg = dict(TOY_TEXT_CFG)
    clip_cfg.vision_init = None if vision_init is None else str(vision_init)
    cfg.model.templates = [TOY_TEMPLATE]
    train = cfg.dataloader.train
    train.dataset.urls = train_shards or data["captions_shards"]
    train.dataset.tokenizer.context_length = TOY_TEXT_CFG["context_length"]
    train.total_batch_size = batch_size
    train.seed = seed
    cfg.dataloader.test.dataset.root = data["imagefolder_color_val"]
    for transform in (train.dataset.transform, cfg.dataloader.test.dataset.transform):
        transform.img_size = img_size
        transform.mean, transform.std = list(CLIP_MEAN), list(CLIP_STD)
    cfg.train.output_dir = str(out_dir)
    cfg.train.max_iter = steps
    cfg.train.eval_period = steps
    cfg.train.checkpointer.period = 0
    cfg.train.seed = seed
    return cfg


def train_toy_clip(cfg, extra_hooks=()):
    """Seed, then ``train_from_config(cfg)`` -> ``TrainResult`` (``results["top1"]``: zero-shot top-1 %)."""
    from eva_core.engine.defaults import seed_all_rng, train_from_config

    seed_all_rng(int(cfg.train.seed))  # the towers' initialisation (default_setup's job in the CLI)
    return train_from_config(cfg, extra_hooks=list(extra_hooks), tensorboard=False)


def run_toy_stage(out: Path, encoder_checkpoint: Path | None, encoder_arch: dict, seed: int = 0,
                  fast: bool = False) -> dict:
    """EVA-CLIP initialised from the toy MIM encoder, trained on toy captions, scored zero-shot.

    Args:
        out: folder for the stage's toy data and run.
        encoder_checkpoint: safetensors state dict of the MIM encoder (eva_core ``Eva`` keys); None
            trains the vision tower from random init.
        encoder_arch: the encoder's architecture (``img_size``, ``patch_size``, ``embed_dim``, ``depth``,
            ``num_heads``, ``mlp_ratio``): the vision tower's.
        seed: data and initialisation seed.
        fast: the smaller data budget (same step count).

    Returns:
        ``{"metric": "zero_shot_top1", "value": fraction, "metrics": {...}, "png": None, "seconds": s}``.
    """
    t0 = time.perf_counter()
    sizes = STAGE_FAST if fast else STAGE
    out = Path(out)
    data = make_toy_clip_data(out / "toy_world", num_captions=sizes["num_captions"],
                              val_per_class=sizes["val_per_class"], seed=seed)
    cfg = toy_clip_config(data, out / "eva_clip", encoder_arch, steps=sizes["steps"], seed=seed,
                          vision_init=encoder_checkpoint)
    run = train_toy_clip(cfg)
    loss = run.trainer.storage.latest().get("loss_clip")
    metrics = {"zero_shot_top1": run.results["top1"] / 100.0, "zero_shot_top5": run.results["top5"] / 100.0,
               "num_val": int(run.results["num_samples"]), "steps": sizes["steps"],
               "num_captions": sizes["num_captions"], "vision_init": encoder_checkpoint is not None,
               "loss_clip_last": None if loss is None else float(loss[0])}
    return {"metric": "zero_shot_top1", "value": metrics["zero_shot_top1"], "metrics": metrics, "png": None,
            "seconds": time.perf_counter() - t0}
