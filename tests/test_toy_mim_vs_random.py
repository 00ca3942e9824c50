"""``tools/toy_mim_vs_random.py``: the paired MIM-init vs random-init comparison runs both toy tasks on
either label set and summarises the pairs (its measured numbers: docs/recipes/detection.md#toy-world-proof,
docs/recipes/segmentation.md)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import toy_mim_vs_random as tool  # noqa: E402

ARCH = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0)


def test_sign_test_and_summary_of_paired_runs():
    assert tool.sign_test_p(4, 4) == pytest.approx(1 / 16)
    assert tool.sign_test_p(3, 4) == pytest.approx(5 / 16)
    assert tool.sign_test_p(0, 3) == pytest.approx(1.0)
    pairs = [(3, 1), (2, 4), (5, 1)]
    rows = [{"seed": s, "mim": {"m": a}, "random": {"m": b}} for s, (a, b) in enumerate(pairs)]
    s = tool.summarize(rows, "m")
    assert (s["mim_mean"], s["random_mean"], s["diff_mean"], s["wins"], s["n"]) == (
        pytest.approx(10 / 3), 2.0, pytest.approx(4 / 3), 2, 3)
    mean = 4 / 3
    assert s["diff_sd"] == pytest.approx((((2 - mean) ** 2 + (-2 - mean) ** 2 + (4 - mean) ** 2) / 2) ** 0.5)
    assert s["sign_test_p"] == pytest.approx(4 / 8)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    import torch
    from safetensors.torch import save_file

    from eva_core.models import create_model

    torch.manual_seed(0)
    model = create_model("eva_tiny_patch16_224", num_classes=0, use_fc_norm=False, global_pool="token",
                         **ARCH)
    path = tmp_path_factory.mktemp("encoder") / "mim_encoder.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    (path.parent / "results.json").write_text(json.dumps({"encoder_arch": ARCH}))
    return path


@pytest.mark.parametrize("task,kwargs", [
    ("detection", dict(img_size=128, num_train=8, num_val=2, steps=21)),  # warmup 20, batch 8
    ("segmentation", dict(img_size=64, num_train=16, num_val=2, steps=11)),  # warmup 10, batch 16
])
def test_both_arms_train_and_are_scored_on_colour_classes(task, kwargs, encoder, tmp_path):
    lines = []
    results = tool.compare(task, encoder, tmp_path / "run", [0], label="color", log=lines.append, **kwargs)
    assert results["encoder_arch"] == ARCH and results["label"] == "color"
    (row,) = results["rows"]
    metrics = tool.TASKS[task]["metrics"]
    for arm in ("mim", "random"):
        assert set(row[arm]) >= set(metrics)
        assert (tmp_path / "run" / f"{arm}_seed0").is_dir()
    assert set(results["summary"]) == set(metrics) and results["summary"][metrics[0]]["n"] == 1
    assert json.loads((tmp_path / "run" / "results.json").read_text())["rows"][0]["seed"] == 0
    assert lines[0].startswith("seed 0: ") and "MIM ahead on" in lines[-1]
    if task == "segmentation":  # the 8 colour classes, read from the set's meta.json
        from eva_core.data.toy_world import COLORS

        assert {k for k in row["mim"] if k.startswith("IoU-")} == {f"IoU-{c}" for c in COLORS}


def test_missing_encoder_and_unknown_task_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.safetensors"):
        tool.compare("detection", tmp_path / "no_such.safetensors", tmp_path / "out", [0])
    with pytest.raises(ValueError, match="'classification'"):
        tool.compare("classification", tmp_path / "x", tmp_path / "out", [0])
