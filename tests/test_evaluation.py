"""The one inference loop (``inference_on_dataset``), several named test sets, nested results
flattened into metrics.json / TensorBoard, and the results table."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

from eva_core.evaluation import (DatasetEvaluator, flatten_results_dict, format_results_table,
                                 inference_on_dataset, inference_on_datasets, print_csv_format)
from helpers import FixedBatches, ToyRegressor, toy_batches, toy_test_loader


class NestedEvaluator(DatasetEvaluator):
    """A detection-style evaluator: ``{"bbox": {"AP": mean target}, "segm": {"AP": samples}}``."""

    def reset(self):
        self.ys = []

    def process(self, batch, outputs):
        self.ys.append(batch["y"].float())

    def evaluate(self):
        y = torch.cat(self.ys)
        return {"bbox": {"AP": float(y.mean())}, "segm": {"AP": float(len(y))}}


class Recorder(nn.Module):
    """Records the mode and grad state it runs under; predictions are ``2 * x[:, 0]``."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.seen = []

    def forward(self, batch):
        self.seen.append((self.training, torch.is_grad_enabled(), torch.get_autocast_dtype("cpu")
                          if torch.is_autocast_enabled("cpu") else None))
        return (2 * self.w * batch["x"][:, 0]).to(torch.get_autocast_dtype("cpu")
                                                   if torch.is_autocast_enabled("cpu") else torch.float32)


class CallLog(DatasetEvaluator):
    def __init__(self):
        self.calls = []

    def reset(self):
        self.calls.append("reset")

    def process(self, batch, outputs):
        self.calls.append(("process", outputs.dtype, len(outputs)))

    def evaluate(self):
        self.calls.append("evaluate")
        return {"n": sum(c[2] for c in self.calls if isinstance(c, tuple))}


def test_inference_on_dataset_runs_eval_mode_without_grad_and_restores_train_mode():
    model, evaluator = Recorder().train(), CallLog()
    results = inference_on_dataset(model, toy_test_loader(48, 16), evaluator)
    assert results == {"n": 48}
    assert model.seen == [(False, False, None)] * 3 and model.training
    assert evaluator.calls == ["reset"] + [("process", torch.float32, 16)] * 3 + ["evaluate"]
    model.eval()
    inference_on_dataset(model, toy_test_loader(16, 16), CallLog())
    assert not model.training  # an eval-mode model stays in eval mode


def test_inference_on_dataset_autocasts_when_asked():
    model, evaluator = Recorder(), CallLog()
    inference_on_dataset(model, toy_test_loader(16, 8), evaluator, amp_dtype=torch.bfloat16)
    assert model.seen == [(False, False, torch.bfloat16)] * 2
    assert evaluator.calls[1] == ("process", torch.bfloat16, 8)


def test_inference_on_datasets_gives_results_per_named_dataset():
    loaders = {"a": toy_test_loader(16, 8, seed=0), "b": toy_test_loader(32, 8, seed=1)}
    shared = inference_on_datasets(Recorder(), loaders, NestedEvaluator())
    per_name = inference_on_datasets(Recorder(), loaders, {"b": NestedEvaluator(), "a": NestedEvaluator()})
    assert shared == per_name
    assert shared["a"]["segm"]["AP"] == 16 and shared["b"]["segm"]["AP"] == 32
    assert shared["a"]["bbox"]["AP"] != shared["b"]["bbox"]["AP"]
    # a single loader gives the evaluator's own results
    assert inference_on_datasets(Recorder(), loaders["a"], NestedEvaluator()) == shared["a"]
    with pytest.raises(ValueError, match=r"\['a', 'c'\].*\['a', 'b'\]"):
        inference_on_datasets(Recorder(), loaders, {"a": NestedEvaluator(), "c": NestedEvaluator()})


def test_flatten_results_dict_joins_nested_keys_with_a_slash():
    nested = {"coco_val": {"bbox": {"AP": 1.0, "AP50": 2.0}, "segm": {"APr": 3.0}}, "top1": 4.0}
    assert flatten_results_dict(nested) == {"coco_val/bbox/AP": 1.0, "coco_val/bbox/AP50": 2.0,
                                            "coco_val/segm/APr": 3.0, "top1": 4.0}
    with pytest.raises(ValueError, match="'a/b'"):
        flatten_results_dict({"a/b": 1.0, "a": {"b": 2.0}})


def test_results_table_has_one_block_per_task(caplog):
    results = {"coco_val": {"bbox": {"AP": 41.25, "AP50": 60.0}, "segm": {"AP": 35.5}}, "top1": 90.0}
    assert format_results_table(results).splitlines() == [
        "copypaste: Task: coco_val/bbox", "copypaste: AP,AP50", "copypaste: 41.2500,60.0000",
        "copypaste: Task: coco_val/segm", "copypaste: AP", "copypaste: 35.5000",
        "copypaste: Task: results", "copypaste: top1", "copypaste: 90.0000"]
    with caplog.at_level(logging.INFO, logger="eva_core.evaluation"):
        print_csv_format(results)
    assert "copypaste: 41.2500,60.0000" in caplog.text


def _all_params(model):
    return list(model.parameters())


@pytest.mark.parametrize("evaluator_per_set", [False, True])
def test_two_test_datasets_write_their_nested_metrics_to_metrics_json_and_tensorboard(tmp_path,
                                                                                      evaluator_per_set):
    from omegaconf import OmegaConf

    from eva_core.config import LazyCall as L
    from eva_core.engine.defaults import train_from_config

    cfg = OmegaConf.create({"train": {"max_iter": 6, "output_dir": str(tmp_path), "device": "cpu",
                                      "log_period": 3, "eval_period": 3, "checkpointer": {"period": 0},
                                      "ema": {"enabled": True, "decay": 0.5}}}, flags={"allow_objects": True})
    cfg.model = L(ToyRegressor)(hidden=8)
    cfg.optimizer = L(torch.optim.SGD)(params=L(_all_params)(model=None), lr=0.01)
    evaluator = ({"val_a": L(NestedEvaluator)(), "val_b": L(NestedEvaluator)()} if evaluator_per_set
                 else L(NestedEvaluator)())
    cfg.dataloader = {"train": L(FixedBatches)(batches=toy_batches(2, 8)),
                      "test": {"val_a": toy_test_loader(16, 8, seed=0),
                               "val_b": toy_test_loader(32, 8, seed=1)},
                      "evaluator": evaluator}
    run = train_from_config(cfg, tensorboard=True)
    a_ap = float(torch.stack([b["y"] for b in toy_test_loader(16, 8, seed=0)]).mean())
    assert run.results["val_a"] == {"bbox": {"AP": pytest.approx(a_ap)}, "segm": {"AP": 16.0}}
    assert run.results["ema/val_b"]["segm"]["AP"] == 32.0
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 5]
    for r in records:
        assert r["eval/val_a/bbox/AP"] == pytest.approx(a_ap)
        assert r["eval/val_a/segm/AP"] == 16.0 and r["eval/val_b/segm/AP"] == 32.0
        assert "eval/val_b/bbox/AP" in r and r["eval/ema/val_a/segm/AP"] == 16.0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"eval/val_a/bbox/AP", "eval/val_b/segm/AP", "eval/ema/val_b/bbox/AP"} <= tags
    assert [e.step for e in events.Scalars("eval/val_b/segm/AP")] == [2, 5]
