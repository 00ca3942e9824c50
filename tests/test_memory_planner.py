"""The memory planner (eva_core.memory, tools/estimate_memory.py) against measured peaks.

How the peaks are measured (independently of the planner): the real model is built and trained
for two full steps (forward, backward, clipping, AdamW step) on CPU with real tensors, inside
``torch.profiler.profile(profile_memory=True)``. The profiler receives one event from torch's CPU
allocator for every allocation and every free (``[memory]`` events with signed byte counts). The
CPU allocator hands memory back at once (no caching pool), so the running sum of those events,
started before the model exists, is the bytes held by live tensors at each moment and its maximum
is the real peak of tensor memory. The planner never allocates: it follows fake-tensor storages
through a dispatch mode, so the two figures come from different mechanisms.
"""
from __future__ import annotations

import copy
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers import measure_peak_training_memory_cpu
from eva_core.config import LazyConfig
from eva_core.memory import (
    build_meta_model, checkpointing_overrides, estimate_training_memory, suggest_fixes,
)

REPO = Path(__file__).resolve().parents[1]
MiB = 2 ** 20


def load_config(path: str, overrides: list[str]):
    cfg = LazyConfig.load(REPO / path)
    LazyConfig.apply_overrides(cfg, overrides)
    if OmegaConf.select(cfg, "model.teacher.checkpoint") is not None:
        cfg.model.teacher.checkpoint = None  # no teacher file in tests: it keeps its random init
    return cfg


# three small configs built from the real recipes with the real model classes
SMALL_CLASSIFIER = ["model.net.embed_dim=96", "model.net.depth=3", "model.net.num_heads=4",
                    "model.net.img_size=48",
                    "dataloader.train.dataset.transform.img_size=48", "dataloader.train.total_batch_size=16"]
SMALL_CONFIGS = {
    "tiny_classifier_fp32": ("configs/classification/toy_imagefolder.py", SMALL_CLASSIFIER),
    "toy_mim_with_teacher": ("configs/pretrain/toy.py", []),
    "tiny_classifier_activation_checkpointing": (
        "configs/classification/toy_imagefolder.py",
        [*SMALL_CLASSIFIER, "model.net.depth=4", "+model.net.grad_checkpointing=True"]),
    "tiny_classifier_bf16_autocast": (
        "configs/classification/toy_imagefolder.py",
        [*SMALL_CLASSIFIER, "train.amp.enabled=True", "train.amp.dtype=bfloat16"]),
}


@pytest.mark.parametrize("name", list(SMALL_CONFIGS))
def test_estimate_is_within_20_percent_of_measured_cpu_peak(name):
    path, overrides = SMALL_CONFIGS[name]
    cfg = load_config(path, overrides)
    report = estimate_training_memory(cfg, num_gpus=1, device_type="cpu")
    measured = measure_peak_training_memory_cpu(cfg)
    ratio = report.peak_bytes / measured
    print(f"{name}: measured {measured / MiB:.2f} MiB, estimated {report.peak_bytes / MiB:.2f} MiB, "
          f"ratio {ratio:.3f}")
    assert 0.8 <= ratio <= 1.2, (name, measured, report.peak_bytes)
    # the activations are a real part of the figure, not rounding next to the weights
    assert report.breakdown.get("activations", 0) > 0.2 * report.peak_bytes


def test_toy_mim_estimate_counts_the_frozen_teacher_as_parameters_without_gradients():
    cfg = load_config("configs/pretrain/toy.py", [])
    report = estimate_training_memory(cfg, device_type="cpu")
    teacher = build_meta_model(cfg.model).teacher
    teacher_bytes = sum(p.numel() * 4 for p in teacher.parameters())
    assert report.num_frozen == sum(p.numel() for p in teacher.parameters())
    assert report.breakdown["frozen"] >= teacher_bytes
    # AdamW keeps two fp32 states for trained parameters only
    assert report.breakdown["states"] == pytest.approx(2 * 4 * report.num_trainable, rel=0.01)


def test_activation_checkpointing_lowers_the_activation_estimate():
    path, overrides = SMALL_CONFIGS["tiny_classifier_fp32"]
    plain = estimate_training_memory(load_config(path, [*overrides, "model.net.depth=4"]), device_type="cpu")
    ckpt = estimate_training_memory(load_config(path, SMALL_CONFIGS[
        "tiny_classifier_activation_checkpointing"][1]), device_type="cpu")
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    assert ckpt.activation_peak_bytes < 0.7 * plain.activation_peak_bytes


