"""Linear probe: frozen encoder, CLS/mean -> BatchNorm1d(affine=False) -> Linear, LARS / SGD."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch.utils.data import Dataset

import eva_core
from eva_core.classification.linear_probe import LinearProbe, extract_features, linear_probe

torch.set_num_threads(1)


class ColorBlobs(Dataset):
    """Class k = a bright square in quadrant k on noise: linearly readable from frozen features."""

    num_classes = 4

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 4
        self.images = 0.1 * torch.randn(n, 3, 16, 16, generator=g)
        for i, k in enumerate(self.labels.tolist()):
            r, c = divmod(k, 2)
            self.images[i, :, r * 8:r * 8 + 8, c * 8:c * 8 + 8] += 2.0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": int(self.labels[i])}


def encoder():
    torch.manual_seed(0)
    return eva_core.create_model("eva_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=2,
                                 num_heads=2, num_classes=0, global_pool="token")


def test_probe_learns_from_frozen_features_and_leaves_encoder_untouched():
    enc = encoder().train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    train, val = ColorBlobs(96, 0), ColorBlobs(48, 1)
    res = linear_probe(enc, train, val, epochs=15, lr=0.1, batch_size=32, warmup_epochs=2)
    # chance is 25%; a random frozen encoder's CLS token carries the blob position
    assert res["top1"] >= 90.0 and res["num_samples"] == 48
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    assert enc.training and all(p.requires_grad for p in enc.parameters())


def test_cached_and_uncached_probe_agree_for_deterministic_data():
    enc = encoder()
    train, val = ColorBlobs(64, 0), ColorBlobs(32, 1)
    kw = dict(epochs=3, lr=0.1, batch_size=16, optimizer="sgd", pool="avg", seed=3)
    cached = linear_probe(enc, train, val, use_cache=True, **kw)
    live = linear_probe(enc, train, val, use_cache=False, **kw)
    # same samples in the same order (same seed), same features: identical training
    assert cached["top1"] == live["top1"]
    assert cached["train_loss"] == pytest.approx(live["train_loss"], rel=1e-4)


def test_probe_head_is_batchnorm_without_affine_then_linear_on_cls():
    enc = encoder()
    probe = LinearProbe(enc, 4, pool="token")
    assert isinstance(probe.bn, torch.nn.BatchNorm1d) and not probe.bn.affine
    trainable = [n for n, p in probe.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight", "head.bias"]
    x = torch.randn(2, 3, 16, 16)
    feats, _ = extract_features(enc, [{"image": x[0], "label": 0}, {"image": x[1], "label": 1}], pool="token")
    assert torch.allclose(feats, enc.forward_features(x)[:, 0], atol=1e-6)
    probe.train()
    assert not probe.encoder.training  # frozen encoder stays in eval mode


def test_token_avg_pool_concatenates_cls_and_mean_patch_token():
    enc = encoder()
    probe = LinearProbe(enc, 4, pool="token_avg")
    assert probe.bn.num_features == probe.head.in_features == 2 * enc.num_features
    x = torch.randn(2, 3, 16, 16)
    samples = [{"image": x[0], "label": 0}, {"image": x[1], "label": 1}]
    feats, _ = extract_features(enc, samples, pool="token_avg")
    tokens = enc.forward_features(x)
    expected = torch.cat([tokens[:, 0], tokens[:, enc.num_prefix_tokens:].mean(1)], dim=1)
    assert torch.allclose(feats, expected, atol=1e-6)
    assert probe(x).shape == (2, 4)


def test_lars_adapts_the_weight_update_to_its_norm():
    from eva_core.classification.linear_probe import _build_optimizer

    probe = LinearProbe(encoder(), 4)
    opt = _build_optimizer(probe, "lars", lr=0.1, momentum=0.0, weight_decay=0.0)
    w0 = probe.head.weight.detach().clone()
    probe.head.weight.grad = 1000.0 * torch.randn_like(w0)  # huge gradient
    probe.head.bias.grad = torch.zeros_like(probe.head.bias)
    opt.step()
    # trust ratio ||w|| / ||g||: the step is lr * ||w|| whatever the gradient scale
    assert (probe.head.weight - w0).norm().item() == pytest.approx(0.1 * w0.norm().item(), rel=1e-3)


def test_bad_arguments_are_reported():
    enc = encoder()
    with pytest.raises(ValueError, match="pool"):
        LinearProbe(enc, 4, pool="max")
    with pytest.raises(ValueError, match="optimizer"):
        linear_probe(enc, ColorBlobs(8, 0), ColorBlobs(8, 1), epochs=1, lr=0.1, batch_size=4,
                     optimizer="adam")
    with pytest.raises(ValueError, match="warmup_epochs"):
        linear_probe(enc, ColorBlobs(8, 0), ColorBlobs(8, 1), epochs=1, lr=0.1, batch_size=4, warmup_epochs=1)
    with pytest.raises(ValueError, match="class count"):
        linear_probe(enc, [{"image": torch.zeros(3, 16, 16), "label": 0}] * 4, ColorBlobs(8, 1),
                     epochs=1, lr=0.1, batch_size=4)
