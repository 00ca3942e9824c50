"""Mask2Former matcher and losses (projects/Mask2Former-EVA) against Hugging Face transformers.

Both implementations draw their random points with ``torch.rand`` in the same order (per image in
the matcher, then oversampled points and the random remainder per loss call, final prediction
first, then each auxiliary one). Seeding the global generator identically before each call
therefore gives both the same points, so the comparison is exact rather than statistical.
"""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mask2former_eva.criterion import SetCriterion, mask2former_weight_dict  # noqa: E402
from mask2former_eva.matcher import HungarianMatcher  # noqa: E402
from mask2former_eva.point_sampling import (calculate_uncertainty,  # noqa: E402
                                            get_uncertain_point_coords_with_randomness, point_sample)
from transformers import Mask2FormerConfig  # noqa: E402
from transformers.models.mask2former import modeling_mask2former as hf  # noqa: E402

NUM_CLASSES, QUERIES, POINTS = 3, 10, 128


def _outputs(generator, batch=2, queries=QUERIES, size=(16, 16), num_aux=0):
    def one():
        return {"pred_logits": torch.randn(batch, queries, NUM_CLASSES + 1, generator=generator),
                "pred_masks": 3 * torch.randn(batch, queries, *size, generator=generator)}
    out = one()
    if num_aux:
        out["aux_outputs"] = [one() for _ in range(num_aux)]
    return out


def _targets(generator, counts=(3, 2), size=(32, 32)):
    return [{"labels": torch.randint(0, NUM_CLASSES, (n,), generator=generator),
             "masks": (torch.rand(n, *size, generator=generator) > 0.5).float()} for n in counts]


def _hf_loss(num_points=POINTS):
    config = Mask2FormerConfig(num_labels=NUM_CLASSES, no_object_weight=0.1, class_weight=2.0,
                               mask_weight=5.0, dice_weight=5.0, train_num_points=num_points,
                               oversample_ratio=3.0, importance_sample_ratio=0.75)
    return hf.Mask2FormerLoss(config, weight_dict={})


def _ours(num_points=POINTS, num_aux=0):
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=num_points)
    return SetCriterion(NUM_CLASSES, matcher, mask2former_weight_dict(num_aux=num_aux), eos_coef=0.1,
                        num_points=num_points, oversample_ratio=3.0, importance_sample_ratio=0.75)


def _hf_call(loss, outputs, targets):
    aux = [{"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]}
           for a in outputs.get("aux_outputs", [])] or None
    return loss(outputs["pred_masks"], outputs["pred_logits"], [t["masks"] for t in targets],
                [t["labels"] for t in targets], auxiliary_predictions=aux)


def _hf_names(name):
    # transformers calls the class loss loss_cross_entropy; Mask2Former and we call it loss_ce
    return name.replace("loss_cross_entropy", "loss_ce")


def test_point_sample_reads_pixel_centres_and_uncertain_points_are_nearest_zero():
    grid = torch.arange(12.0).view(1, 1, 3, 4)
    # pixel (row 1, col 2) has its centre at x = 2.5 / 4, y = 1.5 / 3
    assert point_sample(grid, torch.tensor([[[2.5 / 4, 1.5 / 3]]])).item() == 6.0
    logits = torch.full((1, 1, 8, 8), 5.0)
    logits[0, 0, 2:4, 5:7] = 0.0  # the only uncertain region
    torch.manual_seed(0)
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 8, 3.0, 0.5)
    assert coords.shape == (1, 8, 2)
    values = point_sample(logits, coords)[0, 0]
    # the 4 importance-sampled points come first and are the 4 lowest |logit| of the 24 candidates
    torch.manual_seed(0)
    candidates = point_sample(logits, torch.rand(1, 24, 2))[0, 0]
    torch.testing.assert_close(values[:4].abs().sort().values, candidates.abs().sort().values[:4])


def test_uncertain_point_coords_equal_transformers_sampling():
    logits = 3 * torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    ours = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 100, 3.0, 0.75)
    torch.manual_seed(7)
    theirs = _hf_loss().sample_points_using_uncertainty(logits, lambda x: -x.abs(), 100, 3.0, 0.75)
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def test_matcher_cost_matrix_and_indices_equal_transformers(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    outputs, targets = _outputs(gen), _targets(gen, counts=(3, 4))
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=POINTS)
    torch.manual_seed(3)
    our_costs = matcher.cost_matrices(outputs, targets)
    torch.manual_seed(3)
    our_indices = matcher(outputs, targets)

    # capture the matrices transformers hands to scipy
    hf_costs = []
    real_lsa = hf.linear_sum_assignment

    def recording_lsa(cost):
        hf_costs.append(torch.as_tensor(cost))
        return real_lsa(cost)

    monkeypatch.setattr(hf, "linear_sum_assignment", recording_lsa)
    hf_matcher = hf.Mask2FormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0,
                                                num_points=POINTS)
    torch.manual_seed(3)
    hf_indices = hf_matcher(outputs["pred_masks"], outputs["pred_logits"], [t["masks"] for t in targets],
                            [t["labels"] for t in targets])
    assert [c.shape for c in our_costs] == [(QUERIES, 3), (QUERIES, 4)]
    for ours, theirs in zip(our_costs, hf_costs):
        torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=0)
    for (qi, ti), (hqi, hti) in zip(our_indices, hf_indices):
        assert qi.tolist() == hqi.tolist() and ti.tolist() == hti.tolist()
        assert len(qi) == len(set(qi.tolist()))  # one query per target