def test_zero_stage_1_shards_optimizer_states_over_gpus():
    path, overrides = SMALL_CONFIGS["tiny_classifier_fp32"]
    one = estimate_training_memory(load_config(path, overrides), num_gpus=1, device_type="cpu")
    zero = estimate_training_memory(load_config(path, [*overrides, "train.zero_stage=1"]), num_gpus=2,
                                    device_type="cpu")
    assert zero.setup.batch_per_gpu == one.setup.batch_per_gpu // 2
    assert zero.breakdown["states"] == pytest.approx(one.breakdown["states"] / 2, rel=0.01)
    # DDP's gradient buckets copy every gradient on more than one GPU
    assert zero.breakdown["comm"] == 4 * zero.num_trainable


def test_deepspeed_fp16_keeps_half_weights_and_sharded_fp32_masters():
    path, overrides = SMALL_CONFIGS["tiny_classifier_fp32"]
    cfg = load_config(path, overrides)
    cfg.train.deepspeed = {"zero_optimization": {"stage": 2}, "fp16": {"enabled": True}}
    report = estimate_training_memory(cfg, num_gpus=4, device_type="cpu")
    assert report.setup.engine == "deepspeed" and report.setup.param_dtype == torch.float16
    assert report.breakdown["params"] == pytest.approx(2 * report.num_trainable, rel=0.01)
    assert report.breakdown["master"] == pytest.approx(4 * report.num_trainable / 4, rel=0.01)
    assert report.breakdown["states"] == pytest.approx(8 * report.num_trainable / 4, rel=0.01)


def test_suggestions_are_valid_overrides_that_lower_the_estimate():
    path, overrides = SMALL_CONFIGS["tiny_classifier_fp32"]
    cfg = load_config(path, overrides)
    report = estimate_training_memory(cfg, device_type="cpu")
    budget = 0.5 * report.peak_gib
    suggestions = suggest_fixes(cfg, report, budget, device_type="cpu")
    by_key = {s.overrides[0].split("=")[0].lstrip("+"): s for s in suggestions}
    assert checkpointing_overrides(cfg) == ["+model.net.grad_checkpointing=True"]
    expected_keys = {"model.net.grad_checkpointing", "train.amp.enabled", "dataloader.train.total_batch_size"}
    assert expected_keys <= set(by_key)
    for s in suggestions:
        assert s.report.peak_bytes < report.peak_bytes, s.description
        LazyConfig.apply_overrides(copy.deepcopy(cfg), s.overrides)  # ready to paste: they apply cleanly
    smaller = by_key["dataloader.train.total_batch_size"]
    b = smaller.report.setup
    assert b.batch_per_gpu * b.grad_accum_steps == report.setup.batch_per_gpu * report.setup.grad_accum_steps


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "estimate_memory.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_eva_g_mim_estimate_on_128_gpus_is_printed_beside_the_paper_figure_and_fits_a100_40gb():
    proc = run_tool("--config-file", "configs/pretrain/eva_g_merged30m.py", "--num-gpus", "128",
                    "--gpu-mem", "40", "dataloader.train.total_batch_size=4096",
                    "train.amp.enabled=True", "train.amp.dtype=float16",
                    "train.zero_stage=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    print(out)
    assert "per-GPU batch 32 (x1 accumulation) on 128 GPU(s); autocast fp16" in out
    assert "activation checkpointing off" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("paper (Table: pre-training statistics)"))
    assert "26.5 GB max memory on A100-40GB" in line
    estimate_gb = float(re.search(r"our estimate: ([0-9.]+) GB", line).group(1))
    # the paper trained this setting on 40 GB GPUs: a plausible estimate fits them and is not tiny
    assert 0.5 * 26.5 < estimate_gb < 40.0
    assert "GPU memory 40 GiB: fits" in out


def _tool_main():
    spec = importlib.util.spec_from_file_location("estimate_memory", REPO / "tools" / "estimate_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("override, named", [
    ("train.amp.enabld=True", "train.amp.enabld"),
    ("dataloader.train.total_batch_size=many", "dataloader.train.total_batch_size"),
    ("train.zero_stage=5", "train.zero_stage"),
])
def test_cli_rejects_unknown_keys_and_bad_values_with_exit_2(override, named, capsys):
    rc = _tool_main()(["--config-file", str(REPO / "configs/classification/toy_imagefolder.py"), override])
    err = capsys.readouterr().err
    assert rc == 2
    assert named in err


def test_cli_rejects_a_gpu_count_that_does_not_divide_the_batch(capsys):
    rc = _tool_main()(["--config-file", str(REPO / "configs/classification/toy_imagefolder.py"),
                       "--num-gpus", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and "total_batch_size=32" in err and "3" in err

