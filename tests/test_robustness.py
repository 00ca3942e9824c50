"""Robustness sets (public folder formats) and Table 5 scoring, checked by hand on toy folders.

A fake classifier predicts the class written into each image's pixel value, so every expected
accuracy below is computed by hand from the files written here.
"""
import importlib.util
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from eva_core.classification.datasets import (EvalSetLayoutError, ImageNetA, ImageNetReaL, ImageNetV2,
                                              ImageNetVal, ObjectNet, build_eval_set, imagenet_classes)
from eva_core.classification.robustness import (TABLE5_SETS, evaluate_robustness, evaluate_set,
                                                format_table, table5_summary)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
C = 10
CLASSES = [f"n{i:08d}" for i in range(C)]


def load_tool():
    spec = importlib.util.spec_from_file_location("eval_robustness", ROOT / "tools" / "eval_robustness.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class PixelOracle(torch.nn.Module):
    """Predicts class p for an image whose red channel is 20 * p / 255 (decoded from the mean).

    Logits rank classes by distance to p (ties to the lower index): p, p-1, p+1, p-2, ...
    """

    def forward(self, x):
        p = torch.round(x[:, 0].mean(dim=(1, 2)) * 255 / 20)
        c = torch.arange(C, dtype=torch.float32)
        return -(c[None] - p[:, None]) ** 2 - 0.01 * c[None]


def write(path, pred, border=0, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full((size, size, 3), 20 * pred, dtype=np.uint8)
    if border:
        a[:border], a[-border:], a[:, :border], a[:, -border:] = 255, 255, 255, 255
    Image.fromarray(a).save(path)


def make_world(tmp: Path) -> dict:
    """Toy versions of every set; returns {set name: root}. Expected accuracies in EXPECTED."""
    # IN-1K-style wnid folders: (label, pred): (0,0) top1; (1,3) top5 only (3,2,4,1,..);
    # (2,2) top1; (5,0) miss (0,1,2,3,4)  -> top1 50, top5 75
    for i, (label, pred) in enumerate([(0, 0), (1, 3), (2, 2), (5, 0)]):
        write(tmp / "val" / CLASSES[label] / f"im{i}.png", pred)
        write(tmp / "sketch" / CLASSES[label] / f"im{i}.png", pred)
    # V2: folders named by class index: (0,0) ok, (3,4) top5 only, (7,7) ok -> 66.7 / 100
    for i, (label, pred) in enumerate([(0, 0), (3, 4), (7, 7)]):
        write(tmp / "v2" / str(label) / f"{i}.jpeg".replace("jpeg", "png"), pred)
    # ReaL: flat val files + real.json; file 2 has no ReaL label -> excluded.
    # preds: f1 p=1 in {0,1} ok; f3 p=6 vs {5}: top5 only; f4 p=9 vs {2,3}: miss -> 33.3 / 66.7
    real = [[0, 1], [], [5], [2, 3]]
    for i, pred in enumerate([1, 0, 6, 9]):
        write(tmp / "real" / f"ILSVRC2012_val_{i + 1:08d}.png", pred)
    (tmp / "real" / "real.json").write_text(json.dumps(real))
    # IN-A / IN-R: only folders of classes 1, 4, 7 (the subset). (1,p2): restricted argmax 1 ok;
    # (4,p9): restricted argmax 7 miss, top5 (3 classes) ok; (7,7) ok -> 66.7 / 100.
    # Without the subset restriction the first would be wrong (argmax 2).
    for name in ("imagenet-a", "imagenet-r"):
        for i, (label, pred) in enumerate([(1, 2), (4, 9), (7, 7)]):
            write(tmp / name / CLASSES[label] / f"im{i}.png", pred)
    # ObjectNet: IN-1K names listed in reverse 2012-id order to exercise the pytorch-id mapping.
    on = tmp / "objectnet"
    maps = on / "mappings"
    maps.mkdir(parents=True)
    (maps / "imagenet_to_label_2012_v2").write_text("\n".join(f"name{9 - i}" for i in range(C)) + "\n")
    (maps / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(k): 9 - k for k in range(C)}))
    (maps / "folder_to_objectnet_label.json").write_text(json.dumps(
        {"alarm_clock": "Alarm clock", "banana": "Banana", "teapot_like": "Teapot like"}))
    (maps / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {"Alarm clock": "name3; name5", "Banana": "name8"}))
    # subset {3,5,8}; alarm clock {3,5}: p5 ok; p4 -> restricted argmax 3 ok; banana {8}: p0 ->
    # order 3,5,8: top1/top2 miss, top5 ok. teapot_like has no IN-1K class: not scored.
    # Images carry a 2-px white border that ObjectNet's loader must crop.
    for i, (folder, pred) in enumerate([("alarm_clock", 5), ("alarm_clock", 4), ("banana", 0),
                                        ("teapot_like", 1)]):
        write(on / "images" / folder / f"{i}.png", pred, border=2)
    return {"imagenet": str(tmp / "val"), "imagenet_v2": str(tmp / "v2"), "imagenet_real": str(tmp / "real"),
            "imagenet_a": str(tmp / "imagenet-a"), "imagenet_r": str(tmp / "imagenet-r"),
            "imagenet_sketch": str(tmp / "sketch"), "objectnet": str(on)}


