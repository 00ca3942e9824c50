"""Specification of the shared train / test loaders (resume, sharding, reshuffling)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from eva_core.data import (ImageFolderDataset, batch_num_skipped, build_test_loader, build_train_loader,
                           build_transform)
from eva_core.utils import comm

torch.set_num_threads(1)


def write_image_folder(root, num_classes=2, per_class=5, size=24, seed=0):
    rng = np.random.default_rng(seed)
    for c in range(num_classes):
        os.makedirs(root / f"class_{c}", exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"img_{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs"))


def augmented_dataset(root):
    # random crop + flip: a resumed stream only matches if augmentation randomness is restored
    return ImageFolderDataset(root, build_transform(True, 16, scale=(0.2, 1.0)))


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["path"] == y["path"]
        assert torch.equal(x["label"], y["label"])
        assert torch.equal(x["image"], y["image"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumed_train_loader_yields_bitwise_identical_batches(folder, num_workers):
    reference = take(iter(build_train_loader(augmented_dataset(folder), 4, seed=3)), 6)

    first = build_train_loader(augmented_dataset(folder), 4, seed=3, num_workers=num_workers)
    it = iter(first)
    assert_batches_equal(take(it, 3), reference[:3])
    state = first.state_dict()
    assert state["batches_yielded"] == 3
    del it

    resumed = build_train_loader(augmented_dataset(folder), 4, seed=3, num_workers=num_workers)
    resumed.load_state_dict(state)
    assert_batches_equal(take(iter(resumed), 3), reference[3:])


def test_same_image_gets_different_augmentation_at_different_stream_positions(folder):
    # 10 images, batch 5, drop_last: batches 0-1 are epoch 0 and 2-3 epoch 1 -> every image twice
    batches = take(iter(build_train_loader(augmented_dataset(folder), 5, seed=0)), 4)
    seen: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        for path, image in zip(batch["path"], batch["image"]):
            seen.setdefault(path, []).append(image)
    assert len(seen) == 10 and all(len(v) == 2 for v in seen.values())
    assert any(not torch.equal(a, b) for a, b in seen.values())


def test_each_epoch_is_a_fresh_permutation_covering_the_dataset(folder):
    dataset = ImageFolderDataset(folder)
    loader = build_train_loader(dataset, 5, seed=1)
    assert loader.batches_per_epoch == 2
    batches = take(iter(loader), 4)
    epoch0 = batches[0]["path"] + batches[1]["path"]
    epoch1 = batches[2]["path"] + batches[3]["path"]
    assert sorted(epoch0) == sorted(epoch1) == sorted(p for p, _ in dataset.samples)
    assert epoch0 != epoch1
    assert loader.epoch == 2


def test_different_seeds_give_different_orders(folder):
    dataset = ImageFolderDataset(folder)
    a = next(iter(build_train_loader(dataset, 5, seed=0)))["path"]
    b = next(iter(build_train_loader(dataset, 5, seed=1)))["path"]
    assert a != b


def test_ranks_split_each_global_batch_into_contiguous_slices(folder, monkeypatch):
    single = take(iter(build_train_loader(augmented_dataset(folder), 4, seed=5)), 3)
    per_rank = []
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    for rank in (0, 1):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        loader = build_train_loader(augmented_dataset(folder), 4, seed=5)
        assert loader.batch_size == 2
        per_rank.append(take(iter(loader), 3))
    for whole, r0, r1 in zip(single, *per_rank):
        assert whole["path"] == r0["path"] + r1["path"]
        assert torch.equal(whole["image"], torch.cat([r0["image"], r1["image"]]))


def test_total_batch_size_not_divisible_by_world_size_is_rejected(folder, monkeypatch):
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    with pytest.raises(ValueError, match="total_batch_size=5 must be a positive multiple of the world size"):
        build_train_loader(ImageFolderDataset(folder), 5)


def test_drop_last_false_lets_batches_span_epochs(folder):
    loader = build_train_loader(ImageFolderDataset(folder), 4, drop_last=False)
    batches = take(iter(loader), 5)  # 20 positions = exactly two epochs of 10
    paths = [p for b in batches for p in b["path"]]
    assert sorted(paths[:10]) == sorted(paths[10:])
    assert all(len(b["path"]) == 4 for b in batches)


def test_loading_data_in_main_process_leaves_caller_rng_untouched(folder):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    take(iter(build_train_loader(augmented_dataset(folder), 4)), 2)
    assert torch.equal(torch.rand(3), expected)


def test_loader_state_from_another_seed_is_rejected(folder):
    state = build_train_loader(ImageFolderDataset(folder), 4, seed=0).state_dict()
    other = build_train_loader(ImageFolderDataset(folder), 4, seed=1)
    with pytest.raises(ValueError, match="'seed': checkpoint has 0, this loader has 1"):
        other.load_state_dict(state)


def test_dataset_smaller_than_batch_with_drop_last_is_rejected(folder):
    with pytest.raises(ValueError, match="fewer than total_batch_size=16"):
        build_train_loader(ImageFolderDataset(folder), 16)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_test_loader_shards_cover_dataset_once_in_order_across_two_ranks(tmp_path, monkeypatch,
                                                                        batch_size):
    root = write_image_folder(tmp_path, num_classes=1, per_class=7, size=8)
    dataset = ImageFolderDataset(root)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        loader = build_test_loader(dataset, batch_size)
        shards.append([p for batch in loader for p in batch["path"]])
    assert [len(s) for s in shards] == [4, 3]
    assert shards[0] + shards[1] == [p for p, _ in dataset.samples]


def test_default_collate_gives_image_label_tensors_and_path_list(folder):
    batch = next(iter(build_test_loader(ImageFolderDataset(folder, build_transform(False, 16)), 4)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (4,)
    assert isinstance(batch["path"], list) and len(batch["path"]) == 4


def _folder_with_unreadable(root, unreadable):
    """One class of 7 readable-looking PNGs; the given indices hold bytes that are no image."""
    write_image_folder(root, num_classes=1, per_class=7, size=8)
    paths = sorted(str(p) for p in (root / "class_0").iterdir())
    for i in unreadable:
        with open(paths[i], "wb") as f:
            f.write(b"this is not a png")
    return paths


@pytest.mark.parametrize("num_workers", [0, 1])
def test_unreadable_validation_image_is_excluded_and_counted(tmp_path, num_workers):
    paths = _folder_with_unreadable(tmp_path, unreadable=[1, 4])
    loader = build_test_loader(ImageFolderDataset(tmp_path), 3, num_workers=num_workers)
    seen, counted = [], 0
    for batch in loader:
        seen += batch["path"]
        counted += batch_num_skipped(batch)
        assert batch["image"].shape[0] == len(batch["path"])
    readable = [p for i, p in enumerate(paths) if i not in (1, 4)]
    assert seen == readable, "each readable image exactly once, no replacement"
    assert counted == loader.num_skipped == 2
    assert sorted(loader.skipped_paths) == [paths[1], paths[4]]


def test_batch_of_only_unreadable_images_is_not_yielded_but_counted(tmp_path):
    # batches of 2: [0, 1] [2, 3] [4, 5] [6]; samples 2, 3 and 6 are unreadable
    paths = _folder_with_unreadable(tmp_path, unreadable=[2, 3, 6])
    loader = build_test_loader(ImageFolderDataset(tmp_path), 2)
    batches = list(loader)
    assert [b["path"] for b in batches] == [paths[0:2], paths[4:6]]
    assert [batch_num_skipped(b) for b in batches] == [2, 1]
    assert list(loader) and loader.num_skipped == 3, "a second pass counts afresh"


def test_training_loader_still_replaces_and_counts_unreadable_images(tmp_path):
    _folder_with_unreadable(tmp_path, unreadable=[1])
    dataset = ImageFolderDataset(tmp_path)
    batch = next(iter(build_train_loader(dataset, 7, seed=0)))
    assert len(batch["path"]) == 7 and dataset.num_skipped >= 1


def test_evaluation_results_report_the_excluded_samples(tmp_path):
    from eva_core.evaluation import ClassificationEvaluator

    _folder_with_unreadable(tmp_path, unreadable=[0, 5])
    evaluator = ClassificationEvaluator(topk=(1,))
    for batch in build_test_loader(ImageFolderDataset(tmp_path), 2):
        logits = torch.nn.functional.one_hot(batch["label"], 2).float()  # always right
        evaluator.process(batch, logits)
    assert evaluator.evaluate() == {"top1": 100.0, "num_samples": 5, "num_skipped": 2}
    assert batch_num_skipped({"image": torch.zeros(1)}) is None, "hand-made batches carry no count"
