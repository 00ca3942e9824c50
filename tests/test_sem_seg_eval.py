"""SemSegEvaluator: mIoU / mAcc / aAcc against torchmetrics and a direct confusion-matrix count."""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from eva_core.evaluation import SemSegEvaluator, flatten_results_dict, inference_on_dataset

IGNORE = 255


def _label_maps(seed, num_classes=5, absent=(4,), predicted_only=(3,), shape=(3, 12, 10)):
    """Random GT / predicted maps: about 15% ignored GT pixels, classes ``absent`` nowhere, classes
    ``predicted_only`` in the predictions but never in the GT."""
    g = torch.Generator().manual_seed(seed)
    in_gt = [c for c in range(num_classes) if c not in absent and c not in predicted_only]
    in_pred = [c for c in range(num_classes) if c not in absent]
    gt = torch.tensor(in_gt)[torch.randint(len(in_gt), shape, generator=g)]
    # predictions agree with the GT about half the time
    noise = torch.tensor(in_pred)[torch.randint(len(in_pred), shape, generator=g)]
    pred = torch.where(torch.rand(shape, generator=g) < 0.5, gt, noise)
    gt[torch.rand(shape, generator=g) < 0.15] = IGNORE
    return gt, pred


def _evaluate(gt, pred, num_classes=5, **kwargs):
    evaluator = SemSegEvaluator(num_classes, ignore_label=IGNORE, **kwargs)
    evaluator.reset()
    # two batches, so the confusion matrix accumulates across process() calls
    evaluator.process({"sem_seg": gt[:1]}, pred[:1])
    evaluator.process({"sem_seg": gt[1:]}, {"sem_seg": pred[1:]})
    return evaluator.evaluate()["sem_seg"]


def test_sem_seg_iou_equals_torchmetrics_jaccard_with_ignore_labels_and_absent_classes():
    gt, pred = _label_maps(0)
    ours = _evaluate(gt, pred)
    per_class = MulticlassJaccardIndex(5, average=None, ignore_index=IGNORE)(pred, gt)
    macro = MulticlassJaccardIndex(5, average="macro", ignore_index=IGNORE)(pred, gt)
    for c in range(4):  # class 3 is predicted only: IoU 0 in both
        assert ours[f"IoU-{c}"] == pytest.approx(float(per_class[c]) * 100, abs=1e-4)
    assert ours["IoU-3"] == 0.0
    # class 4 occurs nowhere: no IoU, left out of the mean (torchmetrics gives it weight 0 too)
    assert math.isnan(ours["IoU-4"])
    assert ours["mIoU"] == pytest.approx(float(macro) * 100, abs=1e-4)


def test_sem_seg_accuracies_equal_torchmetrics_accuracy():
    gt, pred = _label_maps(1, predicted_only=())
    ours = _evaluate(gt, pred)
    micro = MulticlassAccuracy(5, average="micro", ignore_index=IGNORE)(pred, gt)
    macro = MulticlassAccuracy(5, average="macro", ignore_index=IGNORE)(pred, gt)
    per_class = MulticlassAccuracy(5, average=None, ignore_index=IGNORE)(pred, gt)
    assert ours["aAcc"] == pytest.approx(float(micro) * 100, abs=1e-4)
    assert ours["mAcc"] == pytest.approx(float(macro) * 100, abs=1e-4)
    for c in range(4):
        assert ours[f"Acc-{c}"] == pytest.approx(float(per_class[c]) * 100, abs=1e-4)
    assert math.isnan(ours["Acc-4"])


def test_sem_seg_hand_made_maps_follow_detectron2_convention():
    gt = torch.tensor([[[0, 0, 1], [1, IGNORE, 0]]])
    pred = torch.tensor([[[0, 1, 1], [2, 0, 0]]])
    ours = _evaluate(torch.cat([gt, gt]), torch.cat([pred, pred]), num_classes=3,
                     class_names=["sky", "road", "car"])
    # confusion (rows GT): sky -> sky 2, road 1; road -> road 1, car 1; the ignored pixel is left out
    assert ours["IoU-sky"] == pytest.approx(200 / 3) and ours["IoU-road"] == pytest.approx(100 / 3)
    assert ours["IoU-car"] == 0.0  # predicted once, never in the GT: counts as 0 in mIoU
    assert ours["mIoU"] == pytest.approx((200 / 3 + 100 / 3 + 0) / 3)
    # car has no GT pixel: no accuracy, left out of mAcc (detectron2, mmseg) ...
    assert math.isnan(ours["Acc-car"])
    assert ours["mAcc"] == pytest.approx((200 / 3 + 50) / 2)
    # ... where torchmetrics' macro accuracy counts it as 0
    tm = MulticlassAccuracy(3, average="macro", ignore_index=IGNORE)(pred, gt)
    assert float(tm) * 100 == pytest.approx((200 / 3 + 50 + 0) / 3, abs=1e-4)
    assert ours["aAcc"] == pytest.approx(60.0)


