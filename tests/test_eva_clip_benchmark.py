"""benchmarks/clip_step.py (issue 11, Deliver 8; docs/recipes/clip.md#benchmark): it times EvaCLIP against
open_clip's twin of the same size, which must compute the same function with our weights."""
import importlib.util
import json
from pathlib import Path


def _benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "clip_step.py"
    spec = importlib.util.spec_from_file_location("clip_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_clip_step_benchmark_times_ours_and_the_open_clip_twin_on_equal_embeddings(tmp_path, capsys):
    report = _benchmark().main(["--size", "toy", "--batch", "8", "--iters", "2", "--warmup", "1",
                                "--classes", "10", "--device", "cpu", "--no-curation",
                                "--json", str(tmp_path / "r.json")])
    assert report["embedding_max_abs_diff"] <= 1e-5
    for what in ("train_samples_per_s", "zero_shot_images_per_s"):
        rates = report[what]
        assert rates["ours"] > 0 and rates["open_clip"] > 0
        assert abs(rates["ratio"] - rates["ours"] / rates["open_clip"]) < 0.01 * rates["ratio"] + 0.01
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert "train_samples_per_s: ours" in capsys.readouterr().out