EXPECTED = {  # (top1, top5, num_samples)
    "imagenet": (50.0, 75.0, 4), "imagenet_v2": (200 / 3, 100.0, 3), "imagenet_real": (100 / 3, 200 / 3, 3),
    "imagenet_a": (200 / 3, 100.0, 3), "imagenet_r": (200 / 3, 100.0, 3), "imagenet_sketch": (50.0, 75.0, 4),
    "objectnet": (200 / 3, 100.0, 3),
}


def build_sets(roots, transform=None):
    out = {}
    for name, root in roots.items():
        kw = {"num_classes": C} if name in ("imagenet_v2", "objectnet") else {"classes": CLASSES}
        out[name] = build_eval_set(name, root, transform, **kw)
    return out


def test_table5_avg_and_gap_reproduce_the_paper_row():
    paper = dict(zip(TABLE5_SETS, (89.6, 81.6, 90.8, 86.2, 88.3, 67.7)))
    s = table5_summary({**paper, "objectnet": 10.0})  # extra sets are not averaged
    assert round(s["avg"], 1) == 84.0 and round(s["gap"], 1) == 5.6
    with pytest.raises(KeyError, match="imagenet_sketch"):
        table5_summary({k: v for k, v in paper.items() if k != "imagenet_sketch"})


def test_each_set_matches_hand_computed_accuracy(tmp_path):
    sets = build_sets(make_world(tmp_path))
    model = PixelOracle()
    for name, ds in sets.items():
        r = evaluate_set(model, ds, batch_size=2)
        top1, top5, n = EXPECTED[name]
        assert r["top1"] == pytest.approx(top1) and r["top5"] == pytest.approx(top5), name
        assert r["num_samples"] == n, name
    # the subset restriction is what makes IN-A's first image right
    assert sets["imagenet_a"].class_subset == [1, 4, 7]
    assert sets["objectnet"].class_subset == [3, 5, 8]
    r = evaluate_set(model, sets["objectnet"], topk=(1, 2))
    assert r["top2"] == pytest.approx(200 / 3)
    # ReaL keeps the original folder-less label -1 but scores on real_labels
    assert sets["imagenet_real"][0]["real_labels"].nonzero().flatten().tolist() == [0, 1]


def test_objectnet_border_is_cropped_before_the_transform(tmp_path):
    roots = make_world(tmp_path)
    uncropped = ObjectNet(roots["objectnet"], num_classes=C, border_px=0)
    assert uncropped[0]["image"].shape[-1] == 8
    assert ObjectNet(roots["objectnet"], num_classes=C)[0]["image"].shape[-1] == 4
    # with the white border left in, the oracle misreads every image
    assert evaluate_set(PixelOracle(), uncropped)["top1"] < 50