def test_matcher_leaves_a_nan_query_unmatched_instead_of_raising():
    gen = torch.Generator().manual_seed(1)
    outputs, targets = _outputs(gen), _targets(gen, counts=(3, 4))
    outputs["pred_masks"][0, 4] = float("nan")
    matcher = HungarianMatcher(num_points=POINTS)
    torch.manual_seed(3)
    costs = matcher.cost_matrices(outputs, targets)
    assert torch.isfinite(costs[0]).all() and costs[0][4].min() == torch.finfo(torch.float32).max
    torch.manual_seed(3)
    (queries, _), _ = matcher(outputs, targets)
    assert 4 not in queries.tolist() and len(queries) == 3


@pytest.mark.parametrize("case", ["plain", "empty_image", "aux_outputs"])
def test_losses_and_gradients_equal_transformers_mask2former_loss(case):
    gen = torch.Generator().manual_seed(10)
    num_aux = 2 if case == "aux_outputs" else 0
    counts = (3, 0) if case == "empty_image" else (2, 4)
    outputs, targets = _outputs(gen, num_aux=num_aux), _targets(gen, counts=counts)
    tensors = [outputs["pred_logits"], outputs["pred_masks"]]
    tensors += [a[k] for a in outputs.get("aux_outputs", []) for k in ("pred_logits", "pred_masks")]
    for t in tensors:
        t.requires_grad_(True)
    torch.manual_seed(5)
    ours = _ours(num_aux=num_aux)(outputs, targets)
    our_grads = torch.autograd.grad(sum(ours.values()), tensors)
    torch.manual_seed(5)
    theirs = {_hf_names(k): v for k, v in _hf_call(_hf_loss(), outputs, targets).items()}
    their_grads = torch.autograd.grad(sum(theirs.values()), tensors)
    expected = set(mask2former_weight_dict(num_aux=num_aux))
    assert set(ours) == set(theirs) == expected
    for name in expected:
        torch.testing.assert_close(ours[name], theirs[name].reshape(()), atol=1e-5, rtol=0, msg=name)
        assert ours[name] > 0.01, name  # not a trivially zero comparison
    for ours_g, theirs_g in zip(our_grads, their_grads):
        torch.testing.assert_close(ours_g, theirs_g, atol=1e-6, rtol=0)
        assert ours_g.abs().max() > 1e-4


def test_no_object_weight_scales_unmatched_queries_in_class_loss():
    gen = torch.Generator().manual_seed(11)
    outputs, targets = _outputs(gen), _targets(gen, counts=(1, 2))
    losses = {}
    for eos in (0.1, 1.0):
        criterion = _ours()
        criterion.empty_weight[-1] = eos
        torch.manual_seed(2)
        ours = criterion(outputs, targets)["loss_ce"]
        config = Mask2FormerConfig(num_labels=NUM_CLASSES, no_object_weight=eos, train_num_points=POINTS)
        torch.manual_seed(2)
        theirs = _hf_call(hf.Mask2FormerLoss(config, weight_dict={}), outputs, targets)["loss_cross_entropy"]
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
        losses[eos] = ours
    # the weighted mean changes when unmatched (no-object) queries weigh less
    assert abs(losses[0.1] - losses[1.0]) > 1e-3


def test_batch_without_any_target_has_only_class_loss_pushing_no_object():
    gen = torch.Generator().manual_seed(12)
    outputs, targets = _outputs(gen), _targets(gen, counts=(0, 0))
    losses = _ours()(outputs, targets)
    assert losses["loss_mask"] == 0 and losses["loss_dice"] == 0
    expected = torch.nn.functional.cross_entropy(outputs["pred_logits"].flatten(0, 1),
                                                 torch.full((2 * QUERIES,), NUM_CLASSES))
    torch.testing.assert_close(losses["loss_ce"], expected)


def test_targets_of_different_sizes_are_padded_bottom_right_like_transformers():
    gen = torch.Generator().manual_seed(13)
    outputs = _outputs(gen)
    targets = [_targets(gen, counts=(2,), size=(32, 32))[0], _targets(gen, counts=(3,), size=(24, 28))[0]]
    # both matchers read each image's masks unpadded; both losses pad to the largest (Mask2Former
    # gives targets already padded to the batch canvas, where the two readings agree)
    torch.manual_seed(4)
    ours = _ours()(outputs, targets)
    torch.manual_seed(4)
    theirs = _hf_call(_hf_loss(), outputs, targets)
    for name in ("loss_mask", "loss_dice"):
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=0)


def test_mask_losses_are_divided_by_the_mean_target_count_over_ranks(monkeypatch):
    from eva_core.utils import comm
    gen = torch.Generator().manual_seed(15)
    outputs, targets = _outputs(gen), _targets(gen, counts=(2, 3))  # 5 masks here
    torch.manual_seed(6)
    alone = _ours()(outputs, targets)
    # a second rank holding 9 masks: the all-reduced mean is (5 + 9) / 2 = 7
    monkeypatch.setattr(comm, "reduce_mean", lambda t: (t + 9.0) / 2)
    torch.manual_seed(6)
    shared = _ours()(outputs, targets)
    for name in ("loss_mask", "loss_dice"):
        torch.testing.assert_close(shared[name], alone[name] * 5 / 7)
    torch.testing.assert_close(shared["loss_ce"], alone["loss_ce"])  # a mean over queries, not masks


def test_bf16_predictions_give_fp32_losses_close_to_fp32_predictions():
    gen = torch.Generator().manual_seed(16)
    outputs, targets = _outputs(gen), _targets(gen)
    half = {k: v.bfloat16() for k, v in outputs.items()}
    torch.manual_seed(8)
    ref = _ours()(outputs, targets)
    torch.manual_seed(8)
    low = _ours()(half, targets)
    for name, value in low.items():
        assert value.dtype == torch.float32, name
        # bf16 keeps 8 bits of mantissa: the inputs differ by ~0.4 %, the losses by less than 2 %
        torch.testing.assert_close(value, ref[name], rtol=2e-2, atol=1e-3, msg=name)


def test_weight_losses_applies_weight_dict_and_refuses_unweighted_names():
    criterion = _ours(num_aux=1)
    weighted = criterion.weight_losses({"loss_ce": torch.tensor(1.0), "loss_dice_0": torch.tensor(2.0)})
    assert weighted == {"loss_ce": 2.0, "loss_dice_0": 10.0}
    with pytest.raises(KeyError, match="loss_mask_3"):
        criterion.weight_losses({"loss_mask_3": torch.tensor(1.0)})


def test_bad_targets_fail_naming_the_image_and_key():
    gen = torch.Generator().manual_seed(14)
    outputs, targets = _outputs(gen), _targets(gen)
    targets[1]["labels"] = torch.tensor([0, NUM_CLASSES])
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\] must be in \[0, 3\)"):
        _ours()(outputs, targets)
    targets[1] = {"labels": torch.tensor([0]), "masks": torch.zeros(2, 32, 32)}
    with pytest.raises(ValueError, match=r"targets\[1\] needs labels \[T\] and masks \[T, H, W\]"):
        _ours()(outputs, targets)
    with pytest.raises(ValueError, match=r"pred_logits'\] must be \[B, Q, 4\]"):
        bad = {"pred_logits": outputs["pred_logits"][..., :3], "pred_masks": outputs["pred_masks"]}
        _ours()(bad, targets)


def test_learnable_queries_fit_two_toy_masks():
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    square = ((yy < 8) & (xx < 8)).float()
    disc = (((yy - 11) ** 2 + (xx - 11) ** 2) < 16).float()
    targets = [{"labels": torch.tensor([0, 2]), "masks": torch.stack([square, disc])}]
    logits = torch.nn.Parameter(torch.zeros(1, 4, NUM_CLASSES + 1))
    masks = torch.nn.Parameter(0.1 * torch.randn(1, 4, 16, 16))
    criterion = _ours(num_points=64)
    opt = torch.optim.Adam([logits, masks], lr=0.1)
    totals = []
    for _ in range(100):
        total = sum(criterion.weight_losses(criterion({"pred_logits": logits, "pred_masks": masks},
                                                      targets)).values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    # measured 9.76 -> 2.56; the floor is the boundary points, whose bilinearly read targets are fractional
    assert totals[-1] < totals[0] / 3, (totals[0], totals[-1])
    # the matched queries' masks now reproduce both targets
    q, t = criterion.matcher({"pred_logits": logits.detach(), "pred_masks": masks.detach()}, targets)[0]
    pred = (masks.detach()[0, q] > 0).float()
    assert (pred == targets[0]["masks"][t]).float().mean() > 0.98
    assert logits.detach()[0, q].argmax(-1).tolist() == targets[0]["labels"][t].tolist()
