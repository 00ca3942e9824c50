"""Multi-scale deformable attention (projects/Mask2Former-EVA) against Hugging Face transformers."""
import os
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mask2former_eva.ms_deform_attn import (MSDeformAttn, compiled_multi_scale_deformable_attention,  # noqa: E402
                                            fast_path_available, multi_scale_deformable_attention)
from transformers.models.mask2former import modeling_mask2former as hf  # noqa: E402

# non-square levels, one of them a single column, as a padded Mask2Former batch produces
SHAPES = [(6, 9), (3, 5), (2, 1)]


def _random_inputs(generator, batch=2, queries=7, heads=4, head_dim=8, points=3, shapes=SHAPES):
    seq = sum(h * w for h, w in shapes)
    value = torch.randn(batch, seq, heads, head_dim, generator=generator)
    # a third of the points fall outside [0, 1]: those read zero padding
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=generator) * 1.6 - 0.3
    weights = torch.randn(batch, queries, heads, len(shapes) * points, generator=generator).softmax(-1)
    weights = weights.view(batch, queries, heads, len(shapes), points)
    return value, locations, weights


@pytest.mark.parametrize("shapes_as_tensor", [False, True])
def test_msda_equals_transformers_on_non_square_levels_with_points_outside(shapes_as_tensor):
    value, locations, weights = _random_inputs(torch.Generator().manual_seed(0))
    shapes = torch.tensor(SHAPES) if shapes_as_tensor else SHAPES
    ours = multi_scale_deformable_attention(value, shapes, locations, weights)
    theirs = hf.multi_scale_deformable_attention(value, SHAPES, locations, weights)
    assert ours.shape == (2, 7, 4 * 8)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert ours.abs().max() > 0.1  # not a trivially zero comparison


def test_msda_gradients_equal_transformers():
    inputs = _random_inputs(torch.Generator().manual_seed(1))
    grads = []
    for fn in (multi_scale_deformable_attention, hf.multi_scale_deformable_attention):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        value, locations, weights = leaves
        out = fn(value, SHAPES, locations, weights)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([t.grad for t in leaves])
    for ours, theirs, name in zip(grads[0], grads[1], ("value", "sampling_locations", "attention_weights")):
        assert ours.abs().max() > 0, name
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0, msg=name)


def test_msda_points_outside_every_map_read_zeros():
    value, locations, weights = _random_inputs(torch.Generator().manual_seed(2))
    # more than a pixel outside every level: the bilinear taps are all zero padding
    far = torch.where(torch.rand_like(locations) < 0.5, locations - 3.0, locations + 3.0)
    out = multi_scale_deformable_attention(value, SHAPES, far, weights)
    assert torch.count_nonzero(out) == 0


def test_msda_samples_a_pixel_centre_exactly():
    # one level, one head, one point on the centre of pixel (row 1, col 2) of a 3x4 map
    value = torch.arange(12.0).view(1, 12, 1, 1)
    location = torch.tensor([(2 + 0.5) / 4, (1 + 0.5) / 3]).view(1, 1, 1, 1, 1, 2)
    out = multi_scale_deformable_attention(value, [(3, 4)], location, torch.ones(1, 1, 1, 1, 1))
    assert out.item() == pytest.approx(1 * 4 + 2)


def test_msda_rejects_value_that_spatial_shapes_do_not_cover():
    value, locations, weights = _random_inputs(torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match=r"value has 71 positions but spatial_shapes .* cover 70"):
        multi_scale_deformable_attention(value, [(6, 9), (3, 5), (1, 1)], locations, weights)
    with pytest.raises(ValueError, match="attention_weights has shape"):
        multi_scale_deformable_attention(value, SHAPES, locations, weights[:, :, :, :2])


def _hf_module(d_model, n_levels, n_heads, n_points):
    module = hf.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(
        embed_dim=d_model, num_heads=n_heads, n_levels=n_levels, n_points=n_points)
    # transformers initialises through the pretrained-model class; call its rule on the module
    config = SimpleNamespace(init_xavier_std=1.0, init_std=0.02)
    hf.Mask2FormerPreTrainedModel._init_weights(SimpleNamespace(config=config), module)
    return module