def test_sem_seg_metrics_equal_a_direct_confusion_matrix_count():
    gt, pred = _label_maps(2)
    ours = _evaluate(gt, pred)
    confusion = np.zeros((5, 5))
    for g, p in zip(gt.flatten().tolist(), pred.flatten().tolist()):
        if g != IGNORE:
            confusion[g, p] += 1
    tp, gt_n, pred_n = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = tp / (gt_n + pred_n - tp), tp / gt_n
    assert ours["mIoU"] == pytest.approx(np.nanmean(iou) * 100)
    assert ours["mAcc"] == pytest.approx(np.nanmean(acc) * 100)
    assert ours["aAcc"] == pytest.approx(tp.sum() / gt_n.sum() * 100)
    np.testing.assert_allclose([ours[f"IoU-{c}"] for c in range(5)], iou * 100)


def test_logits_label_maps_and_per_image_lists_give_the_same_results():
    gt, pred = _label_maps(3)
    logits = torch.nn.functional.one_hot(pred, 5).permute(0, 3, 1, 2).float() * 3 + torch.rand(3, 5, 12, 10)
    from_labels = _evaluate(gt, pred)
    assert _evaluate(gt, logits) == pytest.approx(from_labels, nan_ok=True)
    evaluator = SemSegEvaluator(5, ignore_label=IGNORE)
    # detectron2 form: a list of per-image dicts with [C, H, W] logits; label maps as a list
    evaluator.process({"sem_seg": list(gt)}, [{"sem_seg": x} for x in logits])
    assert evaluator.evaluate()["sem_seg"] == pytest.approx(from_labels, nan_ok=True)


def test_label_map_of_another_size_is_refused_naming_the_file_and_both_sizes():
    evaluator = SemSegEvaluator(5)
    batch = {"sem_seg": [torch.zeros(4, 6, dtype=torch.long), torch.zeros(5, 6, dtype=torch.long)],
             "file_name": ["a.png", "ADE_val_00000002.png"]}
    with pytest.raises(ValueError,
                       match=r"ADE_val_00000002.png: label map is \(5, 6\).*prediction is \(4, 6\)"):
        evaluator.process(batch, [torch.zeros(4, 6, dtype=torch.long)] * 2)


def test_bad_labels_logits_and_class_names_are_refused():
    evaluator = SemSegEvaluator(5)
    with pytest.raises(ValueError,
                       match=r"x.png: label map holds value 7, expected 0 .. 4 or ignore_label 255"):
        evaluator.process({"sem_seg": torch.full((1, 2, 2), 7), "file_name": ["x.png"]},
                          torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="logits have 3 classes, expected num_classes 5"):
        evaluator.process({"sem_seg": torch.zeros(1, 2, 2, dtype=torch.long)}, torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="2 class_names for num_classes 5"):
        SemSegEvaluator(5, class_names=["a", "b"])
    with pytest.raises(ValueError, match="ignore_label 0 is one of the 5 class labels"):
        SemSegEvaluator(5, ignore_label=0)


class _ReplaySegmenter(nn.Module):
    """Returns stored logits for the images of each batch (by dataset index)."""

    def __init__(self, logits):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.logits = logits

    def forward(self, batch):
        return {"sem_seg": self.logits[batch["index"]] * self.scale}


def test_results_flow_through_inference_on_dataset_and_the_table_is_written(tmp_path):
    gt, pred = _label_maps(4)
    logits = torch.nn.functional.one_hot(pred, 5).permute(0, 3, 1, 2).float()
    loader = [{"image": torch.zeros(2, 3, 12, 10), "sem_seg": gt[:2], "index": torch.tensor([0, 1]),
               "file_name": ["0.png", "1.png"]},
              {"image": torch.zeros(1, 3, 12, 10), "sem_seg": gt[2:], "index": torch.tensor([2]),
               "file_name": ["2.png"]}]
    names = ["wall", "floor", "tree", "sky", "car"]
    evaluator = SemSegEvaluator(5, IGNORE, class_names=names, output_dir=tmp_path)
    results = inference_on_dataset(_ReplaySegmenter(logits), loader, evaluator)
    assert results["sem_seg"] == pytest.approx(_evaluate(gt, pred, class_names=names), nan_ok=True)
    flat = flatten_results_dict(results)
    assert flat["sem_seg/mIoU"] == results["sem_seg"]["mIoU"] and "sem_seg/IoU-wall" in flat
    table = (tmp_path / "sem_seg_per_class.md").read_text()
    assert "| Class | IoU | Acc |" in table
    assert f"| wall | {results['sem_seg']['IoU-wall']:.2f} |" in table
    assert "| car | - | - |" in table  # absent everywhere


def _evaluate_on_rank(rank, init_file, out_file):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        gt, pred = _label_maps(5)
        evaluator = SemSegEvaluator(5, IGNORE)
        # rank 0 sees images 0 and 1, rank 1 image 2 (build_test_loader's contiguous shards)
        shard = slice(0, 2) if rank == 0 else slice(2, 3)
        evaluator.process({"sem_seg": gt[shard]}, pred[shard])
        torch.save(evaluator.evaluate(), f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_ranks_sum_their_confusion_matrices_and_only_rank_0_reports(tmp_path):
    import torch.multiprocessing as mp
    out = str(tmp_path / "results")
    mp.spawn(_evaluate_on_rank, args=(str(tmp_path / "init"), out), nprocs=2)
    gt, pred = _label_maps(5)
    assert torch.load(f"{out}.0")["sem_seg"] == pytest.approx(_evaluate(gt, pred), nan_ok=True)
    assert torch.load(f"{out}.1") == {}
