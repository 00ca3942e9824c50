"""Mask2Former-EVA data: released folder formats, label conventions, mmseg's training pipeline, batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from eva_core.data import toy_world
from eva_core.data.datasets import CorruptImageError
from eva_core.evaluation import SemSegEvaluator
from mask2former_eva.data import (ADE20K_CLASSES, COCO_STUFF_CLASSES, LabelMapError, SegTestTransform,
                                  SegTrainTransform, ade20k_dataset, build_sem_seg_test_loader,
                                  build_sem_seg_train_loader, coco_stuff164k_dataset, custom_sem_seg_dataset,
                                  photo_metric_distortion, random_crop, read_class_list)
from mask2former_eva.data.transforms import MMSEG_MEAN, MMSEG_STD, random_resize


def _write_pair(image_dir, label_dir, stem, label, *, img_suffix=".jpg", seg_suffix=".png", image=None):
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    h, w = label.shape
    if image is None:
        image = np.full((h, w, 3), 128, np.uint8)
    Image.fromarray(image).save(image_dir / f"{stem}{img_suffix}")
    Image.fromarray(label.astype(np.uint8)).save(label_dir / f"{stem}{seg_suffix}")


def test_ade20k_reduce_zero_label_maps_zero_to_ignore_and_k_to_k_minus_one(tmp_path):
    label = np.array([[0, 1, 150], [2, 0, 255]], np.uint8)
    _write_pair(tmp_path / "images/training", tmp_path / "annotations/training", "ADE_train_1", label)
    ds = ade20k_dataset(tmp_path, "training")
    assert ds.num_classes == 150 and ds.class_names == list(ADE20K_CLASSES)
    sample = ds[0]
    assert sample["sem_seg"].tolist() == [[255, 0, 149], [1, 255, 255]]
    assert sample["image"].shape == (3, 2, 3)


def test_coco_stuff164k_reads_label_train_ids_unshifted_with_171_classes(tmp_path):
    label = np.array([[0, 170, 255], [12, 91, 3]], np.uint8)
    _write_pair(tmp_path / "images/val2017", tmp_path / "annotations/val2017", "000000000139", label,
                seg_suffix="_labelTrainIds.png")
    ds = coco_stuff164k_dataset(tmp_path, "val2017")
    assert ds.num_classes == 171 == len(COCO_STUFF_CLASSES)
    assert ds[0]["sem_seg"].tolist() == label.tolist()
    assert ds.samples[0][1].endswith("annotations/val2017/000000000139_labelTrainIds.png")


def test_custom_dataset_takes_its_class_count_from_the_class_list(tmp_path):
    (tmp_path / "classes.txt").write_text("road\nsky\ncar\n\n")
    _write_pair(tmp_path / "img", tmp_path / "ann", "a", np.array([[0, 1], [2, 255]]), img_suffix=".png")
    ds = custom_sem_seg_dataset(tmp_path / "img", tmp_path / "ann", tmp_path / "classes.txt",
                                img_suffix=".png")
    assert ds.num_classes == 3 and ds.class_names == ["road", "sky", "car"]
    assert ds[0]["sem_seg"].tolist() == [[0, 1], [2, 255]]
    # a label beyond the list names the file and the value
    _write_pair(tmp_path / "img", tmp_path / "ann", "b", np.array([[3, 0]]), img_suffix=".png")
    ds = custom_sem_seg_dataset(tmp_path / "img", tmp_path / "ann", tmp_path / "classes.txt",
                                img_suffix=".png")
    with pytest.raises(LabelMapError, match=r"b\.png holds value 3; expected 0\.\.2 for 3 classes"):
        ds[1]


@pytest.mark.parametrize("text, message", [("a\n\nb\n", r"classes\.txt:2: empty line"),
                                           ("a\nb\na\n", r"classes\.txt:3: class 'a' repeats line 1"),
                                           ("\n", r"no class names")])
def test_malformed_class_list_is_refused_naming_file_and_line(tmp_path, text, message):
    (tmp_path / "classes.txt").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_class_list(tmp_path / "classes.txt")


def test_unreadable_image_fails_naming_the_file(tmp_path):
    _write_pair(tmp_path / "images/training", tmp_path / "annotations/training", "bad", np.ones((4, 4)))
    (tmp_path / "images/training/bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CorruptImageError, match=r"images/training/bad\.jpg"):
        ade20k_dataset(tmp_path, "training")[0]


def test_label_map_of_wrong_size_fails_naming_both_files(tmp_path):
    _write_pair(tmp_path / "images/training", tmp_path / "annotations/training", "x", np.ones((4, 6)),
                image=np.zeros((5, 6, 3), np.uint8))
    with pytest.raises(LabelMapError, match=r"annotations/training/x\.png is 6x4 \(WxH\) but its image "
                                            r".*images/training/x\.jpg is 6x5"):
        ade20k_dataset(tmp_path, "training")[0]


def test_missing_or_unreadable_or_rgb_label_map_fails_naming_the_file(tmp_path):
    (tmp_path / "images/training").mkdir(parents=True)
    (tmp_path / "annotations/training").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images/training/a.jpg")
    with pytest.raises(FileNotFoundError, match=r"a\.jpg has no label map .*annotations/training/a\.png"):
        ade20k_dataset(tmp_path, "training")
    (tmp_path / "annotations/training/a.png").write_bytes(b"garbage")
    with pytest.raises(LabelMapError, match=r"cannot read label map .*a\.png"):
        ade20k_dataset(tmp_path, "training")[0]
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "annotations/training/a.png")
    with pytest.raises(LabelMapError, match=r"a\.png has mode RGB; expected a single-channel"):
        ade20k_dataset(tmp_path, "training")[0]


def test_random_resize_follows_mmcv_keep_ratio_rescale():
    image, label = np.zeros((64, 128, 3), np.uint8), np.zeros((64, 128), np.int64)
    # ratio 1: the long side may reach 3584 and the short 896; 896 / 64 = 14 < 3584 / 128 = 28
    out, lab = random_resize(image, label, (3584, 896), (1.0, 1.0))
    assert out.shape == (896, 1792, 3) and lab.shape == (896, 1792)
    out, _ = random_resize(image, label, (3584, 896), (0.5, 0.5))  # target (1792, 448)
    assert out.shape == (448, 896, 3)
    np.random.seed(3)
    ratio = np.random.random_sample() * 1.5 + 0.5
    np.random.seed(3)
    out, _ = random_resize(image, label, (3584, 896), (0.5, 2.0))
    factor = min(int(3584 * ratio) / 128, int(896 * ratio) / 64)
    assert out.shape[:2] == (int(64 * factor + 0.5), int(128 * factor + 0.5))


def test_random_crop_redraws_up_to_ten_times_while_one_class_covers_75_percent():
    label = np.zeros((40, 40), np.int64)
    label[:, 30:] = 1  # a 10x10 crop holds two classes only near x = 30
    image = np.zeros((40, 40, 3), np.uint8)

    def replay(seed):
        """The first of up to 11 draws (mmseg: 1 + 10 retries) whose crop is not dominated."""
        rng = np.random.RandomState(seed)
        for attempt in range(11):
            oy, ox = rng.randint(0, 31), rng.randint(0, 31)
            crop = label[oy:oy + 10, ox:ox + 10]
            counts = np.bincount(crop.ravel(), minlength=2)
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < 0.75:
                return ox, True
        return ox, False

    balanced = 0
    for seed in range(30):
        np.random.seed(seed)
        _, crop = random_crop(image, label, (10, 10), 0.75)
        x_expected, ok = replay(seed)
        # the crop's class-1 columns say where it was taken
        assert int((crop[0] == 1).sum()) == max(0, min(10, x_expected + 10 - 30))
        balanced += ok
    assert balanced >= 20  # retries find a mixed crop most of the time; one draw would rarely
    np.random.seed(0)
    _, crop = random_crop(image, label, (10, 10), 1.0)
    rng = np.random.RandomState(0)
    rng.randint(0, 31)
    assert int((crop[0] == 1).sum()) == max(0, min(10, rng.randint(0, 31) + 10 - 30))


def test_photometric_distortion_applies_each_step_with_probability_one_half():
    image = np.random.RandomState(0).randint(0, 256, (8, 8, 3)).astype(np.uint8)
    grey = 0
    for seed in range(40):
        np.random.seed(seed)
        # brightness +0, contrast x1, hue +0 mod 180 keep the image; saturation x0 makes it grey
        out = photo_metric_distortion(image, brightness_delta=0, contrast_range=(1.0, 1.0),
                                      saturation_range=(0.0, 0.0), hue_delta=1)
        assert out.dtype == np.uint8 and out.shape == image.shape
        is_grey = np.abs(out.astype(int) - out.mean(-1, keepdims=True)).max() <= 1
        grey += bool(is_grey)
        if not is_grey:  # no saturation: only the hue step (+-1 of 180) may have moved the colours
            assert np.abs(out.astype(int) - image).max() <= 12
    assert 10 <= grey <= 30


def test_train_transform_keeps_image_and_label_aligned_and_pads_to_the_crop():
    # a 40x60 image whose colour encodes the class: red = 0, blue = 1 (left / right halves)
    label = np.zeros((40, 60), np.int64)
    label[:, 30:] = 1
    image = np.zeros((40, 60, 3), np.uint8)
    image[label == 0] = (255, 0, 0)
    image[label == 1] = (0, 0, 255)
    transform = SegTrainTransform(crop_size=(64, 64), scale=(120, 30), ratio_range=(0.5, 2.0),
                                  cat_max_ratio=0.75, photometric=False)
    mean, std = torch.tensor(MMSEG_MEAN).view(3, 1, 1), torch.tensor(MMSEG_STD).view(3, 1, 1)
    flipped = 0
    for seed in range(12):
        np.random.seed(seed)
        out = transform({"image": image, "sem_seg": label, "file_name": "x.jpg"})
        assert out["image"].shape == (3, 64, 64) and out["sem_seg"].shape == (64, 64)
        seg, rgb = out["sem_seg"], out["image"] * std + mean
        padded = seg == 255
        assert torch.allclose(out["image"][:, padded], torch.zeros(())), "image padding is 0 after normalise"
        red = rgb[0] > 127
        inside = ~padded
        # away from the class border (bilinear blends one pixel) colour and label agree
        interior = inside & (torch.nn.functional.max_pool2d(seg[None, None].float(), 3, 1, 1)[0, 0]
                             == -torch.nn.functional.max_pool2d(-seg[None, None].float(), 3, 1, 1)[0, 0])
        assert torch.equal(red[interior], seg[interior] == 0)
        cols = seg[0][seg[0] != 255]
        flipped += bool(len(cols) and cols[0] == 1)
    assert 0 < flipped < 12  # both orientations occur


def test_batches_feed_sem_seg_evaluator_at_the_original_resolution(tmp_path):
    paths = toy_world.make_ade20k(tmp_path, num_train=4, num_val=3, img_size=48)
    train = ade20k_dataset(paths["ade20k_root"], "training", class_names=toy_world.SHAPES,
                           transform=SegTrainTransform((32, 32), (96, 24)))
    batch = next(iter(build_sem_seg_train_loader(train, 2, seed=1)))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["sem_seg"].dtype == torch.long
    assert set(batch["sem_seg"].unique().tolist()) <= set(range(5)) | {255}
    val = ade20k_dataset(paths["ade20k_root"], "validation", class_names=toy_world.SHAPES,
                         transform=SegTestTransform((96, 24)))
    evaluator = SemSegEvaluator(5, class_names=toy_world.SHAPES)
    for batch in build_sem_seg_test_loader(val, 2):
        assert batch["image"].shape[-2:] == (24, 24) and batch["ori_size"][0] == (48, 48)
        # perfect logits at the label map's size score 100
        logits = [torch.nn.functional.one_hot(s.clamp(max=4), 5).permute(2, 0, 1).float()
                  for s in batch["sem_seg"]]
        evaluator.process(batch, logits)
    assert evaluator.evaluate()["sem_seg"]["aAcc"] == 100.0
