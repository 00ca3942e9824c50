"""ImageClassifier (train/eval contract, Mixup/CutMix, frozen patch embed) and the evaluator."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from eva_core.classification import ImageClassifier
from eva_core.evaluation import ClassificationEvaluator, DatasetEvaluators

torch.set_num_threads(1)


def tiny_net(num_classes=5, **kw):
    import eva_core

    return eva_core.create_model("eva_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=32, depth=2,
                                 num_heads=2, num_classes=num_classes, **kw)


def batch(n=4, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, 32, 32, generator=g),
            "label": torch.randint(0, c, (n,), generator=g)}


def test_train_mode_returns_loss_dict_and_eval_mode_returns_logits():
    model = ImageClassifier(tiny_net(), criterion=LabelSmoothingCrossEntropy(0.3))
    b = batch()
    out = model.train()(b)
    assert set(out) == {"loss_cls"} and out["loss_cls"].dim() == 0
    logits = model.eval()(b)
    assert logits.shape == (4, 5)
    # the loss is exactly timm's label-smoothing CE of the eval logits (no dropout in tiny net)
    expected = LabelSmoothingCrossEntropy(0.3)(logits, b["label"])
    assert torch.allclose(model.train()(b)["loss_cls"], expected, atol=1e-5)


def test_num_classes_resets_the_head():
    model = ImageClassifier(tiny_net(num_classes=5), num_classes=7)
    assert model.eval()(batch()).shape == (4, 7)
    with pytest.raises(ValueError, match="num_classes"):
        ImageClassifier(tiny_net(), num_classes=0)


def test_cutmix_feeds_soft_targets_to_soft_target_loss():
    torch.manual_seed(0)
    mix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=5)
    model = ImageClassifier(tiny_net(), mixup=mix)
    assert isinstance(model.criterion, SoftTargetCrossEntropy)
    b = batch()
    original = b["image"].clone()
    seen = {}

    def spy(module, args):
        seen["x"] = args[0].clone()
    model.net.register_forward_pre_hook(spy)
    loss = model.train()(b)["loss_cls"]
    assert torch.isfinite(loss)
    # CutMix pastes a box from the flipped batch: the images the net saw differ from the input
    assert not torch.equal(seen["x"], original)
    with pytest.raises(ValueError, match="even"):
        model(batch(n=3))
    with pytest.raises(ValueError, match="mixup.num_classes"):
        ImageClassifier(tiny_net(num_classes=4), mixup=mix)


def test_frozen_patch_embed_gets_no_gradient_but_blocks_do():
    model = ImageClassifier(tiny_net(), freeze_patch_embed=True).train()
    model(batch())["loss_cls"].backward()
    pe = list(model.net.patch_embed.parameters())
    assert pe and all(not p.requires_grad and p.grad is None for p in pe)
    assert model.net.blocks[0].attn.qkv.weight.grad is not None
    assert model.net.pos_embed.grad is not None  # only the patch projection is frozen


def test_missing_label_gives_clear_error():
    model = ImageClassifier(tiny_net()).train()
    with pytest.raises(KeyError, match="label"):
        model({"image": torch.randn(2, 3, 32, 32)})
    with pytest.raises(KeyError, match="image"):
        model({"img": torch.randn(2, 3, 32, 32)})


# ----------------------------------------------------------------------------- evaluator
def test_evaluator_top1_top5_by_hand():
    # 3 samples, 6 classes; logits sorted descending: s0 -> [0,1,2,3,4,5] label 0 (top1 hit),
    # s1 label 5 is ranked last (miss in top5), s2 label 3 ranked 4th (top5 hit only)
    logits = torch.tensor([[6., 5, 4, 3, 2, 1], [6., 5, 4, 3, 2, 1], [1., 6, 5, 3, 4, 0]])
    ev = ClassificationEvaluator(topk=(1, 5))
    ev.reset()
    ev.process({"label": torch.tensor([], dtype=torch.long)}, logits[:0])  # an empty batch is harmless
    ev.process({"label": torch.tensor([0, 5])}, logits[:2])
    ev.process({"label": torch.tensor([3])}, logits[2:])
    r = ev.evaluate()
    assert r["top1"] == pytest.approx(100 / 3) and r["top5"] == pytest.approx(200 / 3)
    assert r["num_samples"] == 3


def test_evaluator_class_subset_and_multi_label_and_dedupe():
    # subset {1,3}: for s0 logits col 0 is the max but not in the subset -> prediction is 3
    logits = torch.tensor([[9., 1, 0, 2], [9., 3, 0, 2]])
    ev = ClassificationEvaluator(topk=(1,), class_subset=[1, 3])
    ev.process({"label": torch.tensor([3, 3]), "index": torch.tensor([0, 1])}, logits)
    ev.process({"label": torch.tensor([3]), "index": torch.tensor([1])}, logits[1:])  # padded dup
    assert ev.evaluate() == {"top1": 50.0, "num_samples": 2}
    # multi-label: empty sets are excluded, any label in the set counts
    ev = ClassificationEvaluator(topk=(1, 2), multi_label_key="real")
    ev.process({"real": [[0, 2], [], [1]]}, torch.tensor([[0., 1, 2, 3], [5., 0, 0, 0], [0., 1, 2, 3]]))
    r = ev.evaluate()
    # s0 top1 = 3 (miss), top2 {3,2} hit; s2 top1 3 miss, top2 {3,2} miss
    assert r == {"top1": 0.0, "top2": 50.0, "num_samples": 2}


def test_evaluator_rejects_bad_inputs_and_merges():
    ev = ClassificationEvaluator(class_subset=[0, 1])
    with pytest.raises(ValueError, match="class_subset"):
        ev.process({"label": torch.tensor([2])}, torch.zeros(1, 3))
    with pytest.raises(KeyError, match="'label'"):
        ev.process({"y": torch.tensor([0])}, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="out of range"):
        ClassificationEvaluator().process({"label": torch.tensor([7])}, torch.zeros(1, 3))
    both = DatasetEvaluators([ClassificationEvaluator(topk=(1,), prefix="a/"),
                              ClassificationEvaluator(topk=(1,), prefix="b/")])
    both.reset()
    both.process({"label": torch.tensor([1])}, torch.tensor([[0., 1.]]))
    assert both.evaluate() == {"a/top1": 100.0, "a/num_samples": 1, "b/top1": 100.0, "b/num_samples": 1}
