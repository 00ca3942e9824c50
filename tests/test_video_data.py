"""Video data pipeline and multi-view testing (docs/recipes/video.md#sampling-and-augmentation)."""
from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from eva_core.data import build_test_loader, build_train_loader
from eva_core.data.loader import SeededSampleDataset
from eva_core.data.toy_world import make_kinetics
from video.data.datasets import (CorruptVideoError, KineticsCsvDataset, KineticsListDataset,
                                 VideoClipDataset, count_frames, measure_decode_throughput, tsn_indices)
from video.data.transforms import (MULTISCALE_CROP_SCALES, VideoTestTransform, VideoTrainTransform,
                                   multiscale_crop_box, three_crop_boxes)
from video.evaluation import MultiViewVideoClassifier, average_view_scores, evaluate_multi_view

NUM_VIDEO_FRAMES = 12


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    return make_kinetics(out, train_per_class=1, val_per_class=1, img_size=32,
                         num_frames=NUM_VIDEO_FRAMES, seed=0)


def pyav_frames(path: str) -> np.ndarray:
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def as_clip(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


def list_dataset(kinetics, **kwargs) -> KineticsListDataset:
    return KineticsListDataset(kinetics["kinetics_val_list"], kinetics["kinetics_root"], **kwargs)


# ----------------------------------------------------------------------------- sampling
def test_tsn_test_indices_take_the_centre_of_each_segment():
    assert tsn_indices(12, 4, train=False) == [1, 4, 7, 10]
    # 4 clips: each segment of 3 frames sampled at (k + 0.5) / 4 of it
    assert [tsn_indices(12, 4, train=False, clip=k, num_clips=4) for k in range(4)] == [
        [0, 3, 6, 9], [1, 4, 7, 10], [1, 4, 7, 10], [2, 5, 8, 11]]
    assert tsn_indices(2, 4, train=False) == [0, 0, 1, 1]  # a short video repeats frames


def test_tsn_train_indices_fall_one_in_each_segment_and_follow_the_seed():
    draws = []
    for seed in range(40):
        torch.manual_seed(seed)
        idx = tsn_indices(96, 8, train=True)
        assert all(12 * s <= i < 12 * (s + 1) for s, i in enumerate(idx))
        draws.append(tuple(idx))
    assert len(set(draws)) > 30
    torch.manual_seed(3)
    again = tsn_indices(96, 8, train=True)
    assert tuple(again) == draws[3]
    with pytest.raises(ValueError, match="0 frames"):
        tsn_indices(0, 8, train=True)


# ----------------------------------------------------------------------------- decoding
def test_decoded_frames_equal_pyavs_own_decode_of_the_tsn_indices(kinetics):
    ds = list_dataset(kinetics, num_frames=4, train=False)
    sample = ds[2]
    reference = pyav_frames(sample["path"])
    assert len(reference) == NUM_VIDEO_FRAMES
    assert sample["video"].shape == (4, 3, 32, 32) and sample["video"].dtype == torch.float32
    assert torch.equal(sample["video"], as_clip(reference[[1, 4, 7, 10]]))
    assert sample["label"] == 2 and sample["index"] == 2


def test_a_container_without_a_frame_count_is_counted_by_decoding(tmp_path):
    from fractions import Fraction

    path = tmp_path / "no_count.mkv"
    with av.open(str(path), mode="w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(8, 1))
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for t in range(10):
            frame = np.full((32, 32, 3), 20 * t, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # matroska keeps no count in the header
    assert count_frames(str(path)) == 10
    ds = VideoClipDataset([(str(path), 0)], num_frames=4, train=False)
    assert torch.equal(ds[0]["video"], as_clip(pyav_frames(str(path))[[1, 3, 6, 8]]))


def test_decord_backend_decodes_the_same_frames_as_pyav(kinetics):
    pytest.importorskip("decord")
    pyav_ds = list_dataset(kinetics, num_frames=4, train=False)
    decord_ds = list_dataset(kinetics, num_frames=4, train=False, backend="decord")
    assert torch.equal(pyav_ds[0]["video"], decord_ds[0]["video"])


def test_train_clips_are_a_pure_function_of_seed_and_stream_position(kinetics):
    ds = list_dataset(kinetics, num_frames=4, train=True, transform=VideoTrainTransform(24))
    a = SeededSampleDataset(ds, seed=7)[(1, 5)]["video"]
    b = SeededSampleDataset(ds, seed=7)[(1, 5)]["video"]
    c = SeededSampleDataset(ds, seed=7)[(1, 6)]["video"]
    assert a.shape == (4, 3, 24, 24)
    assert torch.equal(a, b) and not torch.equal(a, c)
    first = next(iter(build_train_loader(ds, 2, seed=3)))["video"]
    again = next(iter(build_train_loader(ds, 2, seed=3)))["video"]
    assert torch.equal(first, again)


# ----------------------------------------------------------------------------- transforms
def test_train_transform_keeps_a_clip_of_identical_frames_identical():
    frame = torch.rand(1, 3, 40, 56)
    clip = frame.expand(5, -1, -1, -1).clone()
    transform = VideoTrainTransform(32)
    outputs = []
    for seed in range(30):
        torch.manual_seed(seed)
        out = transform(clip)
        assert out.shape == (5, 3, 32, 32)
        assert all(torch.equal(out[0], out[t]) for t in range(1, 5))
        outputs.append(out[0])
    assert len({o.sum().item() for o in outputs}) > 20  # the augmentation does vary per sample


def test_train_transform_applies_the_same_parameters_to_every_frame():
    clip = torch.rand(4, 3, 40, 56)
    transform = VideoTrainTransform(32)
    for seed in range(15):
        torch.manual_seed(seed)
        whole = transform(clip)
        for t in range(4):
            torch.manual_seed(seed)
            assert torch.allclose(transform(clip[t:t + 1])[0], whole[t], atol=1e-6)


def test_train_transform_turns_about_one_clip_in_five_gray_and_is_identity_with_everything_off():
    clip = torch.rand(2, 3, 20, 20)
    transform = VideoTrainTransform(16, mean=None, std=None)
    gray = 0
    for seed in range(400):
        torch.manual_seed(seed)
        out = transform(clip)
        gray += bool(torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2]))
    assert 0.13 < gray / 400 < 0.27  # p = 0.2; 3.5 binomial standard deviations
    off = VideoTrainTransform(20, scales=(1.0,), resize_short=0, hflip=0, color_jitter=0, grayscale=0,
                              mean=None, std=None)
    assert torch.equal(off(clip), clip)


def test_multiscale_crop_uses_tsn_scales_one_step_apart_at_fixed_positions():
    sides = [int(240 * s) for s in MULTISCALE_CROP_SCALES]  # 240, 210, 180, 158
    seen = set()
    for seed in range(300):
        torch.manual_seed(seed)
        top, left, h, w = multiscale_crop_box(240, 320, 224)
        assert h in sides and w in sides and abs(sides.index(h) - sides.index(w)) <= 1
        assert top in {q * ((240 - h) // 4) for q in range(5)}
        assert left in {q * ((320 - w) // 4) for q in range(5)}
        seen.add((h, w))
    assert len(seen) == 10  # 4 equal pairs + 6 one-step pairs
    torch.manual_seed(0)
    # sides within 3 px of the output size snap to it
    assert {multiscale_crop_box(226, 300, 224)[2] for _ in range(200)} >= {224}


def test_test_transform_three_crops_span_the_longer_side():
    clip = torch.rand(2, 3, 32, 48)
    views = VideoTestTransform(32, num_crops=3, mean=None, std=None)(clip)
    assert views.shape == (3, 2, 3, 32, 32)
    for j, left in enumerate((0, 8, 16)):
        assert torch.equal(views[j], clip[..., left:left + 32])
    assert three_crop_boxes(48, 32, 32) == [(0, 0, 32, 32), (8, 0, 32, 32), (16, 0, 32, 32)]
    centre = VideoTestTransform(32, num_crops=1, resize_short=32, mean=None, std=None)(clip)
    assert torch.equal(centre, clip[..., 8:40])
    # one view: the release's centre 224 crop of the 256 resize
    one = VideoTestTransform(224, num_crops=1, mean=None, std=None)
    assert one.resize_short == 256 and VideoTestTransform(224, num_crops=3).resize_short == 224
    big = torch.rand(1, 3, 256, 320)
    assert torch.equal(one(big), big[..., 16:240, 48:272])


# ----------------------------------------------------------------------------- multi-view
def test_four_by_three_views_cover_the_expected_clips_and_crops(kinetics):
    ds = list_dataset(kinetics, num_frames=4, train=False, num_clips=4,
                      transform=VideoTestTransform(32, num_crops=3, mean=None, std=None))
    sample = ds[1]
    video = sample["video"]
    assert video.shape == (12, 4, 3, 32, 32)
    frames = as_clip(pyav_frames(sample["path"]))
    for k in range(4):
        clip = frames[tsn_indices(NUM_VIDEO_FRAMES, 4, train=False, clip=k, num_clips=4)]
        expected = VideoTestTransform(32, num_crops=3, mean=None, std=None)(clip)
        for j in range(3):
            assert torch.equal(video[k * 3 + j], expected[j]), (k, j)


class _ChannelMeanModel(torch.nn.Module):
    """Logits = per-channel mean of the clip: the views' logits are set by their pixels."""

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return clips.mean(dim=(1, 3, 4))


class _ViewDataset(Dataset):
    def __init__(self, view_logits: torch.Tensor, labels: list[int]):
        self.view_logits, self.labels = view_logits, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        video = self.view_logits[i].view(-1, 1, 3, 1, 1).expand(-1, 2, 3, 4, 4).clone()
        return {"video": video, "label": self.labels[i], "index": i}


def test_view_averaging_and_top1_equal_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    view_logits = torch.randn(6, 12, 3, generator=g) * 3
    labels = [0, 1, 2, 0, 1, 2]
    probs = average_view_scores(view_logits)
    hand = np.exp(view_logits.numpy()) / np.exp(view_logits.numpy()).sum(-1, keepdims=True)
    assert np.allclose(probs.numpy(), hand.mean(1), atol=1e-6)
    # averaging probabilities is not averaging logits: the hand computation decides
    hand_top1 = 100.0 * np.mean(hand.mean(1).argmax(1) == np.array(labels))
    hand_top2 = 100.0 * np.mean([labels[i] in np.argsort(-hand.mean(1)[i])[:2] for i in range(6)])
    results = evaluate_multi_view(_ChannelMeanModel(), _ViewDataset(view_logits, labels), batch_size=4,
                                  topk=(1, 2))
    assert results["num_samples"] == 6
    assert results["top1"] == pytest.approx(hand_top1)
    assert results["top2"] == pytest.approx(hand_top2)
    wrapped = MultiViewVideoClassifier(_ChannelMeanModel(), views_per_forward=5)
    batch = torch.stack([_ViewDataset(view_logits, labels)[i]["video"] for i in range(6)])
    assert torch.allclose(wrapped({"video": batch}), probs, atol=1e-6)


def test_eva_video_runs_through_multi_view_testing(kinetics):
    from video import create_video_model

    model = create_video_model("eva_video_tiny_patch14_224_f8", img_size=28, num_frames=4, num_classes=4,
                               depth=1).eval()
    ds = list_dataset(kinetics, num_frames=4, train=False, num_clips=4,
                      transform=VideoTestTransform(28, num_crops=3))
    results = evaluate_multi_view(model, ds, batch_size=2)
    assert results["num_samples"] == 4 and set(results) >= {"top1", "top5"}
    assert results["top5"] == 100.0  # 4 classes
    with torch.no_grad():
        views = ds[0]["video"]
        hand = model(views).softmax(-1).mean(0)
        assert torch.allclose(MultiViewVideoClassifier(model)({"video": views[None]})[0], hand, atol=1e-5)


# ----------------------------------------------------------------------------- corrupt videos
@pytest.fixture()
def with_corrupt(kinetics, tmp_path):
    root = Path(kinetics["kinetics_root"])
    lines = Path(kinetics["kinetics_val_list"]).read_text().splitlines()
    (root / "videos" / "junk.mp4").write_bytes(b"\x00\x00\x00 not an mp4 at all" * 10)
    lines.insert(1, "videos/junk.mp4 1")
    list_file = tmp_path / "with_junk.txt"
    list_file.write_text("\n".join(lines) + "\n")
    return list_file, root


def test_corrupt_video_is_replaced_and_counted_in_training(with_corrupt):
    list_file, root = with_corrupt
    ds = KineticsListDataset(list_file, root, num_frames=4, train=True)
    sample = ds[1]
    assert ds.num_skipped == 1
    assert sample["path"].endswith("moving_right_0000.mp4") and sample["index"] == 2


def test_corrupt_video_is_excluded_and_counted_in_testing(with_corrupt):
    list_file, root = with_corrupt
    ds = KineticsListDataset(list_file, root, num_frames=4, train=False, num_clips=4,
                             transform=VideoTestTransform(32, num_crops=3))
    loader = build_test_loader(ds, 2)
    seen = [p for batch in loader for p in batch["path"]]
    assert len(seen) == 4 and not any(p.endswith("junk.mp4") for p in seen)
    assert loader.num_skipped == 1 and loader.skipped_paths[0].endswith("junk.mp4")
    results = evaluate_multi_view(_ChannelMeanModelFour(), ds, batch_size=2)
    assert results["num_samples"] == 4 and results["num_skipped"] == 1


class _ChannelMeanModelFour(torch.nn.Module):
    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        m = clips.mean(dim=(1, 3, 4))
        return torch.cat([m, m[:, :1]], dim=1)  # 4 classes


def test_corrupt_video_is_fatal_when_strict_and_names_the_file(with_corrupt):
    list_file, root = with_corrupt
    for train in (True, False):
        ds = KineticsListDataset(list_file, root, num_frames=4, train=train, strict=True)
        with pytest.raises(CorruptVideoError, match="junk.mp4"):
            ds[1]


# ----------------------------------------------------------------------------- official csv
def test_official_csv_rows_map_to_clip_files_and_label_indices(kinetics, tmp_path):
    root = Path(kinetics["kinetics_root"])
    clips = tmp_path / "clips"
    clips.mkdir()
    rows = [("moving left", "abcdefghijk", 10, 20, "validate", "moving_left_0000"),
            ("moving up", "A-b_C1234xy", 0, 10, "validate", "moving_up_0000"),
            ("moving left", "zzzzzzzzzzz", 3, 13, "train", "moving_left_0000")]
    for _, yid, start, end, _, src in rows:
        shutil.copy(root / "videos" / "val" / f"{src}.mp4", clips / f"{yid}_{start:06d}_{end:06d}.mp4")
    csv_file = tmp_path / "validate.csv"
    csv_file.write_text("label,youtube_id,time_start,time_end,split\n" +
                        "".join(f"{lab},{yid},{s},{e},{sp}\n" for lab, yid, s, e, sp, _ in rows))
    ds = KineticsCsvDataset(csv_file, clips, split="validate", num_frames=4, train=False)
    assert ds.classes == ["moving left", "moving up"]
    assert [Path(p).name for p, _ in ds.samples] == ["abcdefghijk_000010_000020.mp4",
                                                    "A-b_C1234xy_000000_000010.mp4"]
    assert ds.targets == [0, 1]
    reference = pyav_frames(str(root / "videos" / "val" / "moving_up_0000.mp4"))
    assert torch.equal(ds[1]["video"], as_clip(reference[[1, 4, 7, 10]]))
    classes = tmp_path / "classes.txt"
    classes.write_text("moving_left\nmoving_right\nmoving_up\nmoving_down\n")
    assert KineticsCsvDataset(csv_file, clips, split="validate", classes=classes).targets == [0, 2]
    classes.write_text("moving_left\nmoving_right\n")
    with pytest.raises(ValueError, match=r"validate\.csv:3: label 'moving up' is not in class list"):
        KineticsCsvDataset(csv_file, clips, split="validate", classes=classes)


# ----------------------------------------------------------------------------- throughput
def test_decode_throughput_is_measured_on_the_train_loader(kinetics):
    ds = KineticsListDataset(kinetics["kinetics_train_list"], kinetics["kinetics_root"], num_frames=4,
                             transform=VideoTrainTransform(28))
    stats = measure_decode_throughput(ds, batch_size=2, num_batches=2)
    assert stats["clips"] == 4 and stats["clips_per_s"] > 0
