"""Proof on the toy world: fine-tuning from a toy MIM checkpoint beats training from scratch.

Pre-training is the toy EVA pipeline (``tools/eva_toy_pipeline.py --fast``, shared with
``test_mim_pipeline.py`` through the ``toy_pipeline_run`` fixture): a tiny supervised teacher on the
toy world's colour ImageFolder, then MIM of a tiny EVA student against it
(``configs/pretrain/toy.py`` through the shared engine). Downstream is a fresh colour set (another
seed) with only a few labels per class; both fine-tunes run ``configs/classification/toy_ft.py``
through ``train_from_config`` with the same data, seed and number of steps, one loading the MIM
checkpoint through ``model.net.checkpoint_path`` and one from random init.
"""
from pathlib import Path

import pytest
import torch

from eva_core.config import LazyConfig
from eva_core.data.toy_world import make_imagefolder
from eva_core.engine.defaults import train_from_config

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "classification" / "toy_ft.py"
LABELS_PER_CLASS = 4
FT_STEPS = 60


def finetune_top1(data: dict, out_dir: Path, checkpoint: str | None, steps: int = FT_STEPS,
                  seed: int = 0) -> float:
    """Val top-1 (%) of the toy fine-tuning recipe on ``data``, from ``checkpoint`` or scratch."""
    cfg = LazyConfig.load(str(RECIPE))
    cfg.model.net.checkpoint_path = checkpoint
    cfg.dataloader.train.dataset.root = data["imagefolder_color_train"]
    cfg.dataloader.test.dataset.root = data["imagefolder_color_val"]
    cfg.dataloader.train.seed = seed
    cfg.train.output_dir = str(out_dir)
    cfg.train.max_iter = steps
    cfg.train.eval_period = steps
    cfg.train.checkpointer.period = 0
    torch.manual_seed(seed)  # head (and, from scratch, encoder) initialisation
    return float(train_from_config(cfg, tensorboard=False).results["top1"])


@pytest.fixture(scope="module")
def few_label_sets(tmp_path_factory):
    """Two new colour sets (seeds 1 and 2, unseen in pre-training): 4 labelled images per class
    (32 in all, one batch) and 25 val images per class each."""
    root = tmp_path_factory.mktemp("few_labels")
    return [make_imagefolder(root / f"seed{seed}", train_per_class=LABELS_PER_CLASS, val_per_class=25,
                             img_size=32, seed=seed, label="color") for seed in (1, 2)]


@pytest.mark.xdist_group("toy_pipeline")
def test_finetuning_from_toy_mim_checkpoint_beats_scratch_with_few_labels(toy_pipeline_run,
                                                                          few_label_sets, tmp_path):
    out, _ = toy_pipeline_run
    checkpoint = out / "mim" / "model_final.safetensors"
    assert checkpoint.is_file()
    scratch, pretrained = [], []
    for i, data in enumerate(few_label_sets):
        scratch.append(finetune_top1(data, tmp_path / f"scratch{i}", None))
        pretrained.append(finetune_top1(data, tmp_path / f"mim{i}", str(checkpoint)))
    print(f"toy transfer ({LABELS_PER_CLASS} labels/class, {FT_STEPS} steps) top-1: scratch {scratch} "
          f"vs MIM-pretrained {pretrained}")
    # measured (pipeline seeds 0 and 1, fine-tune seeds 0-2): scratch 57-76%, MIM 80-94%,
    # every gap >= 16 points
    assert all(m > s for m, s in zip(pretrained, scratch)), (scratch, pretrained)
    assert sum(pretrained) / 2 > sum(scratch) / 2 + 10.0, (scratch, pretrained)
    assert min(pretrained) > 70.0, pretrained
