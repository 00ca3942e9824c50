"""The toy-world proof: MIM against a trained teacher beats random init on a linear probe."""
import json

import pytest

from eva_core.data.toy_world import COLORS


@pytest.mark.xdist_group("toy_pipeline")
def test_toy_pipeline_mim_lowers_loss_and_beats_random_init_by_a_wide_margin(toy_pipeline_run):
    out, proc = toy_pipeline_run
    res = json.loads((out / "results.json").read_text())
    acc = res["probe_accuracy"]
    # the data is the toy world's colour ImageFolder
    assert res["classes"] == sorted(COLORS)
    assert (out / "toy_world" / "imagefolder_color" / "train" / "red").is_dir()
    # the MIM loss (negative cosine to the teacher) goes down
    assert res["loss_last"] < res["loss_first"] - 0.25, (res["loss_first"], res["loss_last"])
    assert res["loss_last"] < -0.4
    # the teacher learned the task, and MIM transferred it: a wide margin over random init
    assert acc["teacher"] > 0.85, acc
    assert acc["mim"] > acc["random_init"] + 0.2, acc
    assert acc["mim"] > 0.8, acc
    # outputs: loss curve, MIM run through the shared engine (metrics + final weights)
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert (out / "mim" / "metrics.json").exists()
    assert (out / "mim" / "model_final.safetensors").is_file()
    assert "probe top-1" in proc.stdout
