"""projects/ViTDet-EVA/demo.py: a tiny random ViTDet-EVA on toy images -> COCO results json + drawn PNGs."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eva_core.checkpoint import save_atomic
from eva_core.config import LazyConfig, instantiate
from eva_core.data.toy_world import make_coco
from vitdet_eva.toy_stage import toy_detection_config

DEMO = Path(__file__).resolve().parents[1] / "projects" / "ViTDet-EVA" / "demo.py"


def _demo_module():
    spec = importlib.util.spec_from_file_location("vitdet_eva_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory):
    """Toy COCO data (2 val images), the toy config and a saved random model: ``(paths, config, ckpt)``."""
    root = tmp_path_factory.mktemp("demo")
    paths = make_coco(root / "toy", num_train=2, num_val=2, seed=3)
    cfg = toy_detection_config("coco", paths, root / "run", 1)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    ckpt = root / "model.pth"
    save_atomic({"model": model.state_dict()}, ckpt)
    config_file = root / "config.yaml"
    LazyConfig.save(cfg, str(config_file))
    return paths, config_file, ckpt


def test_demo_writes_coco_results_and_pngs_with_boxes_masks_and_names(tiny_detector, tmp_path):
    from pycocotools.coco import COCO

    paths, config_file, ckpt = tiny_detector
    out = tmp_path / "out"
    # a random model scores every class near 1/6: threshold 0.1 draws some detections
    summary = _demo_module().main(["--config-file", str(config_file), "--input", paths["coco_val_images"],
                                   "--output", str(out), "--categories-json", paths["coco_val_json"],
                                   "--confidence-threshold", "0.1", f"train.init_checkpoint={ckpt}"])
    gt = COCO(paths["coco_val_json"])
    results = json.loads((out / "results.json").read_text())
    assert len(results) == sum(summary["num_detections"].values()) > 0
    assert {r["image_id"] for r in results} <= set(gt.getImgIds())  # ids read off the json by file name
    assert {r["category_id"] for r in results} <= set(gt.getCatIds())
    assert all("segmentation" in r and len(r["bbox"]) == 4 for r in results)
    gt.loadRes(str(out / "results.json"))  # pycocotools accepts the file as it is
    assert len(summary["pngs"]) == 2
    for png, image_file in zip(summary["pngs"], sorted(Path(paths["coco_val_images"]).iterdir())):
        drawn = np.asarray(Image.open(png).convert("RGB"))
        original = np.asarray(Image.open(image_file).convert("RGB"))
        assert drawn.shape == original.shape
        assert summary["num_drawn"][str(image_file)] > 0
        assert (drawn != original).any(axis=-1).mean() > 0.01  # boxes, masks and labels changed pixels


def test_draw_detections_puts_the_class_colour_on_the_box_outline_and_mask():
    from vitdet_eva.structures import Instances

    demo = _demo_module()
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    mask = torch.zeros(1, 40, 60, dtype=torch.bool)
    mask[0, 12:28, 22:38] = True
    inst = Instances((40, 60), pred_boxes=torch.tensor([[20.0, 10.0, 40.0, 30.0]]),
                     scores=torch.tensor([0.9]), pred_classes=torch.tensor([2]), pred_masks=mask)
    drawn = np.asarray(demo.draw_detections(image, inst, ["a", "b", "c"], threshold=0.5))
    colour = np.array(demo.class_colors(3)[2])
    assert (drawn[30, 30] == colour).all()  # bottom edge of the box, width 2, drawn in the class colour
    inside = drawn[25, 35].astype(float)  # mask overlay (below the label): 45% of the colour on black
    np.testing.assert_allclose(inside, 0.45 * colour, atol=1.5)
    assert (drawn[2, 2] == 0).all()  # away from the detection nothing changes
    below = demo.draw_detections(image, inst, ["a", "b", "c"], threshold=0.95)
    assert not np.asarray(below).any()  # under the confidence threshold nothing is drawn


def test_demo_refuses_a_missing_input_and_a_category_count_that_differs_from_the_model(tiny_detector,
                                                                                        tmp_path, capsys):
    paths, config_file, ckpt = tiny_detector
    demo = _demo_module()
    with pytest.raises(SystemExit) as e:
        demo.main(["--config-file", str(config_file), "--input", str(tmp_path / "nope.jpg"), "--output",
                   str(tmp_path / "o"), f"train.init_checkpoint={ckpt}"])
    assert e.value.code == 2 and "nope.jpg: no such file or folder" in capsys.readouterr().err
    bad = tmp_path / "three.json"
    bad.write_text(json.dumps({"categories": [{"id": i, "name": str(i)} for i in (1, 2, 3)]}))
    with pytest.raises(SystemExit) as e:
        demo.main(["--config-file", str(config_file), "--input", paths["coco_val_images"], "--output",
                   str(tmp_path / "o"), "--categories-json", str(bad), f"train.init_checkpoint={ckpt}"])
    assert e.value.code == 2
    assert "three.json: 3 categories but the model has num_classes=5" in capsys.readouterr().err


def test_max_drawn_keeps_the_best_scoring_detections_above_the_threshold():
    demo = _demo_module()
    scores = torch.tensor([0.3, 0.9, 0.05, 0.6, 0.6])
    assert demo.drawn_indices(scores, 0.1).tolist() == [1, 3, 4, 0]
    assert demo.drawn_indices(scores, 0.1, max_drawn=2).tolist() == [1, 3]
    assert demo.drawn_indices(scores, 0.0, max_drawn=10).tolist() == [1, 3, 4, 0, 2]
    assert demo.drawn_indices(scores, 0.95).tolist() == []