def test_robustness_report_averages_six_columns(tmp_path):
    res = evaluate_robustness(PixelOracle(), build_sets(make_world(tmp_path)), batch_size=3)
    top1 = [EXPECTED[s][0] for s in TABLE5_SETS]
    assert res["avg"] == pytest.approx(sum(top1) / 6)
    assert res["gap"] == pytest.approx(50.0 - sum(top1) / 6)
    table = format_table({8: res})
    assert "| 8 | top1 | 50.0 | 66.7 | 33.3 | 66.7 | 66.7 | 50.0 | 66.7 |" in table


def test_tool_multi_resolution_writes_json_and_table(tmp_path):
    tool = load_tool()
    roots = make_world(tmp_path / "sets")
    out = tmp_path / "out"
    # resize keeps the constant images constant, so the oracle's accuracies hold at every size
    results = tool.run(PixelOracle(), roots, [8, 12], mean=(0, 0, 0), std=(1, 1, 1), batch_size=4,
                       classes=CLASSES, output_dir=str(out))
    saved = json.loads((out / "robustness.json").read_text())
    assert set(saved) == {"8", "12"}
    assert {str(k) for k in results} == set(saved)
    for res in ("8", "12"):
        for name, (top1, top5, n) in EXPECTED.items():
            assert saved[res]["sets"][name]["top1"] == pytest.approx(top1), (res, name)
            assert saved[res]["sets"][name]["top5"] == pytest.approx(top5), (res, name)
    assert "| 12 | top1 |" in (out / "robustness.md").read_text()


def test_tool_cli_with_a_registered_model(tmp_path):
    tool = load_tool()
    roots = make_world(tmp_path / "sets")
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("\n".join(CLASSES))
    out = tmp_path / "out"
    kwargs = json.dumps(dict(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, num_classes=C))
    results = tool.main(["--model", "eva_tiny_patch16_224", "--model-kwargs", kwargs, "--device", "cpu",
                         "--set", f"imagenet={roots['imagenet']}",
                         "--set", f"imagenet_a={roots['imagenet_a']}",
                         "--classes-file", str(classes_file), "--resolutions", "16", "--num-workers", "0",
                         "--output-dir", str(out)])
    assert results[16]["sets"]["imagenet"]["num_samples"] == 4
    assert (out / "robustness.md").exists()
    with pytest.raises(SystemExit, match="unknown set"):
        tool.parse_sets(["imagenet_b=/x"])


def test_bad_layouts_give_clear_errors(tmp_path):
    roots = make_world(tmp_path)
    with pytest.raises(EvalSetLayoutError, match="not class ids"):
        ImageNetVal(roots["imagenet_v2"], classes=CLASSES)  # digit folders are not wnids
    with pytest.raises(EvalSetLayoutError, match="not a class index"):
        ImageNetV2(roots["imagenet"], num_classes=C)  # wnid folders are not indices
    bad = tmp_path / "bad_real.json"
    bad.write_text(json.dumps([[0], [1]]))
    with pytest.raises(EvalSetLayoutError, match="2 label lists but"):
        ImageNetReaL(roots["imagenet_real"], real_json=bad, classes=CLASSES)
    bad.write_text(json.dumps([[0], [1], [99], []]))
    with pytest.raises(EvalSetLayoutError, match="class indices"):
        ImageNetReaL(roots["imagenet_real"], real_json=bad, classes=CLASSES)
    with pytest.raises(EvalSetLayoutError, match="folder not found"):
        ImageNetA(tmp_path / "missing", classes=CLASSES)
    os.remove(Path(roots["objectnet"]) / "mappings" / "imagenet_to_label_2012_v2")
    with pytest.raises(EvalSetLayoutError, match="imagenet_to_label_2012_v2"):
        ObjectNet(roots["objectnet"], num_classes=C)
    with pytest.raises(KeyError, match="unknown evaluation set"):
        build_eval_set("imagenet_c", roots["imagenet"])


def test_default_label_space_is_timm_in1k():
    classes = imagenet_classes()
    assert len(classes) == 1000 and classes[0] == "n01440764"
