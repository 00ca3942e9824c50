"""Shared test settings: offline, single-threaded torch, deterministic seeds."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def toy_pipeline_run(tmp_path_factory):
    """``tools/eva_toy_pipeline.py --fast --stages clip`` run once per session (about 2 minutes on one
    core): ``(output folder, CompletedProcess)``. The MIM, transfer and EVA-CLIP proofs read it; the other
    task stages have their own tests (``tests/test_*toy_stage*.py``, ``test_vitdet_toy_proof.py``, ...)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("eva_toy_pipeline")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, str(repo / "tools" / "eva_toy_pipeline.py"), "--out", str(out),
                           "--fast", "--stages", "clip"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc
