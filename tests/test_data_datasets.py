"""Specification of the dict datasets (class folders, file lists, webdataset) and transforms."""
from __future__ import annotations

import io
import logging
import os
import tarfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from eva_core.data import (CLIP_MEAN, CLIP_STD, CorruptImageError, FileListDataset,
                           ImageFolderDataset, ListFileError, WebDatasetImages,
                           build_train_loader, build_transform, read_file_list)

torch.set_num_threads(1)


def png_bytes(value, size=8):
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value, value, value)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(value, size=32):
    buf = io.BytesIO()
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture()
def folder_with_corrupt_files(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
    (tmp_path / "a" / "0.png").write_bytes(png_bytes(10))
    (tmp_path / "a" / "1_garbage.png").write_bytes(b"this is not an image")
    (tmp_path / "a" / "2_truncated.jpg").write_bytes(jpeg_bytes(3)[:300])
    (tmp_path / "b" / "3.png").write_bytes(png_bytes(200))
    return tmp_path


def test_image_folder_labels_are_sorted_class_folder_positions(folder_with_corrupt_files):
    dataset = ImageFolderDataset(folder_with_corrupt_files)
    assert dataset.classes == ["a", "b"] and dataset.num_classes == 2
    sample = dataset[3]
    assert sample["label"] == 1 and sample["path"].endswith(os.path.join("b", "3.png"))
    assert torch.allclose(sample["image"], torch.full((3, 8, 8), 200 / 255))


def test_unreadable_images_are_replaced_by_the_next_readable_sample_and_counted(
        folder_with_corrupt_files, caplog):
    dataset = ImageFolderDataset(folder_with_corrupt_files)
    with caplog.at_level(logging.WARNING, logger="eva_core.data.datasets"):
        garbage, truncated = dataset[1], dataset[2]
    assert garbage["path"].endswith("3.png") and truncated["path"].endswith("3.png")
    assert dataset.num_skipped == 3  # index 1 skips 1 and 2; index 2 skips 2
    assert "1_garbage.png" in caplog.text and "2_truncated.jpg" in caplog.text


def test_batches_keep_their_size_when_images_are_corrupt(folder_with_corrupt_files):
    loader = build_train_loader(ImageFolderDataset(folder_with_corrupt_files), 4)
    batch = next(iter(loader))
    assert batch["image"].shape[0] == 4 and len(batch["path"]) == 4


def test_strict_mode_makes_an_unreadable_image_fatal_and_names_it(folder_with_corrupt_files):
    dataset = ImageFolderDataset(folder_with_corrupt_files, strict=True)
    with pytest.raises(CorruptImageError, match="1_garbage.png"):
        dataset[1]
    with pytest.raises(CorruptImageError, match="2_truncated.jpg"):
        dataset[2]


def test_missing_image_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageFolderDataset(tmp_path / "nope")


def test_file_list_resolves_paths_against_root_and_reads_labels(tmp_path):
    (tmp_path / "imgs" / "dir with space").mkdir(parents=True)
    (tmp_path / "imgs" / "dir with space" / "x.png").write_bytes(png_bytes(0))
    (tmp_path / "imgs" / "y.png").write_bytes(png_bytes(255))
    list_file = tmp_path / "train.txt"
    list_file.write_text("# comment\ndir with space/x.png 4\n\ny.png 7\n")
    dataset = FileListDataset(list_file, tmp_path / "imgs")
    assert len(dataset) == 2 and dataset.num_classes == 8
    assert dataset[0]["label"] == 4 and dataset[1]["label"] == 7
    assert dataset[1]["image"].min() == 1.0


@pytest.mark.parametrize("bad_line", ["y.png", "y.png seven", "y.png -1"])
def test_broken_list_line_is_named_with_file_and_line_number(tmp_path, bad_line):
    list_file = tmp_path / "list.txt"
    list_file.write_text(f"x.png 0\n{bad_line}\n")
    with pytest.raises(ListFileError, match=rf"list.txt:2: expected 'relative/path label'.*{bad_line!r}"):
        read_file_list(list_file)


def test_missing_file_listed_image_is_skipped_or_fatal_in_strict_mode(tmp_path):
    (tmp_path / "ok.png").write_bytes(png_bytes(1))
    (tmp_path / "list.txt").write_text("gone.png 0\nok.png 1\n")
    assert FileListDataset(tmp_path / "list.txt", tmp_path)[0]["label"] == 1
    with pytest.raises(CorruptImageError, match="gone.png"):
        FileListDataset(tmp_path / "list.txt", tmp_path, strict=True)[0]


def write_shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_give_image_label_and_caption_per_key(tmp_path):
    write_shard(tmp_path / "shard-000.tar", [("s0.jpg", jpeg_bytes(0)), ("s0.cls", b"3"),
                                             ("s0.txt", b"a red circle"), ("s1.jpg", jpeg_bytes(1)),
                                             ("s1.cls", b"1"), ("s1.txt", b"a blue star")])
    write_shard(tmp_path / "shard-001.tar", [("s2.jpg", jpeg_bytes(2)), ("s2.cls", b"0"),
                                             ("s2.txt", b"a green square")])
    dataset = WebDatasetImages(str(tmp_path / "shard-{000..001}.tar"))
    assert len(dataset) == 3
    assert [dataset[i]["label"] for i in range(3)] == [3, 1, 0]
    assert [dataset[i]["text"] for i in range(3)] == ["a red circle", "a blue star", "a green square"]
    expected = np.asarray(Image.open(io.BytesIO(jpeg_bytes(2))).convert("RGB"))
    assert torch.equal(dataset[2]["image"], torch.from_numpy(expected.copy()).permute(2, 0, 1) / 255.0)


def test_webdataset_corrupt_image_is_skipped_or_fatal_in_strict_mode(tmp_path):
    write_shard(tmp_path / "s.tar", [("bad.jpg", b"\xff\xd8garbage"), ("good.jpg", jpeg_bytes(5))])
    assert WebDatasetImages(str(tmp_path / "s.tar"))[0]["path"].endswith("#good.jpg")
    with pytest.raises(CorruptImageError, match=r"s.tar#bad.jpg"):
        WebDatasetImages(str(tmp_path / "s.tar"), strict=True)[0]


def test_broken_webdataset_shard_is_named(tmp_path):
    (tmp_path / "broken.tar").write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(ListFileError, match="broken.tar"):
        WebDatasetImages(str(tmp_path / "broken.tar"))


def test_eval_transform_resizes_by_crop_pct_then_center_crops_and_normalizes():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    out = build_transform(False, 16, mean=CLIP_MEAN, std=CLIP_STD, crop_pct=1.0)(image)
    assert out.shape == (3, 16, 16)
    expected_red = (1.0 - CLIP_MEAN[0]) / CLIP_STD[0]
    assert torch.allclose(out[0], torch.full((16, 16), expected_red), atol=1e-5)


def seed_all(seed):
    import random

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def test_train_transform_is_random_but_reproducible_under_a_seed():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    transform = build_transform(True, 16, scale=(0.1, 0.5), auto_augment="rand-m9-mstd0.5-inc1")
    outputs = []
    for seed in (0, 0, 1, 2):
        seed_all(seed)
        outputs.append(transform(image))
    assert outputs[0].shape == (3, 16, 16)
    assert torch.equal(outputs[0], outputs[1])
    # every other seed draws another crop / RandAugment op: no two of the seeds 0, 1, 2 agree
    assert not torch.equal(outputs[0], outputs[2])
    assert not torch.equal(outputs[0], outputs[3])
    assert not torch.equal(outputs[2], outputs[3])


@pytest.mark.parametrize("kwargs, message", [({"interpolation": "cubicle"}, "interpolation must be one of"),
                                             ({"scale": (0.5, 0.1)}, "scale must be"),
                                             ({"crop_pct": 1.5}, "crop_pct must be in")])
def test_bad_transform_settings_are_rejected_with_the_value(kwargs, message):
    is_train = "crop_pct" not in kwargs
    with pytest.raises(ValueError, match=message):
        build_transform(is_train, 16, **kwargs)
