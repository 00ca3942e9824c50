"""Mask2Former-EVA outputs: PNG label maps that read back, colourised overlays, the demo script."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mask2former_eva.data import ADE20K_PALETTE, ade20k_dataset, palette_for
from mask2former_eva.visualize import colorize, overlay, save_label_png, save_overlay


def test_label_png_round_trips_through_the_ade20k_reader_with_reduce_zero_label(tmp_path):
    labels = np.array([[0, 149, 255], [7, 255, 3]])
    save_label_png(labels, tmp_path / "annotations/validation/a.png", reduce_zero_label=True)
    stored = np.asarray(Image.open(tmp_path / "annotations/validation/a.png"))
    assert stored.tolist() == [[1, 150, 0], [8, 0, 4]]  # ADE20K's png values: class + 1, 0 = other
    (tmp_path / "images/validation").mkdir(parents=True)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "images/validation/a.jpg")
    assert ade20k_dataset(tmp_path, "validation")[0]["sem_seg"].tolist() == labels.tolist()


def test_label_png_from_logits_is_their_argmax_and_refuses_ids_beyond_8_bits(tmp_path):
    logits = torch.zeros(3, 2, 2)
    logits[2, 0, 0] = logits[1, 1, 1] = 1.0
    save_label_png(logits, tmp_path / "p.png")
    assert np.asarray(Image.open(tmp_path / "p.png")).tolist() == [[2, 0], [0, 1]]
    with pytest.raises(ValueError, match=r"q\.png: class ids 0\.\.300 do not fit an 8-bit PNG"):
        save_label_png(np.array([[0, 300]]), tmp_path / "q.png")


def test_colorize_uses_the_ade20k_palette_and_draws_ignore_black():
    out = colorize(np.array([[0, 1], [149, 255]]))
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    expected = [ADE20K_PALETTE[0], ADE20K_PALETTE[1], ADE20K_PALETTE[149], (0, 0, 0)]
    assert [tuple(c) for c in out.reshape(-1, 3)] == expected
    assert len(set(palette_for(171))) == 171  # COCO-Stuff's 171 classes get distinct colours
    with pytest.raises(ValueError, match="class id 5 has no colour in a palette of 3"):
        colorize(np.array([[5]]), palette_for(3))


def test_overlay_blends_image_and_colours_as_mmseg_with_opacity(tmp_path):
    image = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 0], [255, 0]])
    out = overlay(image, labels, opacity=0.5)
    expected = np.round(100 * 0.5 + np.array(ADE20K_PALETTE[0]) * 0.5).astype(np.uint8)
    assert out[0, 0].tolist() == expected.tolist()
    assert out[1, 0].tolist() == [50, 50, 50]  # ignore: the image darkened by black at 0.5
    assert overlay(image, labels, opacity=0.0).tolist() == image.tolist()
    path = save_overlay(image, labels, tmp_path / "o.png")
    assert np.asarray(Image.open(path)).tolist() == out.tolist()
    with pytest.raises(ValueError, match=r"image is 2x2 \(WxH\) but the prediction is 3x1"):
        overlay(image, np.zeros((1, 3), int))


def _demo_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "projects/Mask2Former-EVA/demo.py"
    spec = importlib.util.spec_from_file_location("mask2former_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_writes_a_label_png_and_an_overlay_per_image_with_a_tiny_random_model(tmp_path, capsys):
    from pathlib import Path

    from eva_core.checkpoint import save_atomic
    from eva_core.config import LazyConfig, instantiate
    from eva_core.data import toy_world

    config = Path(__file__).resolve().parents[1] / "projects/Mask2Former-EVA/configs/toy/mask2former_toy.py"
    torch.manual_seed(0)
    model = instantiate(LazyConfig.load(str(config)).model).eval()
    save_atomic({"model": model.state_dict()}, tmp_path / "model.pth")
    paths = toy_world.make_ade20k(tmp_path / "data", num_train=1, num_val=2, img_size=96)
    images = sorted(Path(paths["ade20k_val_images"]).iterdir())
    demo = _demo_module()
    assert demo.main(["--config-file", str(config), "--checkpoint", str(tmp_path / "model.pth"),
                      "--input", paths["ade20k_val_images"], "--output", str(tmp_path / "out")]) == 0
    for image_path in images:
        labels = np.asarray(Image.open(tmp_path / "out" / f"{image_path.stem}.png"))
        blend = np.asarray(Image.open(tmp_path / "out" / f"{image_path.stem}_overlay.png"))
        assert labels.shape == (96, 96) and labels.max() < 5 and blend.shape == (96, 96, 3)
        # the written map is the model's own prediction on the normalised image
        image = np.array(Image.open(image_path).convert("RGB"))
        expected = demo.segment(model, image).argmax(0).numpy()
        assert (labels == expected).all()
        assert (blend == overlay(image, expected, num_classes=5)).all()
    assert str(images[0]) in capsys.readouterr().out


def test_demo_refuses_a_missing_input_and_a_checkpoint_that_does_not_fill_the_model(tmp_path, capsys):
    from pathlib import Path

    from eva_core.checkpoint import save_atomic

    config = Path(__file__).resolve().parents[1] / "projects/Mask2Former-EVA/configs/toy/mask2former_toy.py"
    demo = _demo_module()
    save_atomic({"model": {"backbone.level_embed": torch.zeros(3, 64)}}, tmp_path / "partial.pth")
    args = ["--config-file", str(config), "--output", str(tmp_path / "out"), "--checkpoint",
            str(tmp_path / "partial.pth")]
    assert demo.main(args + ["--input", str(tmp_path / "nope.jpg")]) == 2
    assert "nope.jpg does not exist" in capsys.readouterr().err
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.jpg")
    assert demo.main(args + ["--input", str(tmp_path / "a.jpg")]) == 2
    assert "partial.pth" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