def test_msdeformattn_parameter_names_and_initialisation_equal_transformers():
    torch.manual_seed(0)
    theirs = _hf_module(32, 3, 4, 4).state_dict()
    torch.manual_seed(0)
    ours = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=4).state_dict()
    # the key sets are equal: no mapping is needed between the two layouts
    assert list(ours) == list(theirs)
    for key in ours:
        # same seed and same init order: xavier weights are equal too, not only the constants
        torch.testing.assert_close(ours[key], theirs[key], atol=0, rtol=0, msg=key)
    bias = ours["sampling_offsets.bias"].view(4, 3, 4, 2)
    # head 1 of 4 points along +y (direction pi/2), point k at distance k + 1
    torch.testing.assert_close(bias[1, 0, :, 1], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert torch.count_nonzero(ours["attention_weights.weight"]) == 0


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_msdeformattn_module_equals_transformers_with_padding_mask(ref_dim):
    g = torch.Generator().manual_seed(4)
    d_model, n_levels, n_heads, n_points, batch, queries = 32, 3, 4, 2, 2, 5
    ours = MSDeformAttn(d_model, n_levels, n_heads, n_points, fast_path=False)
    with torch.no_grad():  # away from the init so that every parameter matters
        for p in ours.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    theirs = hf.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(d_model, n_heads, n_levels,
                                                                            n_points)
    theirs.load_state_dict(ours.state_dict())
    seq = sum(h * w for h, w in SHAPES)
    query = torch.randn(batch, queries, d_model, generator=g)
    memory = torch.randn(batch, seq, d_model, generator=g)
    ref = torch.rand(batch, queries, n_levels, ref_dim, generator=g)
    if ref_dim == 4:
        ref[..., 2:] = ref[..., 2:] * 0.5 + 0.1  # box sizes
    padding = torch.zeros(batch, seq, dtype=torch.bool)
    padding[1, 40:54] = True  # the right part of the second image's first level is padding
    starts = torch.tensor([0, 54, 69])
    out = ours(query, ref, memory, torch.tensor(SHAPES), starts, padding)
    expected, _ = theirs(hidden_states=query, attention_mask=padding, encoder_hidden_states=memory,
                         reference_points=ref, spatial_shapes_list=SHAPES)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    # the mask matters: without it the second image's output changes
    unmasked = ours(query, ref, memory, SHAPES)
    assert (unmasked[1] - out[1]).abs().max() > 1e-4
    torch.testing.assert_close(unmasked[0], out[0])


def test_msdeformattn_rejects_inconsistent_level_start_index_and_reference_points():
    attn = MSDeformAttn(16, 3, 2, 2)
    query, memory = torch.zeros(1, 4, 16), torch.zeros(1, 71, 16)
    with pytest.raises(ValueError, match=r"input_level_start_index \[0, 54, 60\] disagrees"):
        attn(query, torch.zeros(1, 4, 3, 2), memory, SHAPES, torch.tensor([0, 54, 60]))
    with pytest.raises(ValueError, match=r"reference_points must be \[1, 4, 3, 2 or 4\], got \(1, 4, 3, 3\)"):
        attn(query, torch.zeros(1, 4, 3, 3), memory, SHAPES)


def test_fast_path_is_chosen_only_on_cuda_and_can_be_switched_off():
    assert not fast_path_available("cpu")
    assert not MSDeformAttn(16, 3, 2, 2)._use_fast_path(torch.device("cpu"))
    assert MSDeformAttn(16, 3, 2, 2, fast_path=True)._use_fast_path(torch.device("cpu"))
    assert not MSDeformAttn(16, 3, 2, 2, fast_path=False)._use_fast_path(torch.device("cuda"))


@pytest.mark.skipif(not fast_path_available("cuda"), reason="the compiled fast path needs CUDA and Triton")
def test_compiled_fast_path_equals_pure_path_on_cuda():
    inputs = [t.cuda() for t in _random_inputs(torch.Generator().manual_seed(5))]
    leaves = [[t.clone().requires_grad_(True) for t in inputs] for _ in range(2)]
    outs = [fn(v, SHAPES, loc, w) for fn, (v, loc, w) in
            zip((multi_scale_deformable_attention, compiled_multi_scale_deformable_attention()), leaves)]
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=0)
    for out in outs:
        out.square().sum().backward()
    for ours, ref in zip(leaves[1], leaves[0]):
        torch.testing.assert_close(ours.grad, ref.grad, atol=1e-4, rtol=1e-4)
